"""Checks of the masked swap shared by the HookedTransformer and TransformerBridge test files
(torch and tl_vpd only, so the TL-4 stage can import it too)."""

import torch

from tl_vpd import Decomposition


def random_masks(dec, toks, seed=0):
    """Uniform masks ``{site: [*toks.shape, C]}`` and Δ masks ``{site: toks.shape}``."""
    g = torch.Generator().manual_seed(seed)
    masks = {n: torch.rand(*toks.shape, c.C, generator=g) for n, c in dec.components.items()}
    dmasks = {n: torch.rand(*toks.shape, generator=g) for n in dec.sites}
    return masks, dmasks


def check_factorized_equals_materialized(model, toks):
    """The factorized masked forward equals the per-token materialized reference, and random
    masks really move the logits."""
    dec = Decomposition.from_model(model, C=16)
    masks, dmasks = random_masks(dec, toks)
    fast = dec.run_masked(toks, masks, dmasks)
    slow = dec.run_masked(toks, masks, dmasks, impl="materialized")
    assert (fast - slow).abs().max() <= 1e-4
    assert (fast - model(toks)).abs().max() > 1e-2  # random masks move the logits
