"""tl_vpd.analysis.subcomponents: subcomponent cards and the harvest on the planted target."""

import pytest
import torch

from tl_vpd import analysis as A
from planted import BOUNDARY, KS, QS, VOCAB, decode, planted, toks  # noqa: F401  (fixtures)


def test_subcomponent_weights_and_heads(planted):
    model, dec = planted
    q0 = A.subcomponent(dec, QS, 0)
    assert q0.head_fractions == pytest.approx([1 / 3, 0, 1 / 3, 1 / 3], abs=1e-6)
    assert q0.spans_heads and q0.density is None and q0.v_norm == pytest.approx(1.0)
    k1 = A.subcomponent(dec, KS, 1, decode=decode)
    assert k1.head_fractions == pytest.approx([0, 1, 0, 0]) and not k1.spans_heads
    assert {t for t, _ in k1.reads} == set(BOUNDARY)  # reads the boundary feature
    o = A.subcomponent(dec, "blocks.1.attn.W_O", 2, n_tokens=5, decode=decode)
    u = dec.components["blocks.1.attn.W_O"].U[:, 2]
    want = (u @ model.W_U).topk(5)
    assert [t for t, _ in o.predicts] == [VOCAB[i] for i in want.indices]
    assert [s for _, s in o.predicts] == pytest.approx(want.values.tolist(), rel=1e-5)
    fr = A.head_fractions(dec, "blocks.1.attn.W_O", 2)
    v = dec.components["blocks.1.attn.W_O"].V[2].view(4, 8).norm(dim=-1)
    assert torch.allclose(fr, v / v.sum())
    assert A.head_fractions(dec, "blocks.1.attn.W_O", 2).sum() == pytest.approx(1.0)
    assert "spans heads" in repr(q0) and "mostly head 1" in repr(k1)
    with pytest.raises(IndexError):
        A.subcomponent(dec, QS, 4)


def test_harvest_density_and_contexts(planted, toks):
    _, dec = planted
    h = A.harvest(dec, toks, batch_size=16, top_k=6, decode=decode, progress=False)
    is_b = (toks >= 24).float()
    assert h.n_tokens == toks.numel()
    assert h.density[KS][1] == pytest.approx(float(is_b.mean()))
    assert h.density[QS][0] == 1.0 and h.density[QS][2] == 0.0
    info = h.subcomponent(KS, 1)
    assert len(info.contexts) == 6
    for ctx in info.contexts:
        assert ctx.tokens[ctx.center] in BOUNDARY and ctx.ci[ctx.center] == pytest.approx(1.0)
        assert VOCAB[int(toks[ctx.seq, ctx.pos])] == ctx.tokens[ctx.center]
        assert [c > 0.5 for c in ctx.ci] == [t in BOUNDARY for t in ctx.tokens]
    assert h.contexts(QS, 2) == []  # never fires
    # Streaming over small batches keeps the same statistics and top contexts.
    h4 = A.harvest(dec, [toks[i: i + 4] for i in range(0, 16, 4)], top_k=6, decode=decode, progress=False)
    for s in dec.sites:
        assert torch.allclose(h.density[s], h4.density[s]) and torch.allclose(h.mean_ci[s], h4.mean_ci[s])
    key = lambda c: sorted((x.seq, x.pos, round(x.ci[x.center], 6)) for x in c)
    assert key(h4.contexts("blocks.1.attn.W_V", 1)) == key(h.contexts("blocks.1.attn.W_V", 1))
    assert "blocks.1.attn.W_K" in repr(h) and "<table>" in h._repr_html_()
    assert "<table>" in info._repr_html_() and "top contexts" in repr(info)
    one = A.subcomponent(dec, KS, 1, toks, n_contexts=3, decode=decode, progress=False)
    assert one.density == info.density and len(one.contexts) == 3
