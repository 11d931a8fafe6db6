"""tl_vpd.analysis.selection: every spelling of a subcomponent selection."""

import pytest

from tl_vpd import analysis as A


def test_parse_selection():
    P = A.parse_selection
    assert P("blocks.1.attn.W_Q:3") == {"blocks.1.attn.W_Q": {3: 0.0}}
    assert P(("s", 2)) == {"s": {2: 0.0}}
    assert P(["a:1", ("a", 2), "b:0"]) == {"a": {1: 0.0, 2: 0.0}, "b": {0: 0.0}}
    assert P({"a": {1: 0.5}, "b": [2, 3], "c": 4}) == {"a": {1: 0.5}, "b": {2: 0.0, 3: 0.0}, "c": {4: 0.0}}
    for bad in ("blocks.1.attn.W_Q", "a:x", []):
        with pytest.raises((ValueError, TypeError)):
            P(bad)
