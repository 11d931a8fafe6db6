"""tl_vpd.analysis.finders: the previous-token and syntax-boundary finders on the planted target."""

import pytest
import torch

from tl_vpd import analysis as A
from tl_vpd.analysis.finders import BOUNDARY_CLASSES, classify_token
from planted import KS, PREV_HEADS, QS, VOCAB, decode, planted, toks  # noqa: F401  (fixtures)


def test_finder_names_the_prev_token_qk_pair(planted, toks):
    _, dec = planted
    hits = A.find_prev_token_subcomponents(dec, toks)
    assert {h.name for h in hits} == {f"{QS}:0", f"{KS}:0"}
    for h in hits:
        assert h.heads == [(1, 0), (1, 2), (1, 3)]
        assert (h.after[1, list(PREV_HEADS)] < 0.3).all()
    # Every subcomponent tried (not only those that fire): still only the planted pair.
    hits_all = A.find_prev_token_subcomponents(dec, toks, min_density=None, chunk=5)
    assert {h.name for h in hits_all} == {f"{QS}:0", f"{KS}:0"}
    assert "removes offset-1 attention in heads 0, 2, 3 of layer 1" in repr(hits[0])


def test_classify_token():
    cases = {"\n": "newline", " \n\n": "newline", "(": "bracket", " )": "bracket", ").": "bracket",
             '"': "quote", " '": "quote", ".": "punctuation", ",": "punctuation", " ::": "punctuation",
             " the": None, "a.": None, " ": None, "": None}
    for s, want in cases.items():
        assert classify_token(s) == want, s


def test_syntax_boundary_finder(planted, toks):
    _, dec = planted
    hits = A.find_syntax_boundary(dec, toks, decode)
    assert hits[0].name == f"{KS}:1"
    top = hits[0]
    is_b = toks >= 24
    assert top.n_fired == int(is_b.sum()) and top.precision == pytest.approx(1.0)
    for k in BOUNDARY_CLASSES:
        ids = [i for i, s in enumerate(VOCAB) if classify_token(s) == k]
        n_k = int(torch.isin(toks, torch.tensor(ids)).sum())
        assert top.class_precision[k] == pytest.approx(n_k / top.n_fired)
        assert top.base_rate[k] == pytest.approx(n_k / toks.numel())
    assert f"{KS}:0" not in {h.name for h in hits}  # fires everywhere: precision = base rate
    assert top.routed[1] > 0.3  # head 1 routes word queries to boundary keys
    assert max(abs(top.routed[h]) for h in PREV_HEADS) < 0.02
