"""DecompositionSpec: round trip, defaults in one place, and VPDConfig.spec."""

import dataclasses
import json

import pytest

from tl_vpd import VPDConfig
from tl_vpd.spec import SPEC_DEFAULTS, DecompositionSpec


def test_round_trip_is_json_safe():
    spec = DecompositionSpec(C={"*.attn.*": 4, "*": 8}, sites=["blocks.0.*"], seed=3,
                             ci_fn="global_transformer", ci_d_model=16, dtype="float64")
    d = spec.to_dict()
    assert d["sites"] == ["blocks.0.*"] and d["C"] == {"*.attn.*": 4, "*": 8}
    assert list(d) == [f.name for f in dataclasses.fields(DecompositionSpec)]
    again = DecompositionSpec.from_dict(json.loads(json.dumps(d)))
    assert again == spec and again.sites == ("blocks.0.*",)
    assert DecompositionSpec.from_dict(DecompositionSpec(C=2).to_dict()) == DecompositionSpec(C=2)
    with pytest.raises(ValueError, match="unknown field"):
        DecompositionSpec.from_dict({"C": 2, "hidden": 3})


def test_frozen_and_replace():
    spec = DecompositionSpec(C=4)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.seed = 1  # type: ignore[misc]
    assert spec.replace(seed=5).seed == 5 and spec.seed == 0


def test_defaults_live_in_the_spec():
    assert SPEC_DEFAULTS["leaky_alpha"] == 0.01 and "C" not in SPEC_DEFAULTS
    cfg = VPDConfig()
    for name, default in SPEC_DEFAULTS.items():
        assert getattr(cfg, name) == default, name


def test_config_spec():
    cfg = VPDConfig(C={"*": 8}, sites=["blocks.1.*"], seed=4, ci_fn="mlp", ci_hidden=16,
                    leaky_alpha=0.02, init="svd", dtype="float64")
    spec = cfg.spec
    assert spec == DecompositionSpec(C={"*": 8}, sites=("blocks.1.*",), seed=4, ci_fn="mlp",
                                     ci_hidden=16, leaky_alpha=0.02, init="svd", dtype="float64")
