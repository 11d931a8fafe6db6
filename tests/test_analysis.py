"""Analysis on a planted target: a previous-token mechanism spanning heads 0, 2, 3 of layer 1.

The target is a 2-layer attention-only rotary model built by hand. Layer 1's query and key
matrices are each a sum of two rank-1 pieces: one reads a direction that is constant over tokens
and, through the rotary rotation, makes heads 0, 2 and 3 attend to the previous token; the other
makes head 1 route word queries to syntax-boundary keys. The decomposition is also built by hand
(training one takes minutes on 2 CPU cores): its layer-1 Q/K subcomponents are exactly those
pieces, other sites get SVD subcomponents, and a per-subcomponent CI function is set so a
subcomponent fires where its feature is present. The analysis functions are not told any of this.
"""

import pytest
import torch

import tl_vpd
from tl_vpd import analysis as A
from tl_vpd.analysis.attention import BOUNDARY_CLASSES, classify_token
from model_zoo import make_model, tokens as zoo_tokens

WORDS = ["the", "cat", "sat", "on", "mat", "dog", "ran", "far", "big", "red", "sun", "sky",
         "one", "two", "old", "new", "car", "bus", "map", "pen", "cup", "hat", "box", "egg"]
BOUNDARY = [".", ",", ";", "(", ")", '"', "'", "\n"]
VOCAB = WORDS + BOUNDARY  # ids 24..31 are syntax boundaries
PREV_HEADS = (0, 2, 3)
QS, KS = "blocks.1.attn.W_Q", "blocks.1.attn.W_K"


def decode(ids):
    return "".join(VOCAB[i] for i in ids)


def planted_model(dtype=torch.float32):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(
        n_layers=2, d_model=16, n_heads=4, d_head=8, n_ctx=16, d_vocab=len(VOCAB), attn_only=True,
        act_fn="gelu", normalization_type=None, positional_embedding_type="rotary", rotary_dim=4,
        rotary_base=10, seed=0, dtype=dtype)
    model = HookedTransformer(cfg)
    g = torch.Generator().manual_seed(0)
    a0, a1 = model.blocks[0].attn, model.blocks[1].attn

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        E = torch.zeros(len(VOCAB), 16, dtype=dtype)
        E[:, 0] = 1.0  # constant direction
        E[:24, 1] = 1.0  # "word" feature
        E[24:, 2] = 1.0  # "boundary" feature
        E[:, 3:] = 0.5 * rand(len(VOCAB), 13)
        model.embed.W_E.copy_(E)
        for W in (a0.W_Q, a0.W_K, a0.W_V):  # layer 0: random, on dims 3.. only
            W[:, 3:] = 0.3 * rand(*W[:, 3:].shape)
        a0.W_O[..., 3:] = 0.3 * rand(*a0.W_O[..., 3:].shape)
        # Rotary acts on dims 0..3 of each head (rotary_dim 4, GPT-NeoX pairing (i, i+2)).
        cos, sin = a1.rotary_cos[1], a1.rotary_sin[1]
        k = 7.0 * torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=dtype)
        q = k * cos - torch.cat([-k[2:], k[:2]]) * sin  # rotated to position 1 it equals k
        for h in PREV_HEADS:
            a1.W_Q[h, 0, :4] = q
            a1.W_K[h, 0, :4] = k
        a1.W_Q[1, 1, 4] = 8.0  # head 1: word queries -> boundary keys, on an unrotated dim
        a1.W_K[1, 2, 4] = 8.0
        a1.W_V.copy_(0.3 * rand(*a1.W_V.shape))
        a1.W_O.copy_(0.3 * rand(*a1.W_O.shape))
        model.unembed.W_U.copy_(rand(16, len(VOCAB)))
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def planted_decomposition(model):
    dtype = "float64" if model.cfg.dtype == torch.float64 else "float32"
    dec = tl_vpd.Decomposition.from_model(model, C=4, ci_fn="mlp", ci_hidden=1, init="svd", dtype=dtype)
    a1 = model.blocks[1].attn
    with torch.no_grad():
        for site, W, feature in ((QS, a1.W_Q, 1), (KS, a1.W_K, 2)):
            comp = dec.components[site]
            flat = W.permute(0, 2, 1).reshape(32, 16)  # the site matrix, [(head d_head), d_model]
            U, V = torch.zeros_like(comp.U), torch.zeros_like(comp.V)
            U[:, 0], V[0, 0] = flat[:, 0], 1.0  # c=0: the previous-token piece
            U[:, 1], V[1, feature] = flat[:, feature], 1.0  # c=1: head 1's piece
            V[2:, 3:] = torch.randn(2, 13, generator=torch.Generator().manual_seed(5))  # unused
            comp.U.copy_(U)
            comp.V.copy_(V)
        ci = dec.ci_fn  # g_c = clamp(0.2 gelu(10 (v_c·x) - 5)): 1 where v_c·x = 1, 0 where 0
        for i, site in enumerate(ci.site_names):
            ci.w1[i].fill_(10.0)
            ci.b1[i].fill_(-5.0)
            ci.w2[i].fill_(0.2)
            ci.b2[i].zero_()
            if site in (QS, KS):
                ci.w2[i][2:] = 0.0  # the unused subcomponents never fire
    for site in (QS, KS):
        assert dec.components[site].delta.abs().max() == 0
    return dec


@pytest.fixture(scope="module")
def planted():
    model = planted_model()
    return model, planted_decomposition(model)


@pytest.fixture(scope="module")
def toks():
    return torch.randint(0, len(VOCAB), (16, 16), generator=torch.Generator().manual_seed(0))


# ----------------------------------------------------------------------------- attention
def test_planted_heads_attend_to_previous_token(planted, toks):
    model, _ = planted
    s = A.prev_token_scores(model, toks)
    assert s.shape == (2, 4)
    assert (s[1, list(PREV_HEADS)] > 0.99).all()
    assert s[1, 1] < 0.5 and (s[0] < 0.5).all()


def test_finder_names_the_prev_token_qk_pair(planted, toks):
    _, dec = planted
    hits = A.find_prev_token_subcomponents(dec, toks)
    assert {h.name for h in hits} == {f"{QS}:0", f"{KS}:0"}
    for h in hits:
        assert h.heads == [(1, 0), (1, 2), (1, 3)]
        assert (h.after[1, list(PREV_HEADS)] < 0.3).all()
    # Every subcomponent tried (not only those that fire): still only the planted pair.
    hits_all = A.find_prev_token_subcomponents(dec, toks, min_density=None, chunk=5)
    assert {h.name for h in hits_all} == {f"{QS}:0", f"{KS}:0"}
    assert "removes offset-1 attention in heads 0, 2, 3 of layer 1" in repr(hits[0])


def test_ablation_effect_summary(planted, toks):
    _, dec = planted
    eff = A.ablation_effect(dec, toks, f"{QS}:0")
    assert eff.summary() == f"ablating {QS}:0 removes offset-1 attention in heads 0, 2, 3 of layer 1"
    assert eff.removed() == [(1, 0), (1, 2), (1, 3)]
    assert torch.allclose(eff.base[0], eff.after[0])  # layer 0 is upstream: untouched
    # Head 1's piece carries no previous-token attention.
    other = A.ablation_effect(dec, toks, {QS: [1]})
    assert other.removed() == [] and "removes no head's offset-1 attention" in other.summary()
    # Scaling by alpha = 1 changes nothing.
    same = A.ablation_effect(dec, toks, {QS: {0: 1.0}})
    assert torch.allclose(same.base, same.after, atol=1e-6)


def test_static_qk_interaction_matches_rotary_attention_scores(planted, toks):
    model, dec = planted
    qk = A.qk_interactions(dec, 1, data=toks)
    assert qk.rotary and qk.values.shape == (4, 4, 4, 16)
    sis = qk.pair(0, 0)  # [head, offset]
    _, cache = model.run_with_cache(toks, names_filter="blocks.1.attn.hook_attn_scores")
    scores = cache["blocks.1.attn.hook_attn_scores"] * model.blocks[1].attn.attn_scale
    for tau in range(16):
        d = scores.diagonal(offset=-tau, dim1=-2, dim2=-1)  # [batch, head, q - tau]
        for h in PREV_HEADS:  # only the planted piece acts in these heads: scores are SIS
            assert torch.allclose(d[:, h], sis[h, tau].expand_as(d[:, h]), atol=1e-3), (h, tau)
    assert (sis[list(PREV_HEADS)].argmax(-1) == 1).all()
    assert sis[1].abs().max() == 0
    cq, ck, h, tau, _ = qk.top(1)[0]
    assert (cq, ck, tau) == (0, 0, 1) and h in PREV_HEADS
    assert torch.allclose(A.qk_interaction(dec, 1, 1, 1, offsets=[0, 5]), qk.pair(1, 1)[:, [0, 5]])


def test_qk_interactions_grouped_query_attention():
    model = make_model("llama")  # 4 query heads share 2 key heads, rotary
    dec = tl_vpd.Decomposition.from_model(model, C=3, sites="blocks.0.attn.W_[QK]")
    qk = A.qk_interactions(dec, 0, offsets=range(4))
    assert qk.values.shape == (3, 3, 4, 4)
    assert not torch.allclose(qk.values[..., 0], qk.values[..., 3])  # the rotation matters


def test_classify_token():
    cases = {"\n": "newline", " \n\n": "newline", "(": "bracket", " )": "bracket", ").": "bracket",
             '"': "quote", " '": "quote", ".": "punctuation", ",": "punctuation", " ::": "punctuation",
             " the": None, "a.": None, " ": None, "": None}
    for s, want in cases.items():
        assert classify_token(s) == want, s


def test_syntax_boundary_finder(planted, toks):
    _, dec = planted
    hits = A.find_syntax_boundary(dec, toks, decode)
    assert hits[0].name == f"{KS}:1"
    top = hits[0]
    is_b = toks >= 24
    assert top.n_fired == int(is_b.sum()) and top.precision == pytest.approx(1.0)
    for k in BOUNDARY_CLASSES:
        ids = [i for i, s in enumerate(VOCAB) if classify_token(s) == k]
        n_k = int(torch.isin(toks, torch.tensor(ids)).sum())
        assert top.class_precision[k] == pytest.approx(n_k / top.n_fired)
        assert top.base_rate[k] == pytest.approx(n_k / toks.numel())
    assert f"{KS}:0" not in {h.name for h in hits}  # fires everywhere: precision = base rate
    assert top.routed[1] > 0.3  # head 1 routes word queries to boundary keys
    assert max(abs(top.routed[h]) for h in PREV_HEADS) < 0.02


# ----------------------------------------------------------------------------- inspection
def test_subcomponent_weights_and_heads(planted):
    model, dec = planted
    q0 = A.subcomponent(dec, QS, 0)
    assert q0.head_fractions == pytest.approx([1 / 3, 0, 1 / 3, 1 / 3], abs=1e-6)
    assert q0.spans_heads and q0.density is None and q0.v_norm == pytest.approx(1.0)
    k1 = A.subcomponent(dec, KS, 1, decode=decode)
    assert k1.head_fractions == pytest.approx([0, 1, 0, 0]) and not k1.spans_heads
    assert {t for t, _ in k1.reads} == set(BOUNDARY)  # reads the boundary feature
    o = A.subcomponent(dec, "blocks.1.attn.W_O", 2, n_tokens=5, decode=decode)
    u = dec.components["blocks.1.attn.W_O"].U[:, 2]
    want = (u @ model.W_U).topk(5)
    assert [t for t, _ in o.predicts] == [VOCAB[i] for i in want.indices]
    assert [s for _, s in o.predicts] == pytest.approx(want.values.tolist(), rel=1e-5)
    fr = A.head_fractions(dec, "blocks.1.attn.W_O", 2)
    v = dec.components["blocks.1.attn.W_O"].V[2].view(4, 8).norm(dim=-1)
    assert torch.allclose(fr, v / v.sum())
    assert A.head_fractions(dec, "blocks.1.attn.W_O", 2).sum() == pytest.approx(1.0)
    assert "spans heads" in repr(q0) and "mostly head 1" in repr(k1)
    with pytest.raises(IndexError):
        A.subcomponent(dec, QS, 4)


def test_harvest_density_and_contexts(planted, toks):
    _, dec = planted
    h = A.harvest(dec, toks, batch_size=16, top_k=6, decode=decode, progress=False)
    is_b = (toks >= 24).float()
    assert h.n_tokens == toks.numel()
    assert h.density[KS][1] == pytest.approx(float(is_b.mean()))
    assert h.density[QS][0] == 1.0 and h.density[QS][2] == 0.0
    info = h.subcomponent(KS, 1)
    assert len(info.contexts) == 6
    for ctx in info.contexts:
        assert ctx.tokens[ctx.center] in BOUNDARY and ctx.ci[ctx.center] == pytest.approx(1.0)
        assert VOCAB[int(toks[ctx.seq, ctx.pos])] == ctx.tokens[ctx.center]
        assert [c > 0.5 for c in ctx.ci] == [t in BOUNDARY for t in ctx.tokens]
    assert h.contexts(QS, 2) == []  # never fires
    # Streaming over small batches keeps the same statistics and top contexts.
    h4 = A.harvest(dec, [toks[i: i + 4] for i in range(0, 16, 4)], top_k=6, decode=decode, progress=False)
    for s in dec.sites:
        assert torch.allclose(h.density[s], h4.density[s]) and torch.allclose(h.mean_ci[s], h4.mean_ci[s])
    key = lambda c: sorted((x.seq, x.pos, round(x.ci[x.center], 6)) for x in c)
    assert key(h4.contexts("blocks.1.attn.W_V", 1)) == key(h.contexts("blocks.1.attn.W_V", 1))
    assert "blocks.1.attn.W_K" in repr(h) and "<table>" in h._repr_html_()
    assert "<table>" in info._repr_html_() and "top contexts" in repr(info)
    one = A.subcomponent(dec, KS, 1, toks, n_contexts=3, decode=decode, progress=False)
    assert one.density == info.density and len(one.contexts) == 3


def test_parse_selection():
    P = A.parse_selection
    assert P("blocks.1.attn.W_Q:3") == {"blocks.1.attn.W_Q": {3: 0.0}}
    assert P(("s", 2)) == {"s": {2: 0.0}}
    assert P(["a:1", ("a", 2), "b:0"]) == {"a": {1: 0.0, 2: 0.0}, "b": {0: 0.0}}
    assert P({"a": {1: 0.5}, "b": [2, 3], "c": 4}) == {"a": {1: 0.5}, "b": {2: 0.0, 3: 0.0}, "c": {4: 0.0}}
    for bad in ("blocks.1.attn.W_Q", "a:x", []):
        with pytest.raises((ValueError, TypeError)):
            P(bad)


# ----------------------------------------------------------------------------- editing
@pytest.mark.parametrize("alpha", [0.0, 0.5, 2.0])
def test_edit_equals_masked_decomposition(planted, toks, alpha):
    model, dec = planted
    edits = {QS: {0: alpha}, "blocks.0.attn.W_O": {1: alpha}}
    edited = A.edit(dec, edits)
    masks = A.ablation_masks(dec, edits, toks.shape)
    ref = dec.run_masked(toks, masks)  # that mask at alpha, others 1, Δ on
    assert (edited(toks) - ref).abs().max() <= 1e-5
    assert model.blocks[1].attn.W_Q.abs().sum() > 0 and dec.model is model  # original untouched
    assert not torch.equal(edited.blocks[1].attn.W_Q, model.blocks[1].attn.W_Q)
    # A plain HookedTransformer: TL's own tools see the edit.
    s = A.prev_token_scores(edited, toks)[1, list(PREV_HEADS)]
    assert (s < 0.3).all() if alpha == 0.0 else (s > 0.9).all()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_edit_every_site_layout(family):
    """MLP (gated), GQA key/value and output matrices all land in the right place."""
    model = make_model(family)
    toks = zoo_tokens()
    dec = tl_vpd.Decomposition.from_model(model, C=6, seed=1)
    edits = {s: {1: 0.0, 4: 0.5} for s in dec.sites}
    ref = dec.run_masked(toks, A.ablation_masks(dec, edits, toks.shape))
    out = A.edit(dec, edits)(toks)
    assert (out - ref).abs().max() <= 1e-5
    assert (out - model(toks)).abs().max() > 1e-2  # the edit is not a no-op


def test_edit_float64_is_exact():
    model = planted_model(torch.float64)
    dec = planted_decomposition(model)
    toks = zoo_tokens(vocab=len(VOCAB))
    edits = {KS: {0: 0.25}, "blocks.1.attn.W_V": {2: 0.0}}
    ref = dec.run_masked(toks, A.ablation_masks(dec, edits, toks.shape))
    assert (A.edit(dec, edits)(toks) - ref).abs().max() <= 1e-10


# ----------------------------------------------------------------------------- hook points
def test_hook_points_run_with_cache_and_hooks(planted, toks):
    model, dec = planted
    hm = A.hooked(dec)
    logits, cache = hm.run_with_cache(toks)
    assert torch.equal(logits, model(toks))  # masks 1, Δ on: the target exactly
    ci = dec.causal_importance(toks)
    for s in dec.sites:
        assert torch.equal(cache[f"{s}.hook_ci"], ci[s])
        assert torch.equal(cache[f"{s}.hook_mask"], torch.ones_like(ci[s]))
        assert cache[f"{s}.hook_delta_mask"].shape == toks.shape
    _, plain = model.run_with_cache(toks)
    assert torch.equal(cache["blocks.1.attn.hook_pattern"], plain["blocks.1.attn.hook_pattern"])
    # Ablation through a hook equals dec.run_masked; user hooks fire once per forward.
    calls = []

    def count(x, hook):
        calls.append(hook.name)

    out = hm.run_with_hooks(toks, fwd_hooks=[(f"{QS}.hook_mask", A.mask_hook([0])),
                                             ("blocks.0.attn.hook_pattern", count)])
    assert calls == ["blocks.0.attn.hook_pattern"]
    ref = dec.run_masked(toks, A.ablation_masks(dec, f"{QS}:0", toks.shape))
    assert torch.allclose(out, ref, atol=1e-6) and not torch.allclose(out, logits, atol=1e-2)
    # mask="ci" runs every site with its CI as mask.
    hc = A.hooked(dec, mask="ci")
    assert torch.allclose(hc(toks), dec.run_masked(toks, ci), atol=1e-6)
    # Δ masks are hookable too; wrong shapes fail loudly.
    zero_delta = lambda m, hook: torch.zeros_like(m)
    out = hm.run_with_hooks(toks, fwd_hooks=[(lambda n: n.endswith("hook_delta_mask"), zero_delta)])
    ones = {s: torch.ones_like(ci[s]) for s in dec.sites}
    zeros = {s: torch.zeros(toks.shape) for s in dec.sites}
    assert torch.allclose(out, dec.run_masked(toks, ones, zeros), atol=1e-6)
    with pytest.raises(ValueError, match="shape"):
        hm.run_with_hooks(toks, fwd_hooks=[(f"{QS}.hook_mask", lambda m, hook: m[..., :2])])
    assert hm.cfg is model.cfg and not model.blocks[0].attn.hook_pattern._forward_hooks


# ----------------------------------------------------------------------------- attribution
def test_attribution_graph_direct_paths(planted, toks):
    model, dec = planted
    prompt = toks[0]
    g = A.attribution_graph(dec, prompt, decode=decode, progress=False)
    pos, y = g.target
    assert pos == 15 and y == int(model(prompt[None])[0, -1].argmax())
    out = len(g.nodes) - 1
    comps = dec.components
    U_O0, U_O1 = comps["blocks.0.attn.W_O"].U.detach(), comps["blocks.1.attn.W_O"].U.detach()
    V_V1 = comps["blocks.1.attn.W_V"].V.detach()
    W_U = model.W_U
    checked = 0
    for i, nd in enumerate(g.nodes):
        if nd.kind != "component":
            continue
        a_g = nd.act * nd.ci
        if nd.site == "blocks.1.attn.W_O" and nd.pos == pos:  # straight to the logit
            assert g.edge(i, out) == pytest.approx(float(U_O1[:, nd.c] @ W_U[:, y]) * a_g, rel=1e-4, abs=1e-6)
            checked += 1
        if nd.site == "blocks.0.attn.W_O":
            # Only the residual path counts: layer-1 subcomponents are stop-gradient.
            want = float(U_O0[:, nd.c] @ W_U[:, y]) * a_g if nd.pos == pos else 0.0
            assert g.edge(i, out) == pytest.approx(want, rel=1e-4, abs=1e-6)
            for c2 in range(4):
                if (dst := _maybe(g, "blocks.1.attn.W_V", nd.pos, c2)) is not None:
                    want = float(V_V1[c2] @ U_O0[:, nd.c]) * a_g
                    assert g.edge(i, dst) == pytest.approx(want, rel=1e-4, abs=1e-6)
                    checked += 1
        if nd.site == "blocks.0.attn.W_Q":  # linear in the embedding: the edge is a itself
            assert g.edge(nd.pos, i) == pytest.approx(nd.act, rel=1e-4, abs=1e-6)
    assert checked >= 5
    for s, d, _ in g.edges:  # causal: no edge from a later position
        assert g.nodes[s].pos <= g.nodes[d].pos
    # K -> O edges inside layer 1 exist (through the attention pattern) and run backwards in position.
    ko = [(g.nodes[s], g.nodes[d]) for s, d, _ in g.edges
          if g.nodes[s].site == KS and g.nodes[d].site == "blocks.1.attn.W_O"]
    assert any(a.pos < b.pos for a, b in ko)
    assert "top edges" in repr(g) and "<table>" in g._repr_html_()
    small = g.prune(0.5)
    assert all(abs(w) >= 0.5 for _, _, w in small.edges) and small.nodes[-1].kind == "output"


def _maybe(g, site, pos, c):
    try:
        return g.node_index(site, pos, c)
    except KeyError:
        return None


def test_pipeline_on_a_gpt2_style_model():
    """LayerNorm, MLP sites and learned positional embeddings go through every entry point."""
    model = make_model("gpt2")
    toks = zoo_tokens(batch=4, seq=10)
    dec = tl_vpd.Decomposition.from_model(model, C=5, seed=2)
    info = A.subcomponent(dec, "blocks.0.mlp.W_out", 3, toks, progress=False)
    assert info.predicts and "approximate" in info.reads_note and info.head_fractions is None
    assert A.subcomponent(dec, "blocks.1.mlp.W_in", 0).reads
    assert isinstance(A.find_prev_token_subcomponents(dec, toks, min_heads=1, min_base=0.0), list)
    hm = A.hooked(dec)
    logits, cache = hm.run_with_cache(toks)
    assert torch.equal(logits, model(toks)) and "blocks.1.mlp.W_gate.hook_ci" not in cache.keys()
    assert cache["blocks.1.mlp.W_out.hook_ci"].shape == (4, 10, 5)
    g = A.attribution_graph(dec, toks[0], progress=False, min_abs=1e-4)
    kinds = {g.nodes[s].site for s, _, _ in g.edges}
    assert None in kinds and "blocks.0.mlp.W_in" in kinds  # embeddings and MLP subcomponents
    w_in = [e for e in g.edges if g.nodes[e[0]].site == "blocks.0.mlp.W_in"
            and g.nodes[e[1]].site == "blocks.0.mlp.W_out"]
    assert w_in and all(g.nodes[s].pos == g.nodes[d].pos for s, d, _ in w_in)  # through the GELU
