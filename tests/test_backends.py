"""Backends: sites found on every model family, the weight layout, and scoped, checked hooks."""

import copy

import pytest
import torch

from tl_vpd import Decomposition
from engine_checks import random_masks
from model_zoo import CASES, IDS, make_model, tokens


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

def test_hooks_removed_on_error():
    model = make_model("gpt2")
    dec = Decomposition.from_model(model, C=4)
    toks = tokens()
    bad = {"blocks.0.attn.W_Q": torch.ones(*toks.shape, 5)}  # wrong C
    with pytest.raises(ValueError, match="expected"):
        dec.run_masked(toks, bad)
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())

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


def test_subclasses_of_hooked_transformer_are_detected():
    """A user subclass used to get "no backend" (the test compared the class name)."""
    from transformer_lens import HookedTransformer

    from tl_vpd.backends import get_backend
    from tl_vpd.toy_models import TMS

    class MyHT(HookedTransformer):
        pass

    base = make_model("gpt2")
    sub = MyHT(base.cfg)
    sub.load_state_dict(base.state_dict())
    assert get_backend(sub).name == "hooked_transformer"
    dec = Decomposition.from_model(sub, C=4)
    assert dec.sites == expected_sites(sub)
    toks = tokens()
    ones = {n: torch.ones(*toks.shape, 4) for n in dec.sites}
    assert torch.allclose(dec.run_masked(toks, ones), base(toks), atol=1e-5)
    # The other families keep their backends; a module that merely shares the name does not
    # count as a HookedTransformer.
    assert get_backend(TMS(n_features=5, n_hidden=2)).name == "hook_points"

    class HookedTransformer_(torch.nn.Module):
        pass

    HookedTransformer_.__name__ = "HookedTransformer"
    with pytest.raises(TypeError, match="no backend"):
        get_backend(HookedTransformer_())
