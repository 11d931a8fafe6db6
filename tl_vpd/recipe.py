"""The per-step loss recipe: which losses a training step computes, and how each samples masks.

:func:`step_losses` yields ``(name, coeff, loss)`` one loss at a time, in a fixed order
(faithfulness, minimality, stochastic × ``n_mask_samples``, layerwise × sites, adversarial). The
trainer backpropagates ``coeff · loss`` before asking for the next one, so each loss's graph is
freed before the next forward pass; the CI pre-activations ``pre`` are a leaf (cut from the CI
network by the trainer), each loss builds its own leaky views of them, and the CI network gets
one backward at the end with the accumulated gradient.

Adding a loss: a coefficient field in :class:`~tl_vpd.VPDConfig`, a formula in
:mod:`tl_vpd.losses`, and one ``yield`` here; the trainer logs it under its name.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping

import torch

from tl_vpd._typing import Float
from tl_vpd.adversary import PersistentSources, fresh_pgd, init_sources
from tl_vpd.config import VPDConfig
from tl_vpd.decomposition import Decomposition
from tl_vpd.distributed import Shard
from tl_vpd.importance import lower_leaky_sigmoid, upper_leaky_sigmoid
from tl_vpd.losses import faithfulness_loss, minimality_loss, recon_loss
from tl_vpd.masking import masks_from_sources, sample_routing, sample_sources, zero_delta_sources

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

    Yields:
        ``(name, coeff, loss)``; a loss drawn several times per step (stochastic samples,
        layerwise sites) is yielded once per draw with its share of the coefficient.
    """
    alpha = dec.spec.leaky_alpha
    device = next(iter(dec.components.values())).U.device
    lead = next(iter(pre.values())).shape[:-1]

    def lower_view() -> CI:  # a fresh node per loss, so each backward frees only its own graph
        return {k: lower_leaky_sigmoid(v, alpha) for k, v in pre.items()}

    def sources(ci: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        drawn = sample_sources(ci, generator, shard)
        return drawn if cfg.use_delta_component else zero_delta_sources(drawn)

    def routing():
        return sample_routing(dec.sites, lead, cfg.routing, generator, device=device, shard=shard)

    upper = {k: upper_leaky_sigmoid(v, alpha) for k, v in pre.items()}
    if cfg.coeff_faithfulness > 0:
        yield ("faithfulness", cfg.coeff_faithfulness,
               faithfulness_loss([c.delta for c in dec.components.values()]))
    if cfg.coeff_minimality > 0:
        yield ("minimality", cfg.coeff_minimality,
               minimality_loss(upper, p, cfg.importance_eps, cfg.freq_beta, cfg.freq_ref_tokens,
                               global_mean=shard.global_mean_value if shard.enabled else None))
    if cfg.coeff_stochastic > 0:
        for _ in range(cfg.n_mask_samples):
            lower = lower_view()
            src = sources(lower)
            masks, dmasks = masks_from_sources(lower, src, routing())
            yield ("stochastic", cfg.coeff_stochastic / cfg.n_mask_samples,
                   recon_loss(target, dec.run_masked(batch, masks, dmasks), recon_kind))
    if cfg.coeff_layerwise > 0:  # SPD: one forward per site, that site alone masked
        for site in dec.sites:
            lower = {site: lower_view()[site]}
            masks, dmasks = masks_from_sources(lower, sources(lower))
            yield ("layerwise", cfg.coeff_layerwise / len(dec.sites),
                   recon_loss(target, dec.run_masked(batch, masks, dmasks), recon_kind))
    if cfg.adversary != "none":
        yield ("adversarial", cfg.coeff_adversarial,
               _adversarial_loss(cfg, dec, batch, target, lower_view(), routing(),
                                 recon_kind=recon_kind, generator=generator, shard=shard,
                                 adversary=adversary))


def _adversarial_loss(cfg: VPDConfig, dec: Decomposition, batch, target, lower: CI, routing,
                      *, recon_kind: str, generator: torch.Generator, shard: Shard,
                      adversary: PersistentSources | None) -> torch.Tensor:
    """Search sources that maximise the reconstruction loss (CI frozen), then the loss with
    them as masks (CI live): fresh PGD, or persistent sources (VPD paper)."""
    frozen_ci = {k: v.detach() for k, v in lower.items()}

    def adv_loss(src, ci=frozen_ci):
        src = src if cfg.use_delta_component else zero_delta_sources(src)
        masks, dmasks = masks_from_sources(ci, src, routing)
        return recon_loss(target, dec.run_masked(batch, masks, dmasks), recon_kind)

    if cfg.adversary == "fresh":
        start = init_sources(frozen_ci, cfg.pgd_scope, cfg.pgd_init, generator, shard)
        found = fresh_pgd(adv_loss, start, cfg.pgd_steps, cfg.pgd_step_size, shard,
                          shared=cfg.pgd_scope == "shared")
    else:
        adversary.warmup(adv_loss, frozen_ci, cfg.ppgd_inner_steps, generator)
        # The outer pass: its backward trains U, V, CI and leaves .grad on the sources for
        # one more ascent step after the optimiser step.
        found = adversary.current(frozen_ci, generator)
    return adv_loss(found, ci=lower)
