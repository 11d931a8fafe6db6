"""The per-step loss recipe: which losses a training step computes, and how each samples masks.

:func:`step_losses` yields ``(name, coeff, loss)`` one loss at a time, in a fixed order
(faithfulness, minimality, stochastic × ``n_mask_samples``, layerwise, adversarial). The
trainer backpropagates ``coeff · loss`` before asking for the next one, so each loss's graph is
freed before the next forward pass; the CI pre-activations ``pre`` are a leaf (cut from the CI
network by the trainer), each loss builds its own leaky views of them, and the CI network gets
one backward at the end with the accumulated gradient.

Adding a loss: a coefficient field in :class:`~tl_vpd.VPDConfig`, a formula in
:mod:`tl_vpd.losses`, and one ``yield`` here; the trainer logs it under its name.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

import torch

from tl_vpd._typing import Float
from tl_vpd.adversary import PersistentSources, fresh_pgd, init_sources
from tl_vpd.config import VPDConfig
from tl_vpd.decomposition import Decomposition
from tl_vpd.distributed import Shard
from tl_vpd.fused import firing_frequency, routed_masks
from tl_vpd.layerwise import stacked_layerwise_output
from tl_vpd.losses import (faithfulness_loss, minimality_from_frequencies, prepare_target,
                            recon_loss)
from tl_vpd.masking import sample_routing, sample_sources, zero_delta_sources

__all__ = ["step_losses"]

CI = dict[str, Float[torch.Tensor, "*lead C"]]


def step_losses(
    cfg: VPDConfig,
    dec: Decomposition,
    batch: torch.Tensor,
    target: torch.Tensor,
    pre: Mapping[str, Float[torch.Tensor, "*lead C"]],
    *,
    p: float,
    recon_kind: str,
    generator: torch.Generator,
    shard: Shard,
    adversary: PersistentSources | None,
    amp: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> Iterator[tuple[str, float, torch.Tensor]]:
    """The losses of one training step, each with its coefficient (VPD paper; SPD with the
    ``spd`` preset's coefficients).

    Arguments:
        cfg: the run's config (coefficients, routing, adversary settings).
        dec: the decomposition being trained.
        batch: this rank's batch.
        target: the target model's output on ``batch``.
        pre: CI pre-activations ``{site: [*lead, C]}``, a leaf that requires grad.
        p: this step's minimality exponent.
        recon_kind: ``"kl"`` or ``"mse"``.
        generator: the run's CPU generator; the draws happen in the order of the losses, so a
            resumed run draws exactly what an uninterrupted one does.
        shard: the data-parallel group (draws are made at the global batch size).
        adversary: the persistent sources when ``cfg.adversary == "persistent"``.
        amp: a fresh autocast context for each masked forward (the backward runs outside it).

    Yields:
        ``(name, coeff, loss)``; a loss drawn several times per step (stochastic samples,
        layerwise sites) is yielded once per draw with its share of the coefficient, except
        the layerwise loss of a small model, yielded once for all sites
        (:mod:`tl_vpd.layerwise`).
    """
    alpha = dec.spec.leaky_alpha
    # One log_softmax of the target for every pass's KL (the raw one for stacked toys).
    raw_target, target = target, prepare_target(target, recon_kind)
    device = next(iter(dec.components.values())).U.device
    lead = next(iter(pre.values())).shape[:-1]
    with amp():  # masks come in the dtype the masked forward computes in (bf16 under autocast)
        mask_dtype = (torch.get_autocast_dtype(device.type)
                      if torch.is_autocast_enabled(device.type) else None)

    def masks(src: Mapping[str, torch.Tensor], routes, sites=None, frozen: bool = False):
        """Masks from the CI (live, or ``frozen``) and sources; one fused node per site, so each
        loss's backward frees only its own graph (:mod:`tl_vpd.fused`)."""
        ms, dms = {}, {}
        for k in sites or pre:
            z = pre[k].detach() if frozen else pre[k]
            ms[k], dms[k] = routed_masks(z, src[k], None if routes is None else routes[k], alpha,
                                          cfg.compile, mask_dtype)
        return ms, dms

    def sources(sites=None) -> dict[str, torch.Tensor]:
        drawn = sample_sources({k: pre[k] for k in sites or pre}, generator, shard)
        return drawn if cfg.use_delta_component else zero_delta_sources(drawn)

    def routing(kind: str = cfg.routing):
        return sample_routing(dec.sites, lead, kind, generator, device=device, shard=shard)

    def recon(ms, dms) -> torch.Tensor:
        with amp():
            out = dec.run_masked(batch, ms, dms)
        return recon_loss(target, out, recon_kind)

    if cfg.coeff_faithfulness > 0:
        yield ("faithfulness", cfg.coeff_faithfulness,
               faithfulness_loss([c.delta for c in dec.components.values()]))
    if cfg.coeff_minimality > 0:
        freqs = {k: firing_frequency(z, p, cfg.importance_eps, alpha, cfg.compile)
                 for k, z in pre.items()}
        yield ("minimality", cfg.coeff_minimality,
               minimality_from_frequencies(freqs, cfg.freq_beta, cfg.freq_ref_tokens,
                                           shard.global_mean_value if shard.enabled else None))
    if cfg.coeff_stochastic > 0:
        for _ in range(cfg.n_mask_samples):
            src = sources()
            yield ("stochastic", cfg.coeff_stochastic / cfg.n_mask_samples,
                   recon(*masks(src, routing())))
    if cfg.coeff_layerwise > 0:  # SPD: one forward per site, that site alone masked
        if dec.backend.language_model:  # one pass per site: the stacked batch would be n× wider
            for site in dec.sites:
                yield ("layerwise", cfg.coeff_layerwise / len(dec.sites),
                       recon(*masks(sources([site]), None, [site])))
        else:  # small models: every site's pass in one stacked forward (the same draws)
            ms, dms = {}, {}
            for site in dec.sites:
                m, dm = masks(sources([site]), None, [site])
                ms.update(m)
                dms.update(dm)
            with amp():
                out = stacked_layerwise_output(dec, batch, ms, dms)
            stacked_target = raw_target.repeat(len(dec.sites),
                                               *([1] * (raw_target.dim() - 1)))
            yield ("layerwise", cfg.coeff_layerwise, recon_loss(stacked_target, out, recon_kind))
    if cfg.adversary != "none":
        # "same": routed like the stochastic loss (VPD paper); "all": every site masked, as the
        # evaluation's PGD attacks (a deviation from the paper), in the ascent and the outer pass.
        kind = cfg.routing if cfg.adversarial_routing == "same" else cfg.adversarial_routing
        yield ("adversarial", cfg.coeff_adversarial,
               _adversarial_loss(cfg, pre, masks, recon, routing(kind), generator=generator,
                                 shard=shard, adversary=adversary))


def _adversarial_loss(cfg: VPDConfig, pre: CI, masks, recon, routes, *,
                      generator: torch.Generator, shard: Shard,
                      adversary: PersistentSources | None) -> torch.Tensor:
    """Search sources that maximise the reconstruction loss (CI frozen), then the loss with
    them as masks (CI live): fresh PGD, or persistent sources (VPD paper)."""
    frozen_ci = {k: v.detach() for k, v in pre.items()}  # gives the sources' shapes

    def adv_loss(src, frozen=True):
        src = src if cfg.use_delta_component else zero_delta_sources(src)
        return recon(*masks(src, routes, frozen=frozen))

    if cfg.adversary == "fresh":
        start = init_sources(frozen_ci, cfg.pgd_scope, cfg.pgd_init, generator, shard)
        found = fresh_pgd(adv_loss, start, cfg.pgd_steps, cfg.pgd_step_size, shard,
                          shared=cfg.pgd_scope == "shared")
    else:
        adversary.warmup(adv_loss, frozen_ci, cfg.ppgd_inner_steps, generator)
        # The outer pass: its backward trains U, V, CI and leaves .grad on the sources for
        # one more ascent step after the optimiser step.
        found = adversary.current(frozen_ci, generator)
    return adv_loss(found, frozen=False)
