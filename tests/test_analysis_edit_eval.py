"""tl_vpd.analysis.edit_eval: off- and on-target effects of an edit against a direct computation
on the planted target, whose mechanisms act on known positions."""

import pytest
import torch

from tl_vpd import analysis as A
from planted import KS, QS, VOCAB, planted, toks  # noqa: F401  (fixtures)

PREV = {QS: [0], KS: [0]}  # the previous-token mechanism of heads 0, 2, 3


def decode(ids):
    return VOCAB[ids[0]]


def _direct(model, edited, toks):
    lo = model(toks).double().log_softmax(-1)
    le = edited(toks).double().log_softmax(-1)
    kl = (lo.exp() * (lo - le)).sum(-1)
    return kl, lo.argmax(-1) != le.argmax(-1), (le.exp() - lo.exp())


def test_removing_the_previous_token_mechanism(planted, toks):
    model, dec = planted
    ev = A.evaluate_edit(dec, PREV, toks, decode=decode)
    kl, changed, dp = _direct(model, A.edit(dec, PREV), toks)
    s = ev.off
    assert s.n_positions == toks.numel() and ev.on is None
    assert s.kl_mean == pytest.approx(float(kl.mean()), rel=1e-6)
    assert s.kl_max == pytest.approx(float(kl.max()), rel=1e-6)
    worst = kl.flatten().topk(3).values  # 1% of 256 positions, rounded: 3
    assert s.kl_top_mean == pytest.approx(float(worst.mean()), rel=1e-6)
    assert s.kl_top_share == pytest.approx(float(worst.sum() / kl.sum()), rel=1e-6)
    assert s.top1_changed == pytest.approx(float(changed.float().mean()))
    mean_dp = dp.mean((0, 1))
    assert s.promoted[0] == (VOCAB[int(mean_dp.argmax())], pytest.approx(float(mean_dp.max()), abs=1e-9))
    assert s.suppressed[0][0] == VOCAB[int(mean_dp.argmin())]
    assert all(t in VOCAB for t, *_ in s.promoted + s.by_input)
    assert s.kl_mean > 0.1 and s.top1_changed > 0.1  # a large, measurable change
    assert "off-target" in ev.table() and "'" in repr(ev) and "<table>" in ev._repr_html_()


def test_split_by_predicate_previous_token(planted, toks):
    """Position 0 attends only to itself: the previous-token mechanism cannot act there."""
    _, dec = planted

    def has_previous(t):
        m = torch.ones_like(t, dtype=torch.bool)
        m[:, 0] = False
        return m

    ev = A.evaluate_edit(dec, PREV, toks, on_target=has_previous, decode=decode)
    assert ev.on_target == "predicate"
    assert ev.on.n_positions == 15 * 16 and ev.off.n_positions == 16
    assert ev.off.kl_max < 1e-10 and ev.on.kl_mean > 0.1
    assert "on-target" in ev.table()


def test_split_by_ci_boundary_routing(planted, toks):
    """Head 1's query piece W_Q:1 fires on words: removing it changes nothing at boundary tokens
    (off target, where it is not causally important) and something at words that follow one."""
    _, dec = planted
    ev = A.evaluate_edit(dec, f"{QS}:1", toks, on_target="ci", decode=decode)
    words = toks < 24
    assert ev.on.n_positions == int(words.sum()) and ev.off.n_positions == int((~words).sum())
    assert ev.off.kl_max < 1e-10 and ev.on.kl_mean > 1e-2
    kl, _, _ = _direct(dec.model, A.edit(dec, f"{QS}:1"), toks)
    assert ev.on.kl_mean == pytest.approx(float(kl[words].mean()), rel=1e-6)


def test_on_target_dataset_noop_and_decomposition_path(planted, toks):
    model, dec = planted
    other = torch.randint(0, len(VOCAB), (4, 16), generator=torch.Generator().manual_seed(3))
    ev = dec.edit(PREV, heldout=toks, on_target=other, decode=decode)
    assert isinstance(ev, A.EditEvaluation) and ev.on_target == "dataset"
    assert ev.on.n_positions == other.numel() and ev.off.n_positions == toks.numel()
    assert torch.equal(ev.model(toks), A.edit(dec, PREV)(toks)) and dec.model is model
    kl, _, _ = _direct(model, ev.model, other)
    assert ev.on.kl_mean == pytest.approx(float(kl.mean()), rel=1e-6)
    same = A.evaluate_edit(dec, {QS: {0: 1.0}}, toks)  # alpha 1 keeps the subcomponent
    assert same.off.kl_max < 1e-10 and same.off.top1_changed == 0
    assert "×1" in same.label
    with pytest.raises(ValueError, match="on_target"):
        A.evaluate_edit(dec, PREV, toks, on_target="everywhere")
    with pytest.raises(ValueError, match="bool tensor"):
        A.evaluate_edit(dec, PREV, toks, on_target=lambda t: t.float())
