"""SiteComponents: shape contracts of the factorized masked output."""

import pytest
import torch

from tl_vpd import Decomposition
from model_zoo import make_model


def test_shape_contracts_enforced():
    """jaxtyping + beartype are on in the test suite: a wrong shape fails loudly."""
    dec = Decomposition.from_model(make_model("gpt2"), C=4)
    comp = dec.components["blocks.0.attn.W_Q"]
    comp.inner_acts(torch.zeros(2, 3, 32))
    with pytest.raises(Exception, match="(?i)type-check|shape|dimension|violates"):
        comp.inner_acts(torch.zeros(2, 3, 31))
    with pytest.raises(Exception, match="(?i)type-check|shape|dimension|violates"):
        comp.masked_output(torch.zeros(2, 32), torch.zeros(2, 32), torch.zeros(2, 5), None)


@pytest.mark.parametrize("family", ["llama", "split_qkv"])
def test_compiled_masked_output_equals_eager(family):
    """``VPDConfig.compile`` runs every site's masked output through torch.compile inside the
    training step (``compiled_sites``): the same logits and gradients as eager, in fp32, for
    whole-input and per-head-input sites, and the flags are restored afterwards."""
    from tl_vpd.components import compiled_sites

    dec = Decomposition.from_model(make_model(family), C=4)
    toks = torch.randint(0, dec.model.cfg.d_vocab, (2, 5), generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    masks = {n: torch.rand(2, 5, 4, generator=g) for n in dec.sites}
    dmasks = {n: torch.rand(2, 5, generator=g) for n in dec.sites}
    params = [p for c in dec.components.values() for p in (c.U, c.V)]
    results = []
    for compiled in (False, True):
        ms = {k: v.clone().requires_grad_(True) for k, v in masks.items()}
        with compiled_sites(dec.components.values(), compiled):
            logits = dec.run_masked(toks, ms, dmasks)
        grads = torch.autograd.grad(logits.square().mean(), [*params, *ms.values()])
        results.append((logits, *grads))
    assert not any(c.compiled for c in dec.components.values())
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_compiled_sites_raise_the_recompile_limit():
    """Dynamo compiles at most ``recompile_limit`` (8) graphs per function and runs the rest
    eagerly; a 24-site model's shapes × passes need more, so ``compiled_sites`` raises it while
    it is active and restores it after."""
    import torch._dynamo

    from tl_vpd.components import COMPILE_RECOMPILE_LIMIT, compiled_sites

    before = torch._dynamo.config.recompile_limit
    dec = Decomposition.from_model(make_model("gpt2"), C=4)
    with compiled_sites(dec.components.values()):
        assert torch._dynamo.config.recompile_limit >= COMPILE_RECOMPILE_LIMIT > 8
    with compiled_sites(dec.components.values(), enabled=False):
        assert torch._dynamo.config.recompile_limit == before
    assert torch._dynamo.config.recompile_limit == before


def test_init_kinds_fan_in_and_random():
    """``fan_in``: V ~ N(0, 1/d_in), U ~ N(0, 1/C) as drawn; ``random``: the same draws scaled
    so that ‖U V‖ = ‖W‖; anything else is refused by name."""
    model = make_model("gpt2")
    a = Decomposition.from_model(model, C=256, init="fan_in", seed=0).components["blocks.0.mlp.W_in"]
    b = Decomposition.from_model(model, C=256, init="random", seed=0).components["blocks.0.mlp.W_in"]
    d_out, d_in = a.W.shape
    assert abs(a.V.std().item() * d_in ** 0.5 - 1) < 0.05
    assert abs(a.U.std().item() * 256 ** 0.5 - 1) < 0.05
    k = (b.U / a.U).mean().item()
    assert torch.allclose(b.U, k * a.U, rtol=1e-4) and torch.allclose(b.V, k * a.V, rtol=1e-4)
    assert abs((b.U @ b.V).norm().item() / b.W.norm().item() - 1) < 1e-4 and abs(k - 1) > 0.05
    with pytest.raises(ValueError, match="init"):
        Decomposition.from_model(model, C=4, init="xavier")
