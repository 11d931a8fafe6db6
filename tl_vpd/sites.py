"""Sites: the weight matrices of a target model that a decomposition replaces.

A site is one matrix ``W [d_out, d_in]`` with ``out = in @ W.T + bias`` (the ``nn.Linear``
convention), plus where its input is read and its output replaced. Backends
(:mod:`tl_vpd.backends`) find sites on a model; this module holds the model-independent parts:
the :class:`Site` record, selection by glob pattern, and the per-site subcomponent counts
(:func:`resolve_C`).
"""

from __future__ import annotations

import fnmatch
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

__all__ = ["Site", "resolve_C", "select_sites"]


@dataclass(frozen=True, eq=False)
class Site:
    """One decomposable weight matrix.

    Attributes:
        name: TransformerLens-style name, e.g. ``"blocks.1.attn.W_Q"``.
        d_in: input width.
        d_out: output width (``n_heads * d_head`` for Q/K/V, holistic across heads).
        get_weight: returns the matrix the forward pass uses, ``[d_out, d_in]``, detached.
        get_bias: returns the bias added inside the replaced output (``[d_out]``) or ``None``.
        n_heads: for attention sites, how many heads the output (Q/K/V) or input (O) spans.
        per_head_input: the input arrives per head, ``[..., n_heads, d_in]`` (split-QKV models);
            the output is then ``[..., n_heads, d_out // n_heads]``.
        layer: block index, when the site lives in a block.
        kind: the matrix kind, e.g. ``"W_Q"``, ``"W_out"``, ``"linear1"``.
    """

    name: str
    d_in: int
    d_out: int
    get_weight: Callable[[], torch.Tensor] = field(repr=False)
    get_bias: Callable[[], torch.Tensor | None] = field(repr=False)
    n_heads: int | None = None
    per_head_input: bool = False
    layer: int | None = None
    kind: str = ""

    @property
    def weight(self) -> torch.Tensor:
        w = self.get_weight()
        if tuple(w.shape) != (self.d_out, self.d_in):
            raise RuntimeError(
                f"site {self.name}: weight has shape {tuple(w.shape)}, expected "
                f"{(self.d_out, self.d_in)}; was the model changed after the sites were found?"
            )
        return w

    @property
    def bias(self) -> torch.Tensor | None:
        return self.get_bias()


def select_sites(sites: Sequence[Site], patterns: str | Sequence[str] | None) -> list[Site]:
    """Keep the sites whose names match any glob pattern, in model order.

    Arguments:
        sites: every site a backend found.
        patterns: glob patterns (``"blocks.*.attn.W_Q"``); ``None`` keeps all.

    Returns:
        The matching sites. A pattern that matches nothing raises ``ValueError`` listing the
        available names, so a typo never silently shrinks the decomposition.
    """
    if patterns is None:
        return list(sites)
    if isinstance(patterns, str):
        patterns = [patterns]
    if len(patterns) == 0:
        raise ValueError("sites: empty pattern list; pass None to decompose every site")
    names = [s.name for s in sites]
    for pat in patterns:
        if not fnmatch.filter(names, pat):
            raise ValueError(
                f"site pattern {pat!r} matches no site of this model; available sites: "
                f"{_summarise(names)}"
            )
    return [s for s in sites if any(fnmatch.fnmatchcase(s.name, p) for p in patterns)]


def resolve_C(C: int | Mapping[str, int], site_names: Sequence[str]) -> dict[str, int]:
    """The number of subcomponents of each site.

    Arguments:
        C: one count for every site, or a mapping of glob patterns (``fnmatch``,
            case-sensitive; ``*`` also matches dots) to counts. Each site takes the count of the
            first pattern, in mapping order, that matches it, so put specific patterns before
            general ones (``{"blocks.*.attn.*": 32, "*": 64}``).
        site_names: the decomposed sites, e.g. ``["blocks.0.attn.W_Q", ...]``.

    Returns:
        Site name -> C, in the order of ``site_names``. Raises ``ValueError`` if a site is
        matched by no pattern, or a pattern is used by no site (it matches nothing, or only
        sites an earlier pattern already took) — both are almost always typos.
    """
    if isinstance(C, bool) or not isinstance(C, (numbers.Integral, Mapping)):
        raise TypeError(f"C must be an int or a mapping of glob pattern -> int (got {C!r})")
    if not isinstance(C, Mapping):
        if C < 1:
            raise ValueError(f"C must be >= 1 (got {C!r})")
        return {site: int(C) for site in site_names}

    resolved: dict[str, int] = {}
    used: set[str] = set()
    for site in site_names:
        pattern = next((p for p in C if fnmatch.fnmatchcase(site, p)), None)
        if pattern is None:
            raise ValueError(
                f"site {site!r} is matched by no pattern of C ({list(C)}); add a pattern for it "
                "or a catch-all '*'"
            )
        resolved[site] = int(C[pattern])
        used.add(pattern)
    for pattern in C:
        if pattern in used:
            continue
        matches = [s for s in site_names if fnmatch.fnmatchcase(s, pattern)]
        if not matches:
            raise ValueError(
                f"pattern {pattern!r} of C matches no site; available sites: {list(site_names)}"
            )
        raise ValueError(
            f"pattern {pattern!r} of C is shadowed: every site it matches ({matches}) is taken by "
            "an earlier pattern; put more specific patterns first"
        )
    return resolved


def _summarise(names: Sequence[str], limit: int = 16) -> str:
    if len(names) <= limit:
        return ", ".join(names)
    return ", ".join(names[:limit]) + f", ... ({len(names)} in all)"
