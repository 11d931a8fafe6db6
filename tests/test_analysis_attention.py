"""tl_vpd.analysis.attention: offset profiles and ablation effects on the planted target."""

import torch

from tl_vpd import analysis as A
from planted import PREV_HEADS, QS, planted, toks  # noqa: F401  (fixtures)


def test_planted_heads_attend_to_previous_token(planted, toks):
    model, _ = planted
    s = A.prev_token_scores(model, toks)
    assert s.shape == (2, 4)
    assert (s[1, list(PREV_HEADS)] > 0.99).all()
    assert s[1, 1] < 0.5 and (s[0] < 0.5).all()


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
