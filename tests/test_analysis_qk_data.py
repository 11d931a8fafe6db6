"""tl_vpd.analysis.qk_data: the data-dependent Q·K interaction strength against the planted
model's own attention scores."""

import pytest
import torch

from tl_vpd import analysis as A
from planted import KS, PREV_HEADS, QS, planted, toks  # noqa: F401  (fixtures)

CAUSAL = torch.ones(16, 16, dtype=torch.bool).tril()


def _pair_scores(dec, toks, c_q, c_k, q_mask=None, k_mask=None):
    """Brute force: the model's own hook_attn_scores with only c_q and c_k on (Δ off)."""
    masks = {}
    for site, c, g in ((QS, c_q, q_mask), (KS, c_k, k_mask)):
        m = torch.zeros(*toks.shape, 4)
        m[..., c] = 1.0 if g is None else g
        masks[site] = m
    with dec.masked(masks, {s: torch.zeros(toks.shape) for s in masks}):
        _, cache = dec.model.run_with_cache(toks, names_filter="blocks.1.attn.hook_attn_scores")
    return cache["blocks.1.attn.hook_attn_scores"] * dec.model.blocks[1].attn.attn_scale


def test_pairs_sum_to_the_models_attention_scores(planted, toks):
    model, dec = planted
    dd = A.qk_data_interactions(dec, 1, toks, q=range(4), k=range(4))
    assert dd.values.shape == (16, 4, 16, 16, 4, 4) and dd.rotary
    assert dd.attn_scale == pytest.approx(float(model.blocks[1].attn.attn_scale))
    _, cache = model.run_with_cache(toks, names_filter="blocks.1.attn.hook_attn_scores")
    scores = cache["blocks.1.attn.hook_attn_scores"]
    # Δ and the biases of the planted Q/K are zero: the pairs are the whole score
    assert (dd.scores()[..., CAUSAL] - scores[..., CAUSAL]).abs().max() < 1e-4
    assert torch.isinf(dd.scores()[..., ~CAUSAL]).all()
    _, cache = model.run_with_cache(toks, names_filter="blocks.1.attn.hook_pattern")
    assert (dd.pattern() - cache["blocks.1.attn.hook_pattern"]).abs().max() < 1e-5


@pytest.mark.parametrize("c_q,c_k", [(0, 0), (1, 1), (0, 1), (1, 0)])
def test_each_pair_matches_the_forward_with_only_that_pair(planted, toks, c_q, c_k):
    _, dec = planted
    dd = A.qk_data_interactions(dec, 1, toks, q=range(4), k=range(4))
    ref = _pair_scores(dec, toks, c_q, c_k)
    assert (dd.pair(c_q, c_k)[..., CAUSAL] - ref[..., CAUSAL]).abs().max() < 1e-4
    assert (dd.pair(c_q, c_k)[..., ~CAUSAL] == 0).all()


def test_ci_weighting_matches_the_forward_masked_by_ci(planted, toks):
    _, dec = planted
    ci = dec.causal_importance(toks)
    dd = A.qk_data_interactions(dec, 1, toks, q=[1], k=[1], weight="ci")
    ref = _pair_scores(dec, toks, 1, 1, ci[QS][..., 1], ci[KS][..., 1])
    assert (dd.pair(1, 1)[..., CAUSAL] - ref[..., CAUSAL]).abs().max() < 1e-4
    assert dd.pair(1, 1).abs().max() > 1.0  # not vacuous: the pair is on where both fire


def test_constant_activations_give_the_static_strength(planted, toks):
    """The previous-token piece reads a direction that is 1 on every token (‖V‖ = 1, sign +1):
    its data-dependent strength at (t, t − τ) is the static strength at τ, on every prompt."""
    _, dec = planted
    static = A.qk_interactions(dec, 1, data=toks).pair(0, 0)  # [head, offset]
    dd = A.qk_data_interactions(dec, 1, toks)
    assert dd.q == [0, 1] and dd.k == [0, 1]  # the subcomponents that fire on these prompts
    v = dd.pair(0, 0)
    for tau in range(16):
        d = v.diagonal(-tau, 2, 3)  # [batch, head, 16 - tau]
        assert torch.allclose(d, static[:, tau][None, :, None].expand_as(d), atol=1e-3), tau
    assert torch.allclose(dd.by_offset(0, 0), static, atol=1e-3)
    top = dd.top(4)
    assert {(cq, ck, h) for cq, ck, h, _ in top} == {(0, 0, h) for h in PREV_HEADS} | {(1, 1, 1)}
    assert "QKDataInteractions(layer 1, 2×2 pairs" in repr(dd)
    # the head-1 routing pair only acts where a word query meets a boundary key
    assert dd.strength()[1, 1, 1] > 0 and dd.strength()[1, 1, 0] == 0


def test_errors_and_plots(planted, toks):
    _, dec = planted
    dd = A.qk_data_interactions(dec, 1, toks[:2], q=[0], k=[0, 1])
    with pytest.raises(KeyError, match="was not computed"):
        dd.pair(1, 0)
    with pytest.raises(ValueError, match="weight"):
        A.qk_data_interactions(dec, 1, toks, weight="grad")
    with pytest.raises(KeyError, match="not a decomposed site"):
        A.qk_data_interactions(dec, 3, toks)
    assert A.qk_data_interactions(dec, 1, toks[0], q=[0], k=[0]).values.shape[0] == 1
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    assert len(dd.plot(0, 0)) == 4
    assert A.qk_interactions(dec, 1, offsets=range(6)).plot(0, 0).get_title().startswith("standardized")
