"""Decomposition: the swap is exact (all-ones masks equal the target; factorized equals materialized), site selection, construction from a spec, save/load."""

import pytest
import torch

import tl_vpd
from tl_vpd import Decomposition, VPDConfig
from tl_vpd.spec import DecompositionSpec
from engine_checks import check_factorized_equals_materialized, random_masks
from model_zoo import CASES, IDS, make_model, tokens


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
    check_factorized_equals_materialized(make_model(family, processed), tokens())

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

def test_repr_mentions_sites():
    dec = Decomposition.from_model(make_model("gpt2"), C=4)
    r = repr(dec)
    assert "blocks.0.attn.W_Q" in r and "16 subcomponents" not in r and "sites" in r


def test_from_spec_equals_from_model_and_stores_config():
    model = make_model("gpt2")
    cfg = VPDConfig(C=6, sites=("blocks.0.*",), seed=2, ci_fn="mlp", ci_hidden=4)
    a = Decomposition.from_spec(model, cfg.spec, config=cfg)
    b = Decomposition.from_model(model, C=6, sites=["blocks.0.*"], seed=2, ci_fn="mlp", ci_hidden=4)
    assert a.config is cfg and b.config is None
    assert a.spec == b.spec and a.spec.sites == tuple(a.sites)
    assert a.sites == [s for s in b.sites] and all(n.startswith("blocks.0.") for n in a.sites)
    for n in a.sites:
        assert torch.equal(a.components[n].U, b.components[n].U)
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_spec_defaults_are_the_spec_s():
    dec = Decomposition.from_model(make_model("gpt2"), C=4)
    assert dec.spec == DecompositionSpec(C=4, sites=tuple(dec.sites))
    assert dec.leaky_alpha == DecompositionSpec(C=4).leaky_alpha


def test_masked_refuses_nesting_and_orphan_delta_masks():
    """Nested blocks used to stack hooks (0.5 inside 0.5 gave mask 0); a Δ mask for a site
    without a mask used to be ignored. Both now raise, and the model is left unhooked."""
    model = make_model("gpt2")
    dec = Decomposition.from_model(model, C=8)
    toks = tokens()
    half = {n: torch.full((*toks.shape, c.C), 0.5) for n, c in dec.components.items()}
    site = dec.sites[0]
    with dec.masked(half):
        with pytest.raises(RuntimeError, match="do not nest"):
            dec.masked(half).__enter__()
    with pytest.raises(ValueError, match="without a mask"):
        dec.masked({}, {site: torch.zeros(toks.shape)}).__enter__()
    with dec.masked(half):  # usable again after both errors
        out = model(toks)
    assert not torch.allclose(out, model(toks))


def test_lower_precision_components_warn_once():
    """bfloat16 components on a float32 model move the unmasked output by bf16 rounding (about
    1e-2 here): that is said once, at construction; a dtype as fine as the model's is silent."""
    import warnings

    model = make_model("gpt2")
    toks = tokens()
    with pytest.warns(UserWarning, match=r"stored in bfloat16, a lower precision than the "
                      r"model's weights \(float32.*pass dtype=\"float32\"") as record:
        dec = Decomposition.from_model(model, C=4, dtype="bfloat16")
    assert len([w for w in record if issubclass(w.category, UserWarning)]) == 1
    ones = {n: torch.ones(*toks.shape, c.C) for n, c in dec.components.items()}
    assert (dec.run_masked(toks, ones) - model(toks)).abs().max() > 1e-3  # what it warns about
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        for dtype in ("float32", "float64"):
            Decomposition.from_model(model, C=4, dtype=dtype)
