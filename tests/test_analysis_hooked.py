"""tl_vpd.analysis.hooked: CI and mask hook points for run_with_cache / run_with_hooks."""

import pytest
import torch

from tl_vpd import analysis as A
from planted import QS, planted, toks  # noqa: F401  (fixtures)


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
