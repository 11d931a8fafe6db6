"""Choosing subcomponents: the one format every analysis function accepts for "which ones".

A *selection* names subcomponents and, optionally, the mask value ``alpha`` each gets (0 ablates,
1 keeps, 2 doubles). :func:`parse_selection` turns every accepted spelling into
``{site: {c: alpha}}``; :func:`check_selection` validates it against a decomposition and
:func:`selection_label` prints it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from tl_vpd.decomposition import Decomposition

__all__ = ["Selection", "check_selection", "parse_selection", "selection_label"]

Selection = str | tuple | Sequence | Mapping


def parse_selection(spec: Selection, default_alpha: float = 0.0) -> dict[str, dict[int, float]]:
    """Normalise a choice of subcomponents to ``{site: {c: alpha}}``.

    Arguments:
        spec: ``"blocks.1.attn.W_Q:3"``, ``("blocks.1.attn.W_Q", 3)``, a list of those, or a
            mapping ``{site: c | [c, ...] | {c: alpha}}``.
        default_alpha: the mask value of a subcomponent whose ``alpha`` is not given (0 ablates).

    Returns:
        ``{site: {c: alpha}}``.
    """
    out: dict[str, dict[int, float]] = {}

    def add(site: str, c, alpha: float) -> None:
        if isinstance(c, bool) or not isinstance(c, int | torch.Tensor):
            raise TypeError(f"subcomponent index for {site!r} must be an int, got {c!r}")
        out.setdefault(site, {})[int(c)] = float(alpha)

    if isinstance(spec, str):
        site, sep, c = spec.rpartition(":")
        if not sep or not c.strip().lstrip("-").isdigit():
            raise ValueError(f"expected 'site:c' such as 'blocks.1.attn.W_Q:3', got {spec!r}")
        add(site, int(c), default_alpha)
    elif isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[0], str):
        add(spec[0], spec[1], default_alpha)
    elif isinstance(spec, Mapping):
        for site, cs in spec.items():
            if isinstance(cs, Mapping):
                for c, a in cs.items():
                    add(site, c, a)
            elif isinstance(cs, int):
                add(site, cs, default_alpha)
            else:
                for c in cs:
                    add(site, c, default_alpha)
    elif isinstance(spec, Sequence):
        for item in spec:
            for site, cs in parse_selection(item, default_alpha).items():
                out.setdefault(site, {}).update(cs)
    else:
        raise TypeError(f"cannot read a subcomponent selection from {type(spec).__name__}")
    if not out:
        raise ValueError("the subcomponent selection is empty")
    return out


def check_selection(dec: Decomposition, sel: Mapping[str, Mapping[int, float]]) -> None:
    """Raise if a site is not decomposed or an index is out of range."""
    for site, cs in sel.items():
        C = dec.components[dec.site(site).name].C
        bad = [c for c in cs if not 0 <= c < C]
        if bad:
            raise IndexError(f"{site} has C={C} subcomponents; got indices {bad}")


def selection_label(sel: Mapping[str, Mapping[int, float]]) -> str:
    """``"blocks.1.attn.W_Q:3, blocks.1.attn.W_K:0"``."""
    return ", ".join(f"{s}:{c}" for s, cs in sel.items() for c in cs)
