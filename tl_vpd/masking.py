"""Masks from causal importances and sources, and routing (which sites a forward masks).

All functions are pure: tensors in, tensors out; randomness comes from an explicit generator.

A *source* ``r ∈ [0, 1]`` turns a causal importance ``g`` into a mask ``m = g + (1 − g) r`` (so
``g ≤ m ≤ 1``). Δ has no causal importance (``g_Δ = 0``), so its mask is its source. Sources
are stored with ``C + 1`` entries per token: the last one is Δ's.

Routing decides, per token, which sites are masked; an unrouted site runs with its original
weight (mask 1 and Δ-mask 1 there):

* ``all`` — every site at once;
* ``uniform_k_subset`` — per token, ``k ~ U{1..n_sites}`` and a uniformly random subset of ``k``
  sites (the VPD paper);
* ``layerwise`` — one site per forward pass (SPD's auxiliary loss): see :func:`layerwise_routes`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from tl_vpd._typing import Bool, Float
from tl_vpd.distributed import Shard

__all__ = [
    "layerwise_routes",
    "masks_from_sources",
    "sample_routing",
    "sample_sources",
]


def sample_sources(
    ci: Mapping[str, Float[torch.Tensor, "*lead C"]],
    generator: torch.Generator | None = None,
    shard: Shard = Shard(),
) -> dict[str, Float[torch.Tensor, "*lead C1"]]:
    """Uniform sources ``r ~ U(0, 1)`` per token and subcomponent, plus Δ (``C + 1`` entries).

    Under data parallelism the draw is made at the global batch size and ``shard`` keeps this
    rank's rows, so the run equals a single-process run.
    """
    out = {}
    for name, g in ci.items():
        shape = (g.shape[0] * shard.world, *g.shape[1:-1], g.shape[-1] + 1)
        # Sampled on the CPU generator so runs are reproducible whatever the device.
        out[name] = shard.take(torch.rand(shape, generator=generator)).to(g.device, g.dtype)
    return out


def masks_from_sources(
    ci: Mapping[str, Float[torch.Tensor, "*lead C"]],
    sources: Mapping[str, torch.Tensor],
    routing: Mapping[str, Bool[torch.Tensor, "*lead"]] | None = None,
) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Masks ``m = g + (1 − g) r`` and Δ masks ``r_Δ``, with unrouted tokens set to 1.

    Arguments:
        ci: causal importances ``g`` (lower-leaky view) per site, ``[*lead, C]``.
        sources: per site, ``[..., C + 1]`` broadcastable to ``[*lead, C + 1]`` (per-token,
            shared across the batch, or a bank entry per example).
        routing: per site, a boolean ``[*lead]`` — True where the site is masked. ``None`` masks
            every site at every token.

    Returns:
        ``(masks, delta_masks)`` for :meth:`Decomposition.masked`.
    """
    masks, dmasks = {}, {}
    for name, g in ci.items():
        r = sources[name]
        m = g + (1 - g) * r[..., :-1]
        md = r[..., -1].expand(g.shape[:-1])
        if routing is not None:
            route = routing[name]
            m = torch.where(route[..., None], m, torch.ones_like(m))
            md = torch.where(route, md, torch.ones_like(md))
        masks[name] = m
        dmasks[name] = md
    return masks, dmasks


def sample_routing(
    sites: Sequence[str],
    lead: torch.Size | tuple[int, ...],
    kind: str,
    generator: torch.Generator | None = None,
    device: torch.device | str = "cpu",
    shard: Shard = Shard(),
) -> dict[str, torch.Tensor] | None:
    """Which sites each token masks: ``None`` for ``all``, else ``{site: Bool[*lead]}``.

    ``uniform_k_subset``: per token ``k ~ U{1..n}``; a site is routed when its rank in a
    uniformly random permutation of the ``n`` sites is below ``k``.
    """
    if kind == "all":
        return None
    if kind != "uniform_k_subset":
        raise ValueError(f"routing {kind!r}: use 'all' or 'uniform_k_subset' here "
                         "('layerwise' runs one forward per site, see layerwise_routes)")
    n = len(sites)
    glead = (lead[0] * shard.world, *lead[1:])
    ranks = torch.rand((*glead, n), generator=generator).argsort(-1).argsort(-1)
    k = torch.randint(1, n + 1, (*glead, 1), generator=generator)
    routed = shard.take(ranks < k).to(device)
    return {s: routed[..., i] for i, s in enumerate(sites)}


def layerwise_routes(sites: Sequence[str]) -> list[list[str]]:
    """SPD's layerwise routing: one forward pass per site, masking that site alone."""
    return [[s] for s in sites]
