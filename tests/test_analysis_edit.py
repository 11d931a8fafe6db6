"""tl_vpd.analysis.edit: an edited HookedTransformer equals the masked decomposition."""

import pytest
import torch

import tl_vpd
from tl_vpd import analysis as A
from model_zoo import make_model, tokens as zoo_tokens
from planted import (  # noqa: F401  (fixtures)
    KS, PREV_HEADS, QS, VOCAB, planted, planted_decomposition, planted_model, toks)


@pytest.mark.parametrize("alpha", [0.0, 0.5, 2.0])
def test_edit_equals_masked_decomposition(planted, toks, alpha):
    model, dec = planted
    edits = {QS: {0: alpha}, "blocks.0.attn.W_O": {1: alpha}}
    edited = A.edit(dec, edits)
    masks = A.ablation_masks(dec, edits, toks.shape)
    ref = dec.run_masked(toks, masks)  # that mask at alpha, others 1, Δ on
    # fp32 rounding scales with the logits (|logits| ≈ 42 here; each path is ~1e-5 from float64)
    assert (edited(toks) - ref).abs().max() <= 1e-5 + 1e-6 * ref.abs().max()
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
