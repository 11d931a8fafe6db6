"""Training curves of a decomposition: :func:`plot_training_curves` draws ``dec.history``.

A history is the list of rows :func:`tl_vpd.decompose` logs: every ``log_every`` steps the
training losses (``stochastic``, ``adversarial``, ``faithfulness``, ``minimality``, ...), ``l0``
of the step's batch, ``lr`` and ``p``; every ``eval_every`` steps (with ``eval_data``) also the
:func:`tl_vpd.evaluate.quick_eval` keys :data:`EVAL_KEYS` on held-out batches. These are the
metrics the VPD paper's training recipe (appendix "A training recipe for VPD", evaluation
metrics) tracks: PGD reconstruction with fresh sources shared across the batch, L0 per data
point, stochastic reconstruction; and the alive count of its per-layer table (mean CI > 1e-6).
"""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Mapping, Sequence

from tl_vpd.report import ALIVE_THRESHOLD

__all__ = ["EVAL_KEYS", "LEGACY_EVAL_KEYS", "PANEL_TITLES", "figure_png", "plot_training_curves"]

# quick_eval's history keys (``<kind>``: ``kl`` for language models, ``mse`` for toy models).
EVAL_KEYS = ("eval/stochastic_<kind>", "eval/pgd_<kind>", "eval/l0", "eval/alive")
# Keys of histories written before the keys named their loss kind (read, never written): in a
# resumed run's history beside new keys, they take those keys' kind; alone, the kind "loss".
LEGACY_EVAL_KEYS = {"eval/stochastic": "eval/stochastic", "eval/adversarial": "eval/pgd"}
# Logged values that are not training losses.
_NOT_LOSSES = {"step", "lr", "p", "ppgd_lr", "l0"}
PANEL_TITLES = ("training losses", "eval reconstruction (stochastic, PGD)", "L0 per token",
                "alive subcomponents")
_NO_EVAL = "no eval rows\n(set eval_every and pass eval_data)"


def _rows(source) -> list[Mapping]:
    """The history of a decomposition, an :class:`~tl_vpd.report.EvalReport` or a list of rows."""
    history = getattr(source, "history", source)
    if not isinstance(history, Sequence) or not all(isinstance(r, Mapping) for r in history):
        raise TypeError("plot_training_curves takes a Decomposition, an EvalReport or a list of "
                        f"history rows (dicts), got {type(source).__name__}")
    if not history:
        raise ValueError("the history is empty: nothing was logged (train with tl_vpd.decompose "
                         "and log_every > 0), or the decomposition was saved before histories "
                         "were recorded")
    kinds = {k.rsplit("_", 1)[1] for r in history for k in r if k.startswith("eval/pgd_")}
    kind = kinds.pop() if len(kinds) == 1 else "loss"
    return [{f"{LEGACY_EVAL_KEYS[k]}_{kind}" if k in LEGACY_EVAL_KEYS else k: v
             for k, v in r.items()} for r in history]


def _series(rows: Sequence[Mapping], key: str) -> tuple[list, list]:
    """``(steps, values)`` of the rows that hold ``key``, non-finite values dropped."""
    pts = [(r["step"], r[key]) for r in rows if key in r and "step" in r and math.isfinite(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def _say(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")


def _plot_keys(ax, rows, keys, log: bool, **style) -> int:
    """Draw each key's series (labelled by it); returns how many had points."""
    drawn = 0
    for key, label in keys:
        steps, values = _series(rows, key)
        if steps:
            ax.plot(steps, values, label=label, **style)
            drawn += 1
    if drawn and log and any(v > 0 for line in ax.get_lines() for v in line.get_ydata()):
        ax.set_yscale("log")
    return drawn


def plot_training_curves(source, *, fig=None):
    """Plot a decomposition's training curves in four panels (:data:`PANEL_TITLES`): the
    training losses, the eval reconstruction losses under stochastic masks and fresh PGD (both
    log scale), L0 per token (the training batch's and the eval batches'), and the number of
    alive subcomponents (eval batches). A panel without data says so. Needs matplotlib (the
    ``dev`` extra).

    Arguments:
        source: a :class:`~tl_vpd.Decomposition` or :class:`~tl_vpd.report.EvalReport` (their
            ``.history``), or the history itself (a list of dicts with ``step``).
        fig: a matplotlib ``Figure`` to draw on (default: a new pyplot figure).

    Returns:
        The ``Figure`` (its axes in :data:`PANEL_TITLES` order).

    Raises:
        ValueError: the history is empty.
    """
    rows = _rows(source)
    if fig is None:
        import matplotlib.pyplot as plt  # optional dependency, imported only when plotting

        fig = plt.figure(figsize=(11, 7))
    losses, recon, l0, alive = fig.subplots(2, 2).flat
    for ax, title in zip((losses, recon, l0, alive), PANEL_TITLES):
        ax.set_title(title, fontsize="medium")
        ax.set_xlabel("step")
    names = sorted({k for r in rows for k in r if k not in _NOT_LOSSES
                    and not k.startswith(("eval/", "warmup/"))})
    if not _plot_keys(losses, rows, [(k, k) for k in names], log=True, lw=1):
        _say(losses, "no training losses logged")
    eval_keys = sorted({k for r in rows for k in r
                        if k.startswith(("eval/stochastic_", "eval/pgd_"))}, reverse=True)
    labels = [(k, k[5:].rsplit("_", 1)[0].replace("pgd", "PGD")) for k in eval_keys]
    if _plot_keys(recon, rows, labels, log=True, marker="o", lw=1):
        kinds = {k.rsplit("_", 1)[1] for k in eval_keys}
        recon.set_ylabel(kinds.pop().upper() if len(kinds) == 1 and "loss" not in kinds else "loss")
    else:
        _say(recon, _NO_EVAL)
    if not _plot_keys(l0, rows, [("l0", "training batch"), ("eval/l0", "eval batches")],
                      log=False, marker=".", lw=1):
        _say(l0, "no L0 logged")
    l0.set_ylabel("CI > 0, summed over sites")
    if not _plot_keys(alive, rows, [("eval/alive", "alive")], log=False, marker="o", lw=1):
        _say(alive, _NO_EVAL)
    alive.set_ylabel(f"mean CI > {ALIVE_THRESHOLD:g}, summed over sites")
    for ax in (losses, recon, l0):
        if len(ax.get_lines()) > 1:
            ax.legend(fontsize="x-small")
    fig.tight_layout()
    return fig


def figure_png(fig, dpi: int = 80) -> str:
    """``fig`` as a base64 PNG ``data:`` URI, for an ``<img>`` in an HTML report."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
