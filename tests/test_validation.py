"""The generic field validator on a small dataclass of its own."""

import dataclasses
from typing import Literal

import pytest

from tl_vpd.validation import bounded, validate_fields


@dataclasses.dataclass(frozen=True)
class Toy:
    __no_type_check__ = True
    n: int = bounded(1, ge=1)
    x: float = bounded(0.5, ge=0.0, le=1.0)
    clip: float | None = bounded(None, gt=0.0)
    kind: Literal["a", "b"] = "a"
    flag: bool = True
    name: str | None = None

    def __post_init__(self):
        validate_fields(self, removed={("kind", "c"): "kind='c' was removed; use 'b'"})


def test_valid_values_are_normalised():
    toy = Toy(n=3, x=1, clip=2)
    assert toy.x == 1.0 and isinstance(toy.x, float) and toy.clip == 2.0


@pytest.mark.parametrize(("kwargs", "error", "pattern"), [
    ({"n": 0}, ValueError, r"Toy\.n must be an int >= 1 \(got 0\)"),
    ({"n": 1.5}, TypeError, r"Toy\.n must be an int >= 1"),
    ({"x": 2.0}, ValueError, r"Toy\.x must be a finite float >= 0 and <= 1 \(got 2\.0\)"),
    ({"clip": 0.0}, ValueError, r"Toy\.clip must be None or a finite float > 0"),
    ({"kind": "z"}, ValueError, r"Toy\.kind must be one of 'a', 'b' \(got 'z'\)"),
    ({"kind": "c"}, ValueError, r"Toy\.kind='c' was removed; use 'b'"),
    ({"flag": 1}, TypeError, r"Toy\.flag must be a bool"),
    ({"name": ""}, ValueError, r"Toy\.name must be None or a non-empty str"),
    ({"name": 3}, TypeError, r"Toy\.name must be None or a non-empty str"),
])
def test_bad_values(kwargs, error, pattern):
    with pytest.raises(error, match=pattern):
        Toy(**kwargs)
