"""Model editing: a copy of the target with chosen subcomponents removed or rescaled.

``edit(dec, {site: {c: alpha}})`` writes ``W' = W − Σ_c (1 − α_c) u_c v_cᵀ`` into a deep copy of
the target, so subcomponent ``c`` contributes ``α_c u_c v_cᵀ`` (0 removes it, 1 keeps it, 2
doubles it) in *every* token's forward pass. The result is a plain model of the target's class
(``HookedTransformer`` or ``TransformerBridge``): caching, hooks, generation and every other
TransformerLens tool work on it unchanged, and the decomposition is not involved any more.

It equals running the decomposition with that subcomponent's mask at ``α`` on every token, all
other masks 1 and Δ on (``U diag(m) V + Δ = W − (1 − α) u_c v_cᵀ``).
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import nn

from tl_vpd.analysis.selection import Selection, check_selection, parse_selection

if TYPE_CHECKING:
    from tl_vpd.decomposition import Decomposition

__all__ = ["edit", "edit_delta"]


def edit_delta(dec: Decomposition, edits: Selection) -> dict[str, torch.Tensor]:
    """``{site: Σ_c (1 − α_c) u_c v_cᵀ}`` ``[d_out, d_in]``, the amount :func:`edit` subtracts."""
    sel = parse_selection(edits)
    check_selection(dec, sel)
    out = {}
    with torch.no_grad():
        for site, cs in sel.items():
            comp = dec.components[site]
            idx = torch.tensor(list(cs))
            scale = 1.0 - torch.tensor(list(cs.values()), dtype=torch.float64)
            U, V = comp.U[:, idx].double(), comp.V[idx].double()
            out[site] = (U * scale.to(U.device)) @ V
    return out


def edit(dec: Decomposition, edits: Selection) -> nn.Module:
    """A deep copy of ``dec.model`` with subcomponents removed or rescaled in its weights.

    Arguments:
        dec: the decomposition (of a model whose backend can write weights: a
            ``HookedTransformer`` or a ``TransformerBridge``).
        edits: ``{site: {c: alpha}}`` (``alpha`` = 0 removes, 1 keeps), or any selection
            :func:`~tl_vpd.analysis.selection.parse_selection` accepts
            (``"blocks.1.attn.W_Q:3"``, ``{site: [c, ...]}``), which removes.

    Returns:
        The edited model; ``dec.model`` is untouched.
    """
    if not dec.backend.supports_edit:
        raise NotImplementedError(f"edit supports targets whose backend can write weights; "
                                  f"this decomposition's backend is {dec.backend.name!r}")
    deltas = edit_delta(dec, edits)
    model = copy.deepcopy(dec.model)
    for site, d in deltas.items():
        dec.backend.add_to_weight(model, dec.site(site), -d)
    _check(dec, model, deltas)
    return model


def _check(dec: Decomposition, model: nn.Module, deltas) -> None:
    """Fail closed: the copy's sites must read back as ``W − delta``."""
    sites = {s.name: s for s in dec.backend.find_sites(model)}
    for site, d in deltas.items():
        want = dec.target_weight(site).double() - d.to(dec.target_weight(site).device)
        got = sites[site].weight
        tol = 1e-10 if got.dtype == torch.float64 else 1e-4
        got = got.double()
        if (got - want).abs().max() > tol * max(1.0, float(want.abs().max())):
            raise RuntimeError(f"edit of {site} did not land in the copied model's weights")
