"""The shape of a decomposition: everything needed to rebuild it untrained on the same model.

A :class:`DecompositionSpec` is what :meth:`tl_vpd.Decomposition.from_spec` builds from and what a
saved decomposition records; :attr:`tl_vpd.VPDConfig.spec` gives the spec of a training run.
The defaults of these fields live here and nowhere else (``VPDConfig`` and
``Decomposition.from_model`` read them from :data:`SPEC_DEFAULTS`).
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, get_args

__all__ = ["CIFnKind", "DTypeName", "DecompositionSpec", "InitKind", "SPEC_DEFAULTS",
           "saved_spec_problems"]

InitKind = Literal["random", "fan_in", "svd"]
CIFnKind = Literal["mlp", "vector_mlp", "shared_mlp", "global_mlp", "global_transformer"]
DTypeName = Literal["float32", "float64", "bfloat16"]


@dataclass(frozen=True)
class DecompositionSpec:
    """The decomposition's shape: sites, subcomponent counts, CI function, init and dtype.

    Attributes:
        C: subcomponents per site: an int, or ``{site_pattern: int}`` (first match wins, see
            :func:`tl_vpd.sites.resolve_C`).
        sites: glob patterns (or exact names) of the decomposed sites; ``None`` = every attention
            and MLP matrix. A built decomposition's spec holds the resolved site names.
        seed: seeds U, V and the CI function's initialisation.
        ci_fn: the causal-importance function (see :mod:`tl_vpd.importance`).
        ci_hidden: width of the per-site / per-subcomponent CI MLPs.
        ci_d_model: width of the global CI transformer.
        ci_n_layers: blocks of the global CI transformer.
        ci_n_heads: attention heads of the global CI transformer.
        init: ``"random"``, ``"fan_in"`` or ``"svd"`` initialisation of U and V.
        leaky_alpha: slope of the leaky hard sigmoids.
        dtype: dtype of U, V and the CI parameters.
    """

    # Loose annotations (str, Sequence): the dataclass normalises lists to tuples, and the CI
    # builder and backends give the errors that name the valid options. C is checked in
    # __post_init__; this keeps jaxtyping's import hook (tests) from pre-empting that message.
    __no_type_check__ = True

    C: int | Mapping[str, int]
    sites: str | Sequence[str] | None = None  # None = every attention and MLP matrix
    seed: int = 0  # library choice
    ci_fn: str = "shared_mlp"  # tuned for CPU: the VPD paper's "global_transformer" is costly
    ci_hidden: int = 64  # tuned for CPU: width of the per-site/subcomponent MLPs (SPD: 16-128)
    ci_d_model: int = 128  # tuned for CPU: the VPD paper's global transformer uses 2048
    ci_n_layers: int = 2  # tuned for CPU: the VPD paper uses 8 blocks
    ci_n_heads: int = 4  # tuned for CPU: the VPD paper uses 16 heads
    init: str = "random"  # Kaiming-style; the VPD paper does not state its init
    leaky_alpha: float = 0.01  # VPD paper: slope of the leaky hard sigmoids
    dtype: str = "float32"  # library choice: dtype of U, V and the CI parameters

    def __post_init__(self) -> None:
        # C is checked here (a dict value of 2.5 would otherwise be truncated to 2 downstream);
        # the CI builder and backends check the other fields, naming the valid options.
        problem = _C_problem(self.C)
        if problem:
            error, message = problem
            raise error(f"DecompositionSpec.{message}")
        # Accept the list/dict forms JSON and YAML give, keep a canonical copy.
        if isinstance(self.C, Mapping):
            object.__setattr__(self, "C", {p: int(v) for p, v in self.C.items()})
        else:
            object.__setattr__(self, "C", int(self.C))
        if isinstance(self.sites, str):
            object.__setattr__(self, "sites", (self.sites,))
        elif isinstance(self.sites, Sequence):
            object.__setattr__(self, "sites", tuple(self.sites))

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-safe dict (``sites`` a list); :meth:`from_dict` inverts it.

        Returns:
            A new dict, field name -> value, in declaration order.
        """
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["C"] = dict(self.C) if isinstance(self.C, dict) else self.C
        out["sites"] = None if self.sites is None else list(self.sites)
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DecompositionSpec:
        """Rebuild a spec from :meth:`to_dict`'s output.

        Arguments:
            d: field name -> value; missing fields take their defaults.

        Returns:
            The spec. Unknown keys raise ``ValueError``.
        """
        unknown = sorted(set(d) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"DecompositionSpec: unknown field(s) {unknown}")
        return cls(**d)

    def replace(self, **changes: Any) -> DecompositionSpec:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)


# The one home of the shape defaults (C has none: it is always chosen).
SPEC_DEFAULTS: dict[str, Any] = {
    f.name: f.default for f in dataclasses.fields(DecompositionSpec)
    if f.default is not dataclasses.MISSING
}


def _C_problem(C: Any) -> tuple[type[Exception], str] | None:
    """What is wrong with a value of ``C``, as ``(exception type, message)``; ``None`` when it is
    an int >= 1 or a non-empty dict of glob pattern -> int >= 1."""
    if isinstance(C, Mapping):
        if not C:
            return ValueError, "C must be an int >= 1 or a non-empty dict of glob pattern -> int (got {})"
        for pattern, value in C.items():
            if not isinstance(pattern, str) or not pattern:
                return TypeError, f"C's keys must be non-empty glob patterns (got {pattern!r})"
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                return TypeError, f"C[{pattern!r}] must be an int >= 1 (got {value!r})"
            if value < 1:
                return ValueError, f"C[{pattern!r}] must be >= 1 (got {value!r})"
        return None
    if isinstance(C, bool) or not isinstance(C, numbers.Integral):
        return TypeError, f"C must be an int >= 1 or a dict of glob pattern -> int (got {C!r})"
    return None if C >= 1 else (ValueError, f"C must be >= 1 (got {C!r})")


def saved_spec_problems(d: Any) -> list[str]:
    """What is wrong with a spec as a saved decomposition records it (the :meth:`~DecompositionSpec.
    to_dict` of a built decomposition: every field present, ``sites`` the resolved site names).

    Arguments:
        d: the spec as read from JSON.

    Returns:
        One line per problem (empty when the spec is well formed).
    """
    if not isinstance(d, Mapping):
        return [f"it is a {type(d).__name__}, not an object"]
    names = [f.name for f in dataclasses.fields(DecompositionSpec)]
    problems = []
    missing = [n for n in names if n not in d]
    if missing:
        problems.append(f"missing field(s) {missing}")
    unknown = sorted(set(d) - set(names), key=str)
    if unknown:
        problems.append(f"unknown field(s) {unknown}")
    if "C" in d and _C_problem(d["C"]):
        problems.append(_C_problem(d["C"])[1])
    sites = d.get("sites")
    if "sites" in d and (not isinstance(sites, list) or not sites
                         or not all(isinstance(s, str) and s for s in sites)):
        problems.append(f"sites must be a non-empty list of site names (got {sites!r})")
    elif "sites" in d and len(set(sites)) != len(sites):
        problems.append(f"sites lists a site twice ({sites})")
    for name, low in (("seed", None), ("ci_hidden", 1), ("ci_d_model", 1), ("ci_n_layers", 1),
                      ("ci_n_heads", 1)):
        v = d.get(name)
        if name in d and (isinstance(v, bool) or not isinstance(v, int)
                          or (low is not None and v < low)):
            problems.append(f"{name} must be an int{'' if low is None else f' >= {low}'} "
                            f"(got {v!r})")
    for name, kind in (("ci_fn", CIFnKind), ("init", InitKind), ("dtype", DTypeName)):
        if name in d and d[name] not in get_args(kind):
            problems.append(f"{name} must be one of {list(get_args(kind))} (got {d[name]!r})")
    a = d.get("leaky_alpha")
    if "leaky_alpha" in d and (isinstance(a, bool) or not isinstance(a, (int, float))
                               or not math.isfinite(a) or not 0 <= a <= 1):
        problems.append(f"leaky_alpha must be a number in [0, 1] (got {a!r})")
    return problems
