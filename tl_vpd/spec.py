"""The shape of a decomposition: everything needed to rebuild it untrained on the same model.

A :class:`DecompositionSpec` is what :meth:`tl_vpd.Decomposition.from_spec` builds from and what a
saved decomposition records; :attr:`tl_vpd.VPDConfig.spec` gives the spec of a training run.
The defaults of these fields live here and nowhere else (``VPDConfig`` and
``Decomposition.from_model`` read them from :data:`SPEC_DEFAULTS`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["CIFnKind", "DTypeName", "DecompositionSpec", "InitKind", "SPEC_DEFAULTS"]

InitKind = Literal["random", "svd"]
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
        init: ``"random"`` or ``"svd"`` initialisation of U and V.
        leaky_alpha: slope of the leaky hard sigmoids.
        dtype: dtype of U, V and the CI parameters.
    """

    # Loose annotations (str, Sequence): the dataclass normalises lists to tuples, and the CI
    # builder and backends give the errors that name the valid options.
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
        # Accept the list/dict forms JSON and YAML give, keep a canonical copy.
        if isinstance(self.C, Mapping):
            object.__setattr__(self, "C", dict(self.C))
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
