"""Every mask the package builds: from causal importances and sources (training), the fixed
masks of evaluation and analysis (ones, zeros, rounded CI, ablations), and routing (which sites
a forward masks).

All functions are pure: tensors in, tensors out; randomness comes from an explicit generator.
Masks are ``{site: [*lead, C]}`` and Δ masks ``{site: [*lead]}``, as
:meth:`tl_vpd.Decomposition.masked` takes them.

A *source* ``r ∈ [0, 1]`` turns a causal importance ``g`` into a mask ``m = g + (1 − g) r`` (so
``g ≤ m ≤ 1``). Δ has no causal importance (``g_Δ = 0``), so its mask is its source. Sources
are stored with ``C + 1`` entries per token: the last one is Δ's.

Routing decides, per token, which sites are masked; an unrouted site runs with its original
weight (mask 1 and Δ-mask 1 there):

* ``all`` — every site at once;
* ``uniform_k_subset`` — per token, ``k ~ U{1..n_sites}`` and a uniformly random subset of ``k``
  sites (the VPD paper).

SPD's layerwise loss (one site per forward) is not a routing: the training recipe runs it as
its own loss (``coeff_layerwise``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
import torch

from tl_vpd._typing import Bool, Float
from tl_vpd.components import SiteComponents
from tl_vpd.distributed import Shard

__all__ = [
    "ablation_masks",
    "delta_masks",
    "masks_from_sources",
    "ones_masks",
    "rounded_masks",
    "sample_routing",
    "sample_sources",
    "stacked_ablation_masks",
    "zero_delta_sources",
    "zero_masks",
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
        raise ValueError(f"routing {kind!r}: use 'all' or 'uniform_k_subset'")
    n = len(sites)
    glead = (lead[0] * shard.world, *lead[1:])
    ranks = torch.rand((*glead, n), generator=generator).argsort(-1).argsort(-1)
    k = torch.randint(1, n + 1, (*glead, 1), generator=generator)
    routed = shard.take(ranks < k).to(device)
    return {s: routed[..., i] for i, s in enumerate(sites)}


def zero_delta_sources(sources: Mapping[str, Float[torch.Tensor, "*lead C1"]]
                       ) -> dict[str, Float[torch.Tensor, "*lead C1"]]:
    """The same sources with Δ's entry (the last) set to 0: SPD, which has no Δ component."""
    return {k: torch.cat([v[..., :-1], torch.zeros_like(v[..., -1:])], -1)
            for k, v in sources.items()}


# ----------------------------------------------------------------------------- fixed masks
def ones_masks(ci: Mapping[str, Float[torch.Tensor, "*lead C"]]) -> dict[str, torch.Tensor]:
    """Masks of 1 shaped (and typed) like each site's causal importances: every
    subcomponent on, the unmasked decomposition."""
    return {k: torch.ones_like(g) for k, g in ci.items()}


def zero_masks(ci: Mapping[str, Float[torch.Tensor, "*lead C"]]) -> dict[str, torch.Tensor]:
    """Masks of 0 shaped like each site's causal importances: every subcomponent off."""
    return {k: torch.zeros_like(g) for k, g in ci.items()}


def rounded_masks(ci: Mapping[str, Float[torch.Tensor, "*lead C"]], threshold: float
                  ) -> dict[str, torch.Tensor]:
    """Binary masks: 1 where the causal importance exceeds ``threshold``, else 0."""
    return {k: (g > threshold).to(g.dtype) for k, g in ci.items()}


def delta_masks(ci: Mapping[str, Float[torch.Tensor, "*lead C"]], value: float
                ) -> dict[str, torch.Tensor]:
    """Δ masks ``[*lead]`` (the CI's leading shape) filled with ``value``: 1 keeps Δ, 0 removes
    it."""
    return {k: g.new_full(g.shape[:-1], value) for k, g in ci.items()}


def ablation_masks(
    components: Mapping[str, SiteComponents],
    selection: Mapping[str, Mapping[int, float | torch.Tensor]],
    lead: Sequence[int],
) -> dict[str, torch.Tensor]:
    """Masks that keep everything but the selected subcomponents.

    Arguments:
        components: ``dec.components`` (gives each site's C, dtype and device).
        selection: ``{site: {c: alpha}}``: subcomponent ``c`` of ``site`` gets mask ``alpha``
            (``0.0`` removes it; a tensor broadcastable to ``lead``, e.g. its CI ``g[..., c]``,
            ablates it per token). Sites not in ``selection`` are not masked (keep ``W``).
        lead: the leading shape of the masks, e.g. ``(batch, pos)``.

    Returns:
        ``{site: [*lead, C]}`` for the selected sites: 1 everywhere else.
    """
    masks = {}
    for site, chosen in selection.items():
        comp = components[site]
        m = torch.ones(*lead, comp.C, dtype=comp.W.dtype, device=comp.W.device)
        for c, alpha in chosen.items():
            m[..., c] = alpha
        masks[site] = m
    return masks


def stacked_ablation_masks(
    components: Mapping[str, SiteComponents],
    candidates: Sequence[tuple[str, int]],
    lead: Sequence[int],
) -> dict[str, torch.Tensor]:
    """Masks for testing many single ablations in one batched forward.

    Candidate ``j`` (``(site, c)``) is ablated (mask 0) in batch rows ``j·b … (j+1)·b − 1``,
    ``b = lead[0]``: run the model on the inputs repeated ``len(candidates)`` times.

    Arguments:
        components: ``dec.components``.
        candidates: ``(site, c)`` pairs.
        lead: the leading shape of one copy of the inputs, ``(b, *rest)``.

    Returns:
        ``{site: [len(candidates)·b, *rest, C]}`` for the sites that have a candidate.
    """
    b, rest, k = lead[0], tuple(lead[1:]), len(candidates)
    masks: dict[str, torch.Tensor] = {}
    for j, (site, c) in enumerate(candidates):
        if site not in masks:
            comp = components[site]
            masks[site] = torch.ones(k * b, *rest, comp.C, dtype=comp.W.dtype,
                                     device=comp.W.device)
        masks[site][j * b: (j + 1) * b, ..., c] = 0.0
    return masks
