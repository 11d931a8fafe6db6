"""The evaluation's adversary: fresh PGD with one source per subcomponent shared across every
attacked token, over several batches and several random restarts.

The VPD paper (Section "Adversarial reconstruction loss", evaluation) attacks a decomposition
with sources ``r_c`` shared across the whole batch, so the attack must find *systematic* flaws
rather than tune a mask to one datapoint; it reports the KL after 20-320 steps of PGD on 128 × 512
tokens. Here one set of sources (``[C + 1]`` per site, Δ last) is shared across all attacked
batches: every step ascends the gradient of the token-weighted mean loss over all of them, each
batch's graph built and freed in turn (gradients are summed batch by batch), so memory is one
batch's graph whatever the number of tokens. Each step count is a separate attack with step size
``2 / n`` (the paper's heuristic ``n · step ≈ 2``), run from ``restarts`` random starts; the
report gives the mean and the max over restarts.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, NamedTuple

import torch
from tqdm.auto import tqdm

from tl_vpd.adversary import init_sources
from tl_vpd.losses import recon_loss
from tl_vpd.precision import autocast_context, use_bf16
from tl_vpd.masking import delta_masks, masks_from_sources, sample_sources, zero_masks

if TYPE_CHECKING:
    from tl_vpd.decomposition import Decomposition

__all__ = ["AttackBatch", "pgd_ladder", "reference_losses", "shared_pgd"]


class AttackBatch(NamedTuple):
    """One attacked batch: its inputs, the target's output on them, and their (detached)
    causal importances ``{site: [*lead, C]}``."""

    batch: torch.Tensor
    target: torch.Tensor
    ci: Mapping[str, torch.Tensor]


def _weights(attacked: Sequence[AttackBatch]) -> list[float]:
    """Each batch's share of the attacked tokens (examples for toy models)."""
    sizes = [next(iter(a.ci.values())).shape[:-1].numel() for a in attacked]
    return [n / sum(sizes) for n in sizes]


def _loss(dec: Decomposition, a: AttackBatch, sources, kind: str) -> torch.Tensor:
    masks, dmasks = masks_from_sources(a.ci, sources)
    return recon_loss(a.target, dec.run_masked(a.batch, masks, dmasks), kind)


def shared_pgd(dec: Decomposition, attacked: Sequence[AttackBatch], n_steps: int, *,
               step_size: float | None = None, kind: str = "kl", init: str = "random",
               generator: torch.Generator | None = None, bar=None, autocast: str = "auto") -> float:
    """The mean reconstruction loss over ``attacked`` under one PGD attack whose sources are
    shared across all of its tokens.

    Arguments:
        dec: the decomposition.
        attacked: the batches attacked together.
        n_steps: sign-gradient ascent steps ``s ← clamp(s + step · sign(∇_s L), 0, 1)``.
        step_size: defaults to ``2 / n_steps`` (VPD paper: ``n · step ≈ 2``).
        kind: ``"kl"`` or ``"mse"``.
        init: the sources' start, ``random`` (U(0, 1)), ``ones`` or ``zeros``.
        generator: draws a random start.
        bar: a progress bar advanced once per step (optional).
        autocast: precision of the search's forward passes (:mod:`tl_vpd.precision`; ``"auto"``:
            bf16 for language models where native). Only the gradient's sign steers the ascent;
            the reported loss at the final sources is always computed in the model's precision.

    Returns:
        The token-weighted mean loss over ``attacked`` at the final sources.
    """
    step_size = 2.0 / max(n_steps, 1) if step_size is None else step_size
    weights = _weights(attacked)
    sources = init_sources(attacked[0].ci, "shared", init, generator)
    device = attacked[0].target.device
    amp = use_bf16(autocast, device, language_model=kind == "kl")
    for _ in range(n_steps):
        leaves = {k: v.detach().requires_grad_(True) for k, v in sources.items()}
        grads = {k: torch.zeros_like(v) for k, v in leaves.items()}
        with torch.enable_grad():
            for w, a in zip(weights, attacked):  # one batch's graph at a time
                with autocast_context(device, amp):
                    loss = w * _loss(dec, a, leaves, kind)
                step_grads = torch.autograd.grad(loss, list(leaves.values()))
                for k, g in zip(leaves, step_grads):
                    grads[k] += g
        with torch.no_grad():
            sources = {k: (v + step_size * grads[k].sign()).clamp_(0.0, 1.0)
                       for k, v in leaves.items()}
        if bar is not None:
            bar.update(1)
    with torch.no_grad():
        return sum(w * _loss(dec, a, sources, kind).item() for w, a in zip(weights, attacked))


def pgd_ladder(dec: Decomposition, attacked: Sequence[AttackBatch], steps: Sequence[int], *,
               restarts: int = 3, kind: str = "kl", generator: torch.Generator | None = None,
               progress: bool = False, autocast: str = "auto") -> list[dict]:
    """:func:`shared_pgd` for each step count, from ``restarts`` random starts each.

    Arguments:
        dec: the decomposition.
        attacked: the batches attacked together.
        steps: the step counts (each its own attack, step size ``2 / n``).
        restarts: random starts per step count.
        kind: ``"kl"`` or ``"mse"``: also the key of the loss in the rows.
        generator: draws the random starts.
        progress: show a progress bar over all attack steps.
        autocast: the search's precision (see :func:`shared_pgd`).

    Returns:
        One row per step count: ``pgd_steps``, ``{kind}`` (mean over restarts),
        ``{kind}_max``, ``{kind}_min`` and ``{kind}_restarts`` (every restart's loss).
    """
    if restarts < 1:
        raise ValueError(f"pgd restarts must be >= 1, got {restarts}")
    bar = tqdm(total=restarts * sum(int(n) for n in steps), desc="PGD", disable=not progress,
               dynamic_ncols=True)
    rows = []
    try:
        for n in steps:
            found = [shared_pgd(dec, attacked, int(n), kind=kind, generator=generator, bar=bar,
                                autocast=autocast) for _ in range(restarts)]
            rows.append({"pgd_steps": int(n), kind: sum(found) / len(found),
                         f"{kind}_max": max(found), f"{kind}_min": min(found),
                         f"{kind}_restarts": found})
    finally:
        bar.close()
    return rows


@torch.no_grad()
def reference_losses(dec: Decomposition, attacked: Sequence[AttackBatch], *, kind: str = "kl",
                     generator: torch.Generator | None = None) -> dict[str, float]:
    """The references of the attack on the same tokens: the loss under stochastic masks and with
    every decomposed matrix zero-ablated (Δ removed in both, as in the reconstruction table).

    Arguments:
        dec: the decomposition.
        attacked: the attacked batches.
        kind: ``"kl"`` or ``"mse"``.
        generator: draws the stochastic sources.

    Returns:
        ``{"stochastic": loss, "zero-ablated": loss}``, token-weighted means over ``attacked``.
    """
    out = {"stochastic": 0.0, "zero-ablated": 0.0}
    for w, a in zip(_weights(attacked), attacked):
        off = delta_masks(a.ci, 0.0)
        stochastic = masks_from_sources(a.ci, sample_sources(a.ci, generator))[0]
        for name, masks in (("stochastic", stochastic), ("zero-ablated", zero_masks(a.ci))):
            out[name] += w * recon_loss(a.target, dec.run_masked(a.batch, masks, off), kind).item()
    return out
