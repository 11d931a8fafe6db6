"""Model editing: a new HookedTransformer with chosen subcomponents removed or rescaled.

``edit(dec, {site: {c: alpha}})`` writes ``W' = W − Σ_c (1 − α_c) u_c v_cᵀ`` into a deep copy of
the target, so subcomponent ``c`` contributes ``α_c u_c v_cᵀ`` (0 removes it, 1 keeps it, 2
doubles it) in *every* token's forward pass. The result is a plain ``HookedTransformer``: caching,
hooks, generation and every other TransformerLens tool work on it unchanged, and the decomposition
is not involved any more.

It equals running the decomposition with that subcomponent's mask at ``α`` on every token, all
other masks 1 and Δ on (``U diag(m) V + Δ = W − (1 − α) u_c v_cᵀ``).
"""

from __future__ import annotations

import copy

import einops
import torch
from torch import nn

from tl_vpd.analysis.inspect import check_selection, parse_selection

__all__ = ["edit", "edit_delta"]


def edit_delta(dec, edits) -> dict[str, torch.Tensor]:
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


def edit(dec, edits) -> nn.Module:
    """A deep copy of ``dec.model`` with subcomponents removed or rescaled in its weights.

    Arguments:
        dec: the decomposition (of a ``HookedTransformer``).
        edits: ``{site: {c: alpha}}`` (``alpha`` = 0 removes, 1 keeps), or any selection
            :func:`~tl_vpd.analysis.inspect.parse_selection` accepts (``"blocks.1.attn.W_Q:3"``,
            ``{site: [c, ...]}``), which removes.

    Returns:
        The edited model; ``dec.model`` is untouched.
    """
    if dec.backend.name != "hooked_transformer":
        raise NotImplementedError(f"edit supports HookedTransformer targets; this decomposition's "
                                  f"backend is {dec.backend.name!r}")
    deltas = edit_delta(dec, edits)
    model = copy.deepcopy(dec.model)
    with torch.no_grad():
        for site, d in deltas.items():
            s = dec.site(site)
            param, layout = _param(model, s.layer, s.kind)
            param.sub_(layout(d).to(param.dtype))
    _check(dec, model, deltas)
    return model


def _param(model: nn.Module, layer: int, kind: str):
    """The parameter holding a site's matrix and the map from ``[d_out, d_in]`` to its layout."""
    block = model.blocks[layer]
    if kind in ("W_Q", "W_K", "W_V"):
        attn = block.attn
        name = kind if (kind == "W_Q" or not hasattr(attn, "_" + kind)) else "_" + kind
        p = getattr(attn, name)
        return p, lambda d, h=p.shape[0]: einops.rearrange(d, "(h e) i -> h i e", h=h)
    if kind == "W_O":
        p = block.attn.W_O
        return p, lambda d, h=p.shape[0]: einops.rearrange(d, "o (h e) -> h e o", h=h)
    if kind in ("W_in", "W_gate", "W_out"):
        return getattr(block.mlp, kind), lambda d: d.T
    raise NotImplementedError(f"edit does not know where a {kind!r} site lives")


def _check(dec, model: nn.Module, deltas) -> None:
    """Fail closed: the copy's sites must read back as ``W − delta``."""
    sites = {s.name: s for s in dec.backend.find_sites(model)}
    for site, d in deltas.items():
        want = dec.target_weight(site).double() - d.to(dec.target_weight(site).device)
        got = sites[site].weight
        tol = 1e-10 if got.dtype == torch.float64 else 1e-4
        got = got.double()
        if (got - want).abs().max() > tol * max(1.0, float(want.abs().max())):
            raise RuntimeError(f"edit of {site} did not land in the copied model's weights")
