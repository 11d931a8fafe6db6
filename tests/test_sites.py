"""Site selection and the per-site subcomponent counts (resolve_C)."""

import pytest

from tl_vpd.sites import resolve_C

SITES = [
    "blocks.0.attn.W_Q",
    "blocks.0.attn.W_O",
    "blocks.0.mlp.W_in",
    "blocks.1.attn.W_Q",
    "blocks.1.mlp.W_in",
]


def test_resolve_C_int():
    assert resolve_C(8, SITES) == {site: 8 for site in SITES}


def test_resolve_C_first_match_wins():
    C = {"blocks.0.attn.*": 4, "blocks.*.attn.*": 32, "*": 64}
    assert resolve_C(C, SITES) == {
        "blocks.0.attn.W_Q": 4,
        "blocks.0.attn.W_O": 4,
        "blocks.0.mlp.W_in": 64,
        "blocks.1.attn.W_Q": 32,
        "blocks.1.mlp.W_in": 64,
    }


def test_resolve_C_unmatched_site():
    with pytest.raises(ValueError, match=r"site 'blocks.0.mlp.W_in' is matched by no pattern"):
        resolve_C({"blocks.*.attn.*": 32}, SITES)


def test_resolve_C_pattern_matching_nothing():
    pattern = r"pattern 'blocks.\*.mlp.W_gate' of C matches no site.*'blocks.0.attn.W_Q'"
    with pytest.raises(ValueError, match=pattern):
        resolve_C({"blocks.*.mlp.W_gate": 8, "*": 64}, SITES)


def test_resolve_C_shadowed_pattern():
    with pytest.raises(ValueError, match=r"pattern 'blocks.0.\*' of C is shadowed"):
        resolve_C({"*": 64, "blocks.0.*": 8}, SITES)
