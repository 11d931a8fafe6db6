"""tl_vpd.analysis.qk: static Q·K interactions against the planted rotary attention scores."""

import torch

import tl_vpd
from tl_vpd import analysis as A
from model_zoo import make_model
from planted import PREV_HEADS, planted, toks  # noqa: F401  (fixtures)


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
