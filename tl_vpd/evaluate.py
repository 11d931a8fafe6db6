"""Evaluation of a decomposition: L0, reconstruction under masking modes, adversarial KL.

:func:`evaluate` measures what the VPD paper reports for its language model (L0, CE/KL under
masking, adversarial KL) and returns a :class:`~tl_vpd.report.EvalReport` (rendering and JSON
live there); :func:`quick_eval` is what the training loop logs every ``eval_every`` steps.
The adversary is :mod:`tl_vpd.eval_pgd` (sources shared across every attacked token, several
batches and random restarts), the per-site CI statistics :mod:`tl_vpd.ci_stats`.

Masking modes of the reconstruction table (Δ is excluded — its mask is 0 — in every mode but the
last, as in the paper):

* ``target`` — the model itself;
* ``unmasked`` — every mask 1, so the weights are ``U V``;
* ``stochastic`` — ``m = g + (1 − g) r`` with ``r ~ U(0, 1)``;
* ``CI as mask`` — ``m = g``;
* ``rounded CI > t`` — ``m = 1`` where ``g > t``, else 0, for ``t`` in 0, 0.1, 0.5;
* ``zero-ablated`` — every mask 0: every decomposed matrix removed;
* ``unmasked, Δ on`` — masks 1 and Δ mask 1, i.e. ``U V + Δ = W``: must equal the target (a
  sanity check of the swap).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from tl_vpd._typing import Float
from tl_vpd.adversary import fresh_pgd, init_sources
from tl_vpd.allocator import keep_freed_memory
from tl_vpd.data_stream import DataStream
from tl_vpd.ci_stats import (CI_HIST_BINS, alive_count, ci_histogram, ci_histograms, ci_spectrum,
                             l0_tables)
from tl_vpd.eval_pgd import AttackBatch, pgd_ladder, reference_losses
from tl_vpd.losses import prepare_target, recon_loss
from tl_vpd.masking import (
    delta_masks,
    masks_from_sources,
    ones_masks,
    rounded_masks,
    sample_sources,
    zero_masks,
)
from tl_vpd.report import ALIVE_THRESHOLD, EvalReport

if TYPE_CHECKING:
    from tl_vpd.config import VPDConfig
    from tl_vpd.decomposition import Decomposition

__all__ = ["compute_recovered", "evaluate", "l0_per_site", "pgd_recon", "quick_eval"]

ROUNDING_THRESHOLDS = (0.0, 0.1, 0.5)  # VPD paper: rounded-CI masks
TARGET, UNMASKED, ZERO, DELTA_ON = "target", "unmasked", "zero-ablated", "unmasked, Δ on"


def l0_per_site(ci: Mapping[str, Float[torch.Tensor, "... C"]], threshold: float = 0.0
                ) -> dict[str, float]:
    """Mean number of subcomponents with ``g > threshold`` per token, per site."""
    return {k: (g > threshold).float().sum(-1).mean().item() for k, g in ci.items()}


def pgd_recon(dec: Decomposition, batch: torch.Tensor, target: Float[torch.Tensor, "..."],
              ci: Mapping[str, Float[torch.Tensor, "... C"]], n_steps: int,
              step_size: float | None = None, scope: str = "shared", kind: str = "kl",
              init: str = "random", generator: torch.Generator | None = None) -> float:
    """Reconstruction loss under a fresh PGD attack (sources shared across the batch by default,
    the VPD paper's evaluation adversary).

    Arguments:
        dec: the decomposition.
        batch: the input batch (tokens, or toy inputs).
        target: the target's output on ``batch``.
        ci: causal importances on ``batch`` (detached here).
        n_steps: PGD steps.
        step_size: defaults to ``2 / n_steps`` (the paper's heuristic ``n · lr ≈ 2``).
        scope, init: the sources' scope and initialisation (:func:`tl_vpd.adversary.init_sources`).
        kind: ``"kl"`` or ``"mse"`` reconstruction loss.
        generator: seeds a random initialisation.

    Returns:
        The loss under the attack's final sources.
    """
    step_size = 2.0 / max(n_steps, 1) if step_size is None else step_size
    ci = {k: v.detach() for k, v in ci.items()}
    target = prepare_target(target, kind)  # one log_softmax for all n_steps + 1 passes

    def loss_fn(sources):
        masks, dmasks = masks_from_sources(ci, sources)
        return recon_loss(target, dec.run_masked(batch, masks, dmasks), kind)

    with torch.enable_grad():
        sources = fresh_pgd(loss_fn, init_sources(ci, scope, init, generator), n_steps, step_size)
    with torch.no_grad():
        return loss_fn(sources).item()


def quick_eval(dec: Decomposition, data, cfg: VPDConfig, kind: str) -> dict[str, float]:
    """What the training loop logs every ``cfg.eval_every`` steps (as ``eval/<key>``), on
    ``cfg.eval_batches`` batches of ``data``.

    Arguments:
        dec: the decomposition.
        data: evaluation data (see :func:`evaluate`).
        cfg: its config (batches, batch size, sequence length, PGD steps, seed).
        kind: ``"kl"`` or ``"mse"``: the reconstruction loss.

    Returns:
        ``l0`` (subcomponents with CI > 0 per token, summed over sites), ``alive`` (summed over
        sites, as :func:`evaluate` counts them: :func:`tl_vpd.ci_stats.alive_count`),
        ``stochastic_<kind>`` (stochastic masks) and ``pgd_<kind>`` (a fresh
        ``cfg.eval_pgd_steps``-step PGD attack per batch, sources shared across the batch).
    """
    gen = torch.Generator().manual_seed(cfg.seed + 999)
    totals = {"l0": 0.0, f"stochastic_{kind}": 0.0, f"pgd_{kind}": 0.0}
    batches = _batches(dec, data, cfg.eval_batches, cfg.batch_size, cfg.seed + 12345,
                       seq_len=cfg.seq_len)
    ci_sum = {n: torch.zeros(c.C, dtype=torch.float64) for n, c in dec.components.items()}
    n_tokens = 0
    for batch in batches:
        with torch.no_grad():
            target, inputs = dec.run_target(batch)
            ci = dec.ci(inputs).lower
            totals["l0"] += sum(l0_per_site(ci).values())
            for n, g in ci.items():
                ci_sum[n] += g.flatten(0, -2).double().sum(0).cpu()
            n_tokens += next(iter(ci.values())).shape[:-1].numel()
            masks, dmasks = masks_from_sources(ci, sample_sources(ci, gen))
            out = dec.run_masked(batch, masks, dmasks)
            totals[f"stochastic_{kind}"] += recon_loss(target, out, kind).item()
        totals[f"pgd_{kind}"] += pgd_recon(dec, batch, target, ci, cfg.eval_pgd_steps, kind=kind,
                                           generator=gen)
    out = {k: v / len(batches) for k, v in totals.items()}
    out["alive"] = sum(alive_count(s, n_tokens) for s in ci_sum.values())
    return out


# ---------------------------------------------------------------------------------- measuring
def compute_recovered(ce: float, ce_target: float, curve: Sequence[Mapping] | None) -> float | None:
    """Fraction of the target's pretraining tokens at which its validation curve first reaches
    the CE of a masked model (linear interpolation between checkpoints).

    The curve's CE and ``ce`` are measured on different tokens, so the masked model's
    degradation ``ce − ce_target`` (both on the evaluation tokens) is placed on the curve
    relative to its final value. A CE never reached (better than the target's) counts as 1.

    Arguments:
        ce: CE of the masked model on the evaluation tokens.
        ce_target: CE of the target on the same tokens.
        curve: ``[{"step", "tokens_seen", "val_ce"}, ...]`` in training order, or ``None``.

    Returns:
        A fraction in ``[0, 1]``, or ``None`` without a curve.
    """
    if not curve:
        return None
    total = max(p["tokens_seen"] for p in curve)
    if total <= 0:
        return None
    level = curve[-1]["val_ce"] + (ce - ce_target)
    prev = None
    for p in curve:
        if p["val_ce"] <= level:
            if prev is None:
                return 0.0
            frac = (prev["val_ce"] - level) / (prev["val_ce"] - p["val_ce"])
            tokens = prev["tokens_seen"] + frac * (p["tokens_seen"] - prev["tokens_seen"])
            return min(1.0, max(0.0, tokens / total))
        prev = p
    return 1.0


def _mask_modes(ci: Mapping[str, torch.Tensor], generator: torch.Generator
                ) -> Iterator[tuple[str, dict, dict]]:
    """``(mode, masks, delta_masks)`` of every masking mode but the target."""
    off = delta_masks(ci, 0.0)
    ones = ones_masks(ci)
    yield UNMASKED, ones, off
    yield "stochastic", masks_from_sources(ci, sample_sources(ci, generator))[0], off
    yield "CI as mask", dict(ci), off
    for t in ROUNDING_THRESHOLDS:
        yield f"rounded CI > {t:g}", rounded_masks(ci, t), off
    yield ZERO, zero_masks(ci), off
    yield DELTA_ON, ones, delta_masks(ci, 1.0)


class _Sums:
    """Running sums of one masking mode's metrics over batches."""

    def __init__(self):
        self.values: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, key: str, total: float, count: int) -> None:
        self.values[key] = self.values.get(key, 0.0) + total
        self.counts[key] = self.counts.get(key, 0) + count

    def mean(self, key: str) -> float:
        return self.values[key] / self.counts[key]


def _measure(metric: str, batch, target: torch.Tensor, out: torch.Tensor, sums: _Sums) -> None:
    if metric == "mse":
        sums.add("mse", (out.double() - target.double()).pow(2).sum().item(), target.numel())
        return
    logits = out.double()
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1), batch[:, 1:].flatten().to(logits.device),
                         reduction="sum")
    sums.add("ce", ce.item(), batch[:, 1:].numel())
    kl = F.kl_div(F.log_softmax(logits, -1), F.log_softmax(target.double(), -1),
                  reduction="none", log_target=True).sum(-1)
    sums.add("kl", kl.sum().item(), kl.numel())


def _open_stream(dec: Decomposition, data, batch_size: int, seed: int,
                 seq_len: int | None = None) -> tuple[DataStream, int | None]:
    """An evaluation stream over ``data`` (tokens cropped to ``seq_len``, default the model's
    context), validated like training data, and the most batches it holds (``None``: no limit)."""
    if torch.is_tensor(data):
        batch_size = min(batch_size, data.shape[0])
    stream = DataStream.for_model(data, dec.model, batch_size, seq_len, seed)
    cap = None if stream.tokens is None else stream.tokens.shape[0] // batch_size
    return stream, cap


def _batches(dec: Decomposition, data, n_batches: int, batch_size: int, seed: int,
             seq_len: int | None = None) -> list:
    """Up to ``n_batches`` evaluation batches from ``data`` (see :func:`_open_stream`)."""
    stream, cap = _open_stream(dec, data, batch_size, seed, seq_len)
    return [stream.next() for _ in range(n_batches if cap is None else min(n_batches, cap))]


def _is_lm(dec) -> bool:
    return dec.backend.language_model


def evaluate(
    dec: Decomposition,
    data,
    *,
    n_batches: int = 8,
    batch_size: int | None = None,
    pgd_steps: Sequence[int] = (5, 10, 20, 40, 80),
    pgd_batches: int | None = None,
    pgd_tokens: int | None = 8192,
    pgd_restarts: int = 3,
    target_curve: Sequence[Mapping] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> EvalReport:
    """Evaluate a decomposition as the VPD paper does.

    Arguments:
        dec: the :class:`~tl_vpd.Decomposition`.
        data: evaluation data, in any form :func:`tl_vpd.decompose` accepts (e.g. the validation
            token blocks ``[n, seq]``; sequences longer than the model's ``n_ctx`` are cropped).
        n_batches: batches of the reconstruction, L0 and CI tables (fewer if ``data`` is a
            smaller tensor).
        batch_size: examples per batch (default: the training config's, else 16).
        pgd_steps: step counts of the fresh-PGD attacks (step size ``2/n`` each; the VPD paper
            reports 20 to 320).
        pgd_batches: attack this many batches together (the first ones; more are drawn from
            ``data`` beyond ``n_batches`` when needed); overrides ``pgd_tokens``.
        pgd_tokens: attack at least this many tokens (toy models: examples) together, in
            whole batches (default 8192; the VPD paper attacks 65,536); ``None`` with
            ``pgd_batches=None`` attacks the ``n_batches`` batches.
        pgd_restarts: random starts of each attack; the report gives their mean and max.
        target_curve: the target's training curve ``[{"step", "tokens_seen", "val_ce"}, ...]``
            (:func:`tl_vpd.target.load_target` returns it) for "pretraining compute recovered".
        seed: seeds the batch order, the stochastic masks and the PGD starts.
        progress: show progress bars.

    Returns:
        The :class:`~tl_vpd.report.EvalReport` (with ``dec.history``: its training curves).
    """
    if n_batches < 1:
        raise ValueError(f"n_batches must be >= 1, got {n_batches}")
    if any(int(n) < 1 for n in pgd_steps):
        raise ValueError(f"pgd_steps must be positive step counts, got {list(pgd_steps)}")
    if pgd_restarts < 1:
        raise ValueError(f"pgd_restarts must be >= 1, got {pgd_restarts}")
    keep_freed_memory(next(iter(dec.components.values())).U.device)  # warm pages (allocator.py)
    cfg = getattr(dec, "config", None)
    batch_size = batch_size or getattr(cfg, "batch_size", 16)
    metric = "ce" if _is_lm(dec) else "mse"
    recon_kind = "kl" if metric == "ce" else "mse"
    stream, cap = _open_stream(dec, data, batch_size, seed)
    batches = [stream.next() for _ in range(n_batches if cap is None else min(n_batches, cap))]
    n_pgd = _n_attacked(batches[0], metric, len(batches), pgd_batches, pgd_tokens)
    if n_pgd > len(batches):  # the same stream: the recon batches are unchanged
        batches += [stream.next() for _ in range(n_pgd - len(batches) if cap is None
                                                 else min(n_pgd, cap) - len(batches))]
    n_recon, n_pgd = min(n_batches, len(batches)), min(n_pgd, len(batches))
    gen = torch.Generator().manual_seed(seed + 1)
    pgd_gen = torch.Generator().manual_seed(seed + 2)  # apart: the tables draw as they always did

    sums = {TARGET: _Sums()}
    ci_sum = {n: torch.zeros(c.C, dtype=torch.float64) for n, c in dec.components.items()}
    fired = {n: torch.zeros(c.C, dtype=torch.bool) for n, c in dec.components.items()}
    hist = {n: torch.zeros(CI_HIST_BINS + 1, dtype=torch.float64) for n in dec.sites}
    l0_sum = dict.fromkeys(dec.sites, 0.0)
    attacked: list[AttackBatch] = []
    n_tokens = 0
    bar = tqdm(batches, desc="evaluate", disable=not progress, dynamic_ncols=True)
    for i, batch in enumerate(bar):
        with torch.no_grad():
            target, inputs = dec.run_target(batch)
            ci = dec.ci(inputs).lower
            if i < n_pgd:
                attacked.append(AttackBatch(batch, target, {k: v.detach() for k, v in ci.items()}))
            if i >= n_recon:
                continue
            _measure(metric, batch, target, target, sums[TARGET])
            for mode, masks, dmasks in _mask_modes(ci, gen):
                _measure(metric, batch, target, dec.run_masked(batch, masks, dmasks),
                         sums.setdefault(mode, _Sums()))
            for n, g in ci.items():
                flat = g.flatten(0, -2).double().cpu()
                ci_sum[n] += flat.sum(0)
                fired[n] |= (flat > 0).any(0)
                l0_sum[n] += (flat > 0).sum().item()
                hist[n] += ci_histogram(flat)
            n_tokens += next(iter(ci.values())).shape[:-1].numel()

    if metric == "mse" and len(attacked) > 1:  # toy batches are tiny: attack them as one
        attacked = [AttackBatch(*(torch.cat([getattr(a, f) for a in attacked])
                                  for f in ("batch", "target")),
                                {k: torch.cat([a.ci[k] for a in attacked]) for k in dec.sites})]
    adversarial, reference = _attack(dec, attacked, n_pgd, pgd_steps, pgd_restarts, recon_kind,
                                     pgd_gen, progress)
    recon = _recon_rows(metric, sums, target_curve)
    sites, layers, total = l0_tables(dec, ci_sum, fired, l0_sum, n_tokens)
    first = batches[0]
    settings = {"n_batches": n_recon, "batch_size": int(first.shape[0]),
                "seq_len": int(first.shape[1]) if metric == "ce" else None,
                "pgd_batches": n_pgd, "pgd_tokens": reference.get("n_tokens", 0),
                "pgd_restarts": pgd_restarts, "pgd_scope": "shared across all attacked tokens",
                "seed": seed, "rounding_thresholds": list(ROUNDING_THRESHOLDS),
                "alive_threshold": ALIVE_THRESHOLD}
    return EvalReport(metric=metric, recon=recon, sites=sites, layers=layers, total=total,
                      adversarial=adversarial, zero_ablated=sums[ZERO].mean(recon_kind),
                      n_tokens=n_tokens, settings=settings, adversarial_reference=reference,
                      ci_spectrum=ci_spectrum(ci_sum, n_tokens),
                      ci_histograms=ci_histograms(hist), history=list(dec.history))


def _n_attacked(first, metric: str, n_recon: int, pgd_batches: int | None,
                pgd_tokens: int | None) -> int:
    """How many batches the PGD attack takes: ``pgd_batches``, else enough for ``pgd_tokens``,
    else the reconstruction batches."""
    if pgd_batches is not None:
        if pgd_batches < 0:
            raise ValueError(f"pgd_batches must be >= 0, got {pgd_batches}")
        return pgd_batches
    if pgd_tokens is None:
        return n_recon
    if pgd_tokens < 1:
        raise ValueError(f"pgd_tokens must be >= 1 (or None), got {pgd_tokens}")
    per_batch = first.numel() if metric == "ce" else first.shape[0]
    return math.ceil(pgd_tokens / per_batch)


def _attack(dec, attacked, n_batches, pgd_steps, restarts, kind, generator, progress):
    """The PGD rows (with their ratios to the stochastic and zero-ablated losses on the same
    tokens) and those references; nothing without attacked batches or step counts."""
    if not attacked or not pgd_steps:
        return [], {}
    reference = reference_losses(dec, attacked, kind=kind, generator=generator)
    reference.update(n_batches=n_batches, n_tokens=sum(
        next(iter(a.ci.values())).shape[:-1].numel() for a in attacked))
    rows = pgd_ladder(dec, attacked, pgd_steps, restarts=restarts, kind=kind,
                      generator=generator, progress=progress)
    for r in rows:
        for ref, name in (("stochastic", "stochastic"), ("zero-ablated", "zero")):
            d = reference[ref]
            r[f"per_{name}"] = r[kind] / d if d > 0 else None
            r[f"per_{name}_max"] = r[f"{kind}_max"] / d if d > 0 else None
    return rows, reference


def _recon_rows(metric: str, sums: dict[str, _Sums], curve) -> list[dict]:
    if metric == "mse":
        zero = sums[ZERO].mean("mse")
        return [{"mode": m, "mse": s.mean("mse"),
                 "mse_recovered": 1 - s.mean("mse") / zero if zero > 0 else None}
                for m, s in sums.items()]
    ce_t, ce_0 = sums[TARGET].mean("ce"), sums[ZERO].mean("ce")
    rows = []
    for mode, s in sums.items():
        ce = s.mean("ce")
        rows.append({"mode": mode, "ce": ce, "kl": s.mean("kl"),
                     "ce_recovered": 1 - (ce - ce_t) / (ce_0 - ce_t) if ce_0 != ce_t else None,
                     "compute_recovered": compute_recovered(ce, ce_t, curve)})
    return rows
