"""The swap is exact: all-ones masks equal the target; factorized equals materialized."""

import copy

import pytest
import torch

import tl_vpd
from tl_vpd import Decomposition
from model_zoo import FAMILIES, make_model, tokens

CASES = [(f, False) for f in FAMILIES] + [("gpt2", True), ("llama", True)]
IDS = [f + ("-processed" if p else "") for f, p in CASES]


def random_masks(dec, toks, seed=0):
    g = torch.Generator().manual_seed(seed)
    lead = toks.shape
    masks = {n: torch.rand(*lead, c.C, generator=g) for n, c in dec.components.items()}
    dmasks = {n: torch.rand(*lead, generator=g) for n in dec.sites}
    return masks, dmasks


def expected_sites(model):
    cfg = model.cfg
    per_block = ["attn.W_Q", "attn.W_K", "attn.W_V", "attn.W_O"]
    if not cfg.attn_only:
        per_block += (["mlp.W_gate"] if cfg.gated_mlp else []) + ["mlp.W_in", "mlp.W_out"]
    return [f"blocks.{l}.{s}" for l in range(cfg.n_layers) for s in per_block]


@pytest.mark.parametrize("family,processed", CASES, ids=IDS)
def test_sites_found(family, processed):
    model = make_model(family, processed)
    dec = Decomposition.from_model(model, C=8)
    assert dec.sites == expected_sites(model)
    for n, c in dec.components.items():
        assert c.U.shape == (c.d_out, 8) and c.V.shape == (8, c.d_in)
        assert c.delta.shape == (c.d_out, c.d_in)
    if family == "llama":  # GQA: K/V hold n_kv_heads * d_head rows
        assert dec.components["blocks.0.attn.W_K"].d_out == 2 * 8
        assert dec.components["blocks.0.attn.W_Q"].d_out == 4 * 8


@pytest.mark.parametrize("family,processed", CASES, ids=IDS)
def test_unmasked_equals_target(family, processed):
    model = make_model(family, processed)
    toks = tokens()
    ref = model(toks)
    dec = Decomposition.from_model(model, C=16)
    ones = {n: torch.ones(*toks.shape, c.C) for n, c in dec.components.items()}
    dones = {n: torch.ones(*toks.shape) for n in dec.sites}
    for impl in ("factorized", "materialized"):
        out = dec.run_masked(toks, ones, dones, impl=impl)
        assert (out - ref).abs().max() <= 1e-5, impl
    # Masks that actually differ from 1 must change the output (the check is not vacuous).
    zeros = {n: torch.zeros_like(m) for n, m in ones.items()}
    assert (dec.run_masked(toks, zeros, {n: torch.zeros_like(d) for n, d in dones.items()}) - ref).abs().max() > 1e-2


@pytest.mark.parametrize("family,processed", CASES, ids=IDS)
def test_factorized_equals_materialized(family, processed):
    model = make_model(family, processed)
    toks = tokens()
    dec = Decomposition.from_model(model, C=16)
    masks, dmasks = random_masks(dec, toks)
    fast = dec.run_masked(toks, masks, dmasks)
    slow = dec.run_masked(toks, masks, dmasks, impl="materialized")
    assert (fast - slow).abs().max() <= 1e-4
    assert (fast - model(toks)).abs().max() > 1e-2  # random masks move the logits


def test_materialized_matches_real_weight_swap():
    """Token-constant masks equal a copy of the model whose weights really are W'."""
    model = make_model("gpt2")
    toks = tokens()
    dec = Decomposition.from_model(model, C=16)
    g = torch.Generator().manual_seed(3)
    m = {n: torch.rand(c.C, generator=g) for n, c in dec.components.items()}
    md = {n: torch.rand((), generator=g) for n in dec.sites}
    swapped = copy.deepcopy(model)
    with torch.no_grad():
        for n, c in dec.components.items():
            Wp = c.U @ torch.diag(m[n]) @ c.V + md[n] * c.delta
            layer = int(n.split(".")[1])
            blk = swapped.blocks[layer]
            kind = n.split(".")[-1]
            if kind in ("W_Q", "W_K", "W_V"):
                getattr(blk.attn, kind).copy_(Wp.view(4, 8, 32).transpose(1, 2))
            elif kind == "W_O":
                blk.attn.W_O.copy_(Wp.T.reshape(4, 8, 32))
            else:
                getattr(blk.mlp, kind).copy_(Wp.T)
    masks = {n: v.expand(*toks.shape, -1) for n, v in m.items()}
    dmasks = {n: v.expand(*toks.shape) for n, v in md.items()}
    assert (dec.run_masked(toks, masks, dmasks) - swapped(toks)).abs().max() <= 1e-4


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_gradients_and_model_untouched(family):
    model = make_model(family)
    toks = tokens()
    before = model(toks)
    params_before = {k: v.clone() for k, v in model.state_dict().items()}
    dec = Decomposition.from_model(model, C=8)
    masks, dmasks = random_masks(dec, toks)
    for t in (*masks.values(), *dmasks.values()):
        t.requires_grad_(True)
    logits = dec.run_masked(toks, masks, dmasks)
    torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), toks[:, 1:].flatten()).backward()
    for n, c in dec.components.items():
        assert c.U.grad is not None and c.U.grad.abs().sum() > 0, n
        assert c.V.grad is not None and c.V.grad.abs().sum() > 0, n
        assert masks[n].grad.abs().sum() > 0 and dmasks[n].grad.abs().sum() > 0, n
    assert all(p.grad is None for p in model.parameters())
    # The context is gone: no hooks remain and the output is bit-identical.
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert torch.equal(model(toks), before)
    assert all(torch.equal(v, params_before[k]) for k, v in model.state_dict().items())


def test_hooks_removed_on_error():
    model = make_model("gpt2")
    dec = Decomposition.from_model(model, C=4)
    toks = tokens()
    bad = {"blocks.0.attn.W_Q": torch.ones(*toks.shape, 5)}  # wrong C
    with pytest.raises(ValueError, match="expected"):
        dec.run_masked(toks, bad)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_missing_sites_keep_their_weights():
    model = make_model("gpt2")
    toks = tokens()
    dec = Decomposition.from_model(model, C=8)
    only = {"blocks.1.mlp.W_in": torch.ones(*toks.shape, 8)}
    assert (dec.run_masked(toks, only) - model(toks)).abs().max() <= 1e-5


def test_site_selection_and_per_site_C():
    model = make_model("llama")
    dec = Decomposition.from_model(model, C={"*.attn.*": 4, "*": 12}, sites=["blocks.*.attn.W_Q", "blocks.1.mlp.*"])
    assert dec.sites == ["blocks.0.attn.W_Q", "blocks.1.attn.W_Q", "blocks.1.mlp.W_gate",
                         "blocks.1.mlp.W_in", "blocks.1.mlp.W_out"]
    assert [c.C for c in dec.components.values()] == [4, 4, 12, 12, 12]
    with pytest.raises(ValueError, match="matches no site"):
        Decomposition.from_model(model, C=4, sites=["blocks.*.mlp.W_up"])
    with pytest.raises(ValueError, match="of C matches no site"):
        Decomposition.from_model(model, C={"*.W_foo": 3, "*": 4})


def test_unsupported_configurations_refused():
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from model_zoo import BASE

    model = HookedTransformer(HookedTransformerConfig(**BASE, act_fn="gelu", use_attn_result=True))
    with pytest.raises(ValueError, match="use_attn_result"):
        Decomposition.from_model(model, C=4)
    with pytest.raises(TypeError, match="no backend"):
        Decomposition.from_model(torch.nn.Linear(3, 3), C=4)


def test_skipped_hook_detected():
    """A forward that never reaches a site's hooks must fail, not silently ignore its masks."""
    model = make_model("gpt2")
    dec = Decomposition.from_model(model, C=4)
    toks = tokens()
    masks = {n: torch.ones(*toks.shape, 4) for n in dec.sites}
    with pytest.raises(RuntimeError, match="exactly once"):
        with dec.masked(masks):
            model(toks, stop_at_layer=1)


def test_save_load_round_trip(tmp_path):
    model = make_model("llama")
    toks = tokens()
    dec = Decomposition.from_model(model, C=8, seed=3, ci_fn="global_transformer", ci_d_model=16, ci_n_heads=2, ci_n_layers=1)
    with torch.no_grad():  # move away from the initialisation so the round trip is meaningful
        for c in dec.components.values():
            c.U.add_(0.01)
    dec.save(tmp_path / "d")
    dec2 = tl_vpd.load(tmp_path / "d", model)
    ci1, ci2 = dec.causal_importance(toks), dec2.causal_importance(toks)
    assert all(torch.equal(ci1[n], ci2[n]) for n in dec.sites)
    masks, dmasks = random_masks(dec, toks)
    assert torch.equal(dec.run_masked(toks, masks, dmasks), dec2.run_masked(toks, masks, dmasks))
    other = make_model("llama")
    with torch.no_grad():
        other.blocks[0].attn.W_Q.mul_(1.01)
    with pytest.raises(ValueError, match="not the decomposition's target"):
        tl_vpd.load(tmp_path / "d", other)
    with pytest.raises(FileNotFoundError):
        tl_vpd.load(tmp_path / "nothing", model)


@pytest.mark.parametrize("ci_fn", ["mlp", "vector_mlp", "shared_mlp", "global_mlp", "global_transformer"])
def test_ci_functions_shapes_and_range(ci_fn):
    model = make_model("gpt2")
    toks = tokens()
    dec = Decomposition.from_model(model, C=6, ci_fn=ci_fn, ci_hidden=8, ci_d_model=16, ci_n_heads=2, ci_n_layers=1)
    ci = dec.causal_importance(toks)
    assert set(ci) == set(dec.sites)
    for g in ci.values():
        assert g.shape == (*toks.shape, 6) and g.min() >= 0 and g.max() <= 1


def test_global_transformer_is_bidirectional():
    """The paper's CI network sees the whole sequence: changing a late token moves early CI."""
    model = make_model("gpt2")
    dec = Decomposition.from_model(model, C=6, ci_fn="global_transformer", ci_d_model=16, ci_n_heads=2, ci_n_layers=1)
    toks = tokens()
    toks2 = toks.clone()
    toks2[:, -1] = (toks2[:, -1] + 1) % 50
    _, x1 = dec.run_target(toks)
    _, x2 = dec.run_target(toks2)
    pre1, pre2 = dec.ci(x1).pre, dec.ci(x2).pre
    assert (pre1["blocks.0.attn.W_Q"][:, 0] - pre2["blocks.0.attn.W_Q"][:, 0]).abs().max() > 0


def test_repr_mentions_sites():
    dec = Decomposition.from_model(make_model("gpt2"), C=4)
    r = repr(dec)
    assert "blocks.0.attn.W_Q" in r and "16 subcomponents" not in r and "sites" in r


def test_shape_contracts_enforced():
    """jaxtyping + beartype are on in the test suite: a wrong shape fails loudly."""
    dec = Decomposition.from_model(make_model("gpt2"), C=4)
    comp = dec.components["blocks.0.attn.W_Q"]
    comp.inner_acts(torch.zeros(2, 3, 32))
    with pytest.raises(Exception, match="(?i)type-check|shape|dimension|violates"):
        comp.inner_acts(torch.zeros(2, 3, 31))
    with pytest.raises(Exception, match="(?i)type-check|shape|dimension|violates"):
        comp.masked_output(torch.zeros(2, 32), torch.zeros(2, 32), torch.zeros(2, 5), None)


def test_run_with_hooks_is_checked_too():
    """TL's run_with_hooks bypasses the root module's hooks; the swap is still applied and checked."""
    model = make_model("gpt2")
    dec = Decomposition.from_model(model, C=8)
    toks = tokens()
    masks, dmasks = random_masks(dec, toks)
    with dec.masked(masks, dmasks):
        via_hooks = model.run_with_hooks(toks, fwd_hooks=[])
    assert torch.allclose(via_hooks, dec.run_masked(toks, masks, dmasks), atol=1e-6)
    with pytest.raises(RuntimeError, match="exactly once"):
        with dec.masked({"blocks.1.mlp.W_in": masks["blocks.1.mlp.W_in"]}):
            # a hook that runs the MLP a second time makes the site fire twice in one pass
            mlp = model.blocks[1].mlp
            model.run_with_hooks(toks, fwd_hooks=[("blocks.1.hook_resid_mid", lambda x, hook: (mlp(x), x)[1])])
