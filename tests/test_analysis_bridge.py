"""tl_vpd.analysis and tl_vpd.vis on TransformerBridge decompositions (TL 3.9 and 4.x).

Two kinds of checks:

* twins (TL 3.9 only, where HookedTransformer exists): the planted target of ``planted.py`` and a
  ``boot_native`` bridge holding the same weights (``bridge_zoo.native_twin``), with the same
  hand-built decomposition. Every analysis entry point must give the same answer on both. The
  twins' logits differ by ≤ 4e-6 (fp32, |logits| ≈ 37: different but equivalent kernels), so
  the comparisons use ``atol`` 1e-4 on values of order 1-40 and exact equality on discrete
  results (hits, node sets, token lists).
* bridge-only (both versions): each entry point against the decomposition's own masked forward
  or the bridge's own hook points (no HookedTransformer needed).
"""

import math

import pytest
import torch

import tl_vpd
from tl_vpd import analysis as A
from tl_vpd.backends import BridgeBackend
from tl_vpd.target_model import HAS_HOOKED_TRANSFORMER
from bridge_zoo import TransformerBridge, TransformerBridgeConfig, make_bridge, tokens as bridge_tokens

needs_hooked = pytest.mark.skipif(not HAS_HOOKED_TRANSFORMER,
                                  reason="the twins need HookedTransformer (TransformerLens < 4)")
ATOL = 1e-4


# ----------------------------------------------------------------------------- twins
@pytest.fixture(scope="module")
def twins():
    from bridge_zoo import native_twin
    from planted import planted_decomposition, planted_model
    from tl_vpd.target_model import _rotary_order

    model = planted_model()
    dec = planted_decomposition(model)
    bridge = native_twin(model)
    bdec = tl_vpd.Decomposition.from_model(bridge, C=4, ci_fn="mlp", ci_hidden=1, init="svd")
    order = _rotary_order(bridge.cfg)
    with torch.no_grad():
        for s in dec.sites:
            U, V = dec.components[s].U, dec.components[s].V
            if s.endswith(("W_Q", "W_K")):  # the bridge's heads hold their dims permuted
                U = U.view(-1, model.cfg.d_head, U.shape[-1])[:, order].reshape(U.shape)
            bdec.components[s].U.copy_(U)
            bdec.components[s].V.copy_(V)
        bdec.ci_fn.load_state_dict(dec.ci_fn.state_dict())
    return dec, bdec


@pytest.fixture(scope="module")
def toks():  # planted.py's prompts (its fixture, without importing planted on TL 4)
    return torch.randint(0, 32, (16, 16), generator=torch.Generator().manual_seed(0))


def _close(a, b, atol=ATOL):
    return (a - b).abs().max() <= atol


@needs_hooked
def test_twins_agree_on_forward_and_ci(twins, toks):
    dec, bdec = twins
    assert isinstance(bdec.backend, BridgeBackend)
    assert _close(bdec.model(toks), dec.model(toks), 1e-5)
    ci, bci = dec.causal_importance(toks), bdec.causal_importance(toks)
    assert all(_close(ci[s], bci[s], 1e-5) for s in dec.sites)


@needs_hooked
def test_twins_attention_and_ablation(twins, toks):
    from planted import PREV_HEADS, QS

    dec, bdec = twins
    pats, bpats = A.attention_patterns(dec, toks), A.attention_patterns(bdec, toks)
    assert sorted(bpats) == [0, 1] and all(_close(pats[L], bpats[L], 1e-5) for L in pats)
    assert _close(A.prev_token_scores(dec, toks), A.prev_token_scores(bdec.model, toks), 1e-5)
    eff, beff = dec.ablation_effect(toks, f"{QS}:0"), bdec.ablation_effect(toks, f"{QS}:0")
    assert _close(eff.after, beff.after, 1e-5) and beff.removed() == eff.removed()
    assert {h for L, h in beff.removed() if L == 1} >= set(PREV_HEADS)
    assert beff.summary() == eff.summary()


@needs_hooked
def test_twins_subcomponents_and_harvest(twins, toks):
    from planted import QS, decode

    dec, bdec = twins
    for s in (QS, "blocks.0.attn.W_O"):
        a = dec.subcomponent(s, 0, decode=decode)
        b = bdec.subcomponent(s, 0, decode=decode)
        assert [t for t, _ in (a.reads or a.predicts)] == [t for t, _ in (b.reads or b.predicts)]
        assert math.isclose(a.u_norm, b.u_norm, rel_tol=1e-5)
        assert a.head_fractions == pytest.approx(b.head_fractions, abs=1e-6)
    h, bh = (d.harvest(toks, decode=decode, progress=False) for d in (dec, bdec))
    for s in dec.sites:
        assert torch.allclose(h.density[s], bh.density[s]) and _close(h.mean_ci[s], bh.mean_ci[s], 1e-5)
    assert str(h.contexts(QS, 0, 3)[0]) == str(bh.contexts(QS, 0, 3)[0])
    info = bdec.subcomponent(QS, 0, toks, decode=decode, progress=False)
    assert info.density == pytest.approx(dec.subcomponent(QS, 0, toks, decode=decode, progress=False).density)


@needs_hooked
def test_twins_qk_and_finders(twins, toks):
    from planted import KS, decode

    dec, bdec = twins
    qk, bqk = A.qk_interactions(dec, 1, offsets=range(6)), A.qk_interactions(bdec, 1, offsets=range(6))
    assert bqk.rotary and _close(qk.values, bqk.values, 1e-4 * float(qk.values.abs().max()))
    assert [t[:4] for t in bqk.top(3)] == [t[:4] for t in qk.top(3)]
    hits = A.find_prev_token_subcomponents(dec, toks)
    bhits = A.find_prev_token_subcomponents(bdec, toks)
    assert [x.name for x in bhits] == [x.name for x in hits] and bhits
    bnd = A.find_syntax_boundary(dec, toks, sites=KS, decode=decode)
    bbnd = A.find_syntax_boundary(bdec, toks, sites=KS, decode=decode)
    assert [x.name for x in bbnd] == [x.name for x in bnd] and bbnd


@needs_hooked
def test_twins_qk_data_ov_routing_and_edit_evaluation(twins, toks):
    from planted import KS, QS, decode

    dec, bdec = twins
    dd, bdd = (A.qk_data_interactions(d, 1, toks[:4], q=range(4), k=range(4)) for d in (dec, bdec))
    assert bdd.rotary and bdd.attn_scale == pytest.approx(dd.attn_scale)
    assert _close(dd.values, bdd.values, 1e-4 * float(dd.values.abs().max()))
    ov, bov = (A.ov_circuits(d, 1, decode=decode) for d in (dec, bdec))
    assert _close(ov.write, bov.write, 1e-5) and _close(ov.pair, bov.pair, 1e-5)
    assert [t for t, _ in bov.promotes(0, 3)] == [t for t, _ in ov.promotes(0, 3)]
    r, br = (A.boundary_routing(d, toks, f"{KS}:1", decode=decode) for d in (dec, bdec))
    assert _close(r.base, br.base, 1e-5) and _close(r.after, br.after, 1e-5)
    ev, bev = (A.evaluate_edit(d, {QS: [1]}, toks, on_target="ci") for d in (dec, bdec))
    assert bev.off.kl_mean == pytest.approx(ev.off.kl_mean, rel=1e-3, abs=1e-6)
    assert bev.on.kl_mean == pytest.approx(ev.on.kl_mean, rel=1e-3) and bev.on.n_positions == ev.on.n_positions


@needs_hooked
@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_twins_edit(twins, toks, alpha):
    from planted import QS

    dec, bdec = twins
    edits = {QS: {0: alpha}, "blocks.0.attn.W_O": {1: alpha}}
    edited, bedited = dec.edit(edits), bdec.edit(edits)
    assert type(bedited) is type(bdec.model) and bedited is not bdec.model
    ref = bdec.run_masked(toks, A.ablation_masks(bdec, edits, toks.shape))
    # fp32 rounding scales with the logits (|logits| ≈ 40), as for HookedTransformer's edit
    assert (bedited(toks) - ref).abs().max() <= 1e-5 + 1e-6 * ref.abs().max()
    assert _close(bedited(toks), edited(toks))
    assert torch.equal(bdec.model(toks), dec.model(toks)) or _close(bdec.model(toks), dec.model(toks), 1e-5)


@needs_hooked
def test_twins_hooked_view(twins, toks):
    from planted import QS

    dec, bdec = twins
    hm, bhm = dec.hooked(), bdec.hooked()
    logits, cache = bhm.run_with_cache(toks)
    _, ref_cache = hm.run_with_cache(toks)
    assert torch.equal(logits, bdec.model(toks))
    for s in dec.sites:
        assert _close(cache[f"{s}.hook_ci"], ref_cache[f"{s}.hook_ci"], 1e-5)
    assert _close(cache["blocks.1.attn.hook_pattern"], ref_cache["blocks.1.attn.hook_pattern"], 1e-5)
    hook = [(f"{QS}.hook_mask", A.mask_hook([0]))]
    assert _close(bhm.run_with_hooks(toks, fwd_hooks=hook), hm.run_with_hooks(toks, fwd_hooks=hook))


@needs_hooked
def test_twins_attribution(twins, toks):
    from planted import decode

    dec, bdec = twins
    g = A.attribution_graph(dec, toks[0], decode=decode, progress=False)
    bg = A.attribution_graph(bdec, toks[0], decode=decode, progress=False)
    assert bg.target == g.target and [n.label for n in bg.nodes] == [n.label for n in g.nodes]
    edges = {(s, d): w for s, d, w in g.edges}
    bedges = {(s, d): w for s, d, w in bg.edges if abs(w) > 1e-4}
    assert set(bedges) == {k for k, w in edges.items() if abs(w) > 1e-4}
    assert all(abs(bedges[k] - edges[k]) <= 1e-4 * max(1.0, abs(edges[k])) for k in bedges)


@needs_hooked
def test_twins_views(twins, toks):
    pytest.importorskip("circuitsvis")
    from tl_vpd import vis
    from planted import QS, decode

    dec, bdec = twins
    for d in (dec, bdec):
        assert "<" in vis.attention_view(d, toks[0], 1, f"{QS}:0", decode=decode).html()
        assert "<" in vis.ci_view(d, toks[0], QS, [0, 1], decode=decode).html()
        h = d.harvest(toks, sites=[QS], decode=decode, progress=False)
        assert "<" in vis.top_samples_view(h, QS).html()


# ----------------------------------------------------------------------------- bridge only
@pytest.fixture(scope="module")
def llama():
    model = make_bridge("llama")  # HF LLaMA: GQA, gated MLP, rotary from the model's tables
    return model, tl_vpd.Decomposition.from_model(model, C=6, seed=1)


@pytest.mark.parametrize("family,compat", [("llama", False), ("native_llama", True), ("gpt2", True),
                                           ("neox", False)])
def test_edit_every_site_layout(family, compat):
    """Gated MLPs (TL 3.9 compat: private processed copies), GQA, Conv1D and fused QKV."""
    model = make_bridge(family, compat)
    toks = bridge_tokens()
    dec = tl_vpd.Decomposition.from_model(model, C=6, seed=1)
    edits = {s: {1: 0.0, 4: 0.5} for s in dec.sites}
    ref = dec.run_masked(toks, A.ablation_masks(dec, edits, toks.shape))
    before = model(toks)
    out = A.edit(dec, edits)(toks)
    assert (out - ref).abs().max() <= 1e-4
    assert (out - before).abs().max() > 1e-2 and torch.equal(model(toks), before)


@pytest.mark.parametrize("family", ["llama", "neox", "native_llama"])
def test_apply_rotary_matches_the_forward(family):
    """The pattern rebuilt from ``hook_q/k`` rotated by the backend is the model's own."""
    model = make_bridge(family)
    toks = bridge_tokens()
    L = 1
    names = [f"blocks.{L}.attn.hook_{n}" for n in ("q", "k", "pattern")]
    _, cache = model.run_with_cache(toks, names_filter=names)
    q, k = cache[f"blocks.{L}.attn.hook_q"], cache[f"blocks.{L}.attn.hook_k"]  # [b, pos, h, d]
    backend = BridgeBackend()
    rq, rk = backend.apply_rotary(model, L, q), backend.apply_rotary(model, L, k)
    rk = rk.repeat_interleave(q.shape[2] // k.shape[2], dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", rq, rk) / math.sqrt(q.shape[-1])
    causal = torch.ones(toks.shape[1], toks.shape[1], dtype=torch.bool).tril()
    pattern = scores.masked_fill(~causal, -torch.inf).softmax(-1)
    assert (pattern - cache[f"blocks.{L}.attn.hook_pattern"]).abs().max() <= 1e-5
    assert (rq - q).abs().max() > 1e-2  # rotated


def test_hooked_view(llama):
    model, dec = llama
    toks = bridge_tokens()
    hm = A.hooked(dec)
    logits, cache = hm.run_with_cache(toks)
    assert torch.equal(logits, model(toks))
    ci = dec.causal_importance(toks)
    assert all(torch.equal(cache[f"{s}.hook_ci"], ci[s]) for s in dec.sites)
    site = "blocks.1.attn.W_K"
    out = hm.run_with_hooks(toks, fwd_hooks=[(f"{site}.hook_mask", A.mask_hook([0, 2]))])
    ref = dec.run_masked(toks, A.ablation_masks(dec, {site: [0, 2]}, toks.shape))
    assert (out - ref).abs().max() <= 1e-6 and (out - logits).abs().max() > 1e-3
    assert torch.allclose(A.hooked(dec, mask="ci")(toks), dec.run_masked(toks, ci), atol=1e-6)


def test_analysis_entry_points_run(llama):
    model, dec = llama
    toks = bridge_tokens(4, 12)
    assert sorted(A.attention_patterns(dec, toks)) == [0, 1]
    eff = dec.ablation_effect(toks, "blocks.1.attn.W_Q:0")
    assert eff.base.shape == (2, 4, 5) and "ablating" in eff.summary()
    info = dec.subcomponent("blocks.1.mlp.W_out", 0, toks, progress=False)
    assert info.predicts and info.density is not None and info.head_fractions is None
    assert dec.subcomponent("blocks.0.attn.W_Q", 0).reads
    assert len(dec.harvest(toks, progress=False).top("blocks.0.attn.W_Q", 3)) == 3
    assert A.qk_interactions(dec, 0, offsets=range(4)).values.shape == (6, 6, 4, 4)
    assert isinstance(A.find_prev_token_subcomponents(dec, toks), list)
    g = dec.attribution_graph(toks[0], progress=False)
    assert g.nodes[-1].kind == "output" and g.edges


def test_qk_data_matches_the_forward_gqa(llama):
    """HF LLaMA (GQA, rotary from the model's tables, no biases): one pair alone (Δ off) gives
    the bridge's own hook_attn_scores."""
    model, dec = llama
    toks = bridge_tokens(2, 8)
    dd = A.qk_data_interactions(dec, 1, toks, q=range(6), k=range(6))
    masks = {f"blocks.1.attn.W_{k}": torch.zeros(*toks.shape, 6) for k in "QK"}
    masks["blocks.1.attn.W_Q"][..., 2] = 1.0
    masks["blocks.1.attn.W_K"][..., 3] = 1.0
    with dec.masked(masks, {s: torch.zeros(toks.shape) for s in masks}):
        _, cache = model.run_with_cache(toks, names_filter="blocks.1.attn.hook_attn_scores")
    causal = torch.ones(8, 8, dtype=torch.bool).tril()
    ref = cache["blocks.1.attn.hook_attn_scores"][..., causal] * dd.attn_scale
    assert (dd.pair(2, 3)[..., causal] - ref).abs().max() <= 1e-4 and ref.abs().max() > 0.1


def test_ov_routing_and_edit_evaluation_run(llama):
    model, dec = llama
    toks = bridge_tokens(4, 12)
    ov = A.ov_circuits(dec, 1)  # 2 value heads feed 4 output heads
    assert ov.write.shape == (6, 4, 32) and len(ov.promotes(0, 3)) == 3 and "OVCircuits" in repr(ov)
    r = A.boundary_routing(dec, toks, "blocks.1.attn.W_K:0", boundary=range(10, 40))
    assert r.base.shape == (2, 4) and torch.allclose(r.base[0], r.after[0])
    ev = dec.edit("blocks.1.attn.W_K:0", heldout=toks)
    assert ev.off.n_positions == toks.numel() and ev.off.kl_mean > 0 and "KL mean" in ev.table()


def test_views(llama):
    pytest.importorskip("circuitsvis")
    from tl_vpd import vis

    _, dec = llama
    toks = bridge_tokens(4, 12)
    assert "<" in vis.attention_view(dec, toks[0], 1, "blocks.1.attn.W_Q:0").html()
    assert "<" in vis.ci_view(dec, toks[0], "blocks.0.mlp.W_in", [0, 1]).html()
    h = dec.harvest(toks, sites=["blocks.0.mlp.W_in"], progress=False)
    assert "<" in vis.top_samples_view(h, "blocks.0.mlp.W_in").html()


def test_attribution_embedding_edge_is_the_activation():
    """Without norms a layer-0 query subcomponent is linear in the embeddings (token plus
    position), so its edge from the embedding node is its activation itself."""
    cfg = TransformerBridgeConfig(n_layers=2, d_model=16, n_heads=2, d_head=8, d_mlp=32, n_ctx=8,
                                  d_vocab=20, act_fn="gelu", normalization_type=None,
                                  positional_embedding_type="standard")
    torch.manual_seed(0)
    model = TransformerBridge.boot_native(cfg).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    dec = tl_vpd.Decomposition.from_model(model, C=4, seed=0)
    prompt = torch.randint(0, 20, (8,), generator=torch.Generator().manual_seed(0))
    g = A.attribution_graph(dec, prompt, progress=False)
    checked = 0
    for i, nd in enumerate(g.nodes):
        if nd.kind == "component" and nd.site == "blocks.0.attn.W_Q":
            assert g.edge(nd.pos, i) == pytest.approx(nd.act, rel=1e-4, abs=1e-5)
            checked += 1
    assert checked >= 8


def test_clustering_pruning_and_dataset_attributions_run(llama):
    """The MDL clustering, post-hoc CI pruning and dataset attributions run on a bridge
    decomposition and return results of the right shape (both TransformerLens versions)."""
    model, dec = llama
    toks = bridge_tokens(4, 12)
    cl = A.cluster_subcomponents(dec, toks, progress=False, seed=0)
    clustered = [m for g in cl.groups for m in g] + list(cl.dead)
    assert sorted(clustered) == sorted((s, c) for s in dec.sites for c in range(dec.components[s].C))
    pruned = A.optimize_ci(dec, toks[0], position=-1, steps=3, progress=False)
    assert set(pruned.ci) == set(dec.sites) and "PrunedCI" in repr(pruned)
    g = A.pruned_attribution_graph(dec, toks[0], position=-1, steps=3, progress=False)
    assert g.nodes[-1].kind == "output" and g.pruning is not None
    da = A.dataset_attributions(dec, toks[:2], progress=False,
                                targets=["blocks.1.attn.W_O"])
    assert "DatasetAttributions" in repr(da)
