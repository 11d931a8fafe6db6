"""The :class:`EvalReport`: what :func:`tl_vpd.evaluate.evaluate` measured, as JSON-safe tables,
saved to / read from JSON and shown as text (``repr``) or HTML (``_repr_html_``) through the
shared table helper :mod:`tl_vpd.tables`.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tl_vpd import atomic
from tl_vpd.tables import html_table, text_table

__all__ = ["ALIVE_THRESHOLD", "EvalReport"]

ALIVE_THRESHOLD = 1e-6  # VPD paper: a subcomponent is alive if its mean CI exceeds this


@dataclass
class EvalReport:
    """Everything :func:`tl_vpd.evaluate.evaluate` measures, as plain JSON-safe tables (lists of dicts).

    Attributes:
        metric: ``"ce"`` for language models (next-token CE and per-token KL to the target) or
            ``"mse"`` for toy models (MSE to the target's output).
        recon: one row per masking mode (see :mod:`tl_vpd.evaluate`): ``mode`` and, for LMs,
            ``ce``, ``kl``, ``ce_recovered`` (``1 − (CE − CE_target)/(CE_zero − CE_target)``) and
            ``compute_recovered`` (fraction of the target's pretraining tokens at which its
            curve reaches this CE; ``None`` without a curve); for toy models ``mse`` and
            ``mse_recovered``.
        sites: per site: ``site``, ``layer``, ``C``, ``l0`` (mean #subcomponents with CI > 0 per
            token), ``alive`` (mean CI > 1e-6), ``fired`` (CI > 0 on at least one token),
            ``l0_per_alive``.
        layers: the same summed per layer (``layer`` is ``None`` for sites outside blocks).
        total: the same summed over all sites.
        adversarial: per PGD step count: ``pgd_steps`` and ``kl`` (``mse`` for toy models) under
            fresh PGD with one source per subcomponent shared across every attacked token, step
            size ``2/n``: the mean over random restarts, with ``kl_max``, ``kl_min`` and
            ``kl_restarts`` (each restart's); ``per_stochastic`` / ``per_zero`` (and their
            ``_max``) divide it by the stochastic and zero-ablated KL on the same tokens
            (:attr:`adversarial_reference`). Reports written before restarts have ``kl`` only.
        zero_ablated: KL (MSE) with every decomposed matrix zero-ablated (reconstruction table).
        n_tokens: tokens (toy: examples) the L0 and alive counts are measured on.
        settings: how it was measured (batches, batch size, sequence length, seed, PGD tokens,
            restarts, ...).
        adversarial_reference: the attack's references on its own tokens: ``stochastic`` and
            ``zero-ablated`` KL (MSE), ``n_batches``, ``n_tokens`` (empty without an attack).
        ci_spectrum: per site ``{"site", "mean_ci"}``: every subcomponent's mean CI, largest
            first (VPD paper: its log's sharp cutoff shows how many subcomponents are alive).
        ci_histograms: per site ``{"site", "zeros", "edges", "counts"}``: how many CI values are
            ``<= 0``, and a histogram of the rest over (0, 1].
        history: the decomposition's training history (``dec.history``), drawn in the HTML view
            by :func:`tl_vpd.plot_training_curves`; empty when it had none.
    """

    metric: str
    recon: list[dict]
    sites: list[dict]
    layers: list[dict]
    total: dict
    adversarial: list[dict]
    zero_ablated: float
    n_tokens: int
    settings: dict = field(default_factory=dict)
    adversarial_reference: dict = field(default_factory=dict)
    ci_spectrum: list[dict] = field(default_factory=list)
    ci_histograms: list[dict] = field(default_factory=list)
    history: list[dict] = field(default_factory=list)

    def row(self, mode: str) -> dict:
        """The reconstruction row of one masking mode, e.g. ``report.row("unmasked")["ce"]``."""
        for r in self.recon:
            if r["mode"] == mode:
                return r
        raise KeyError(f"no masking mode {mode!r}; modes: {[r['mode'] for r in self.recon]}")

    # ------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        """The report as a JSON-safe dict (the inverse of :meth:`from_dict`)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> EvalReport:
        """A report from :meth:`to_dict`'s output (older reports lack the newer fields, which
        then stay empty)."""
        return cls(**d)

    def pgd(self, n_steps: int) -> dict:
        """The adversarial row of one step count, e.g. ``report.pgd(20)["per_stochastic"]``."""
        for r in self.adversarial:
            if r["pgd_steps"] == n_steps:
                return r
        raise KeyError(f"no PGD attack of {n_steps} steps; step counts: "
                       f"{[r['pgd_steps'] for r in self.adversarial]}")

    def save_json(self, path: str | Path) -> Path:
        """Write the report as JSON (parent folders created); returns ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(path, json.dumps(self.to_dict(), indent=2, allow_nan=True) + "\n")
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> EvalReport:
        """Read a report written by :meth:`save_json`."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    def plot_ci_spectrum(self, ax=None):
        """Plot each site's log mean CI against the subcomponent's rank (VPD paper, training
        recipe: the sharp cutoff shows how many subcomponents are alive, to choose C). Needs
        matplotlib (the ``dev`` extra).

        Arguments:
            ax: a matplotlib ``Axes`` to draw on (default: a new figure's).

        Returns:
            The ``Axes``.
        """
        if not self.ci_spectrum:
            raise ValueError("this report has no CI spectrum (written before it was recorded)")
        import matplotlib.pyplot as plt  # optional dependency, imported only when plotting

        ax = ax if ax is not None else plt.subplots(figsize=(6, 4))[1]
        for row in self.ci_spectrum:
            ax.plot(range(1, len(row["mean_ci"]) + 1), row["mean_ci"], lw=1, label=row["site"])
        ax.set_yscale("log")
        ax.axhline(ALIVE_THRESHOLD, color="grey", ls="--", lw=0.8)
        ax.set_xlabel("subcomponent (by mean CI)")
        ax.set_ylabel("mean causal importance")
        if len(self.ci_spectrum) <= 12:
            ax.legend(fontsize="x-small")
        return ax

    # ------------------------------------------------------------ display
    def _tables(self) -> list[tuple[str, list[tuple[str, str]], list[dict]]]:
        """(title, [(key, header)], rows) of every table, shared by the text and HTML views."""
        if self.metric == "ce":
            recon_cols = [("mode", "mode"), ("ce", "CE"), ("kl", "KL(target‖·)"),
                          ("ce_recovered", "CE recovered"),
                          ("compute_recovered", "compute recovered")]
            adv_key = "kl"
        else:
            recon_cols = [("mode", "mode"), ("mse", "MSE"), ("mse_recovered", "MSE recovered")]
            adv_key = "mse"
        unit = "tokens" if self.metric == "ce" else "examples"
        alive_cols = [("C", "C"), ("l0", "L0"), ("alive", "alive"), ("fired", "fired"),
                      ("l0_per_alive", "L0/alive")]
        adv_rows = [{"attack": f"PGD {r['pgd_steps']} steps", **r} for r in self.adversarial]
        ref = self.adversarial_reference
        for name in ("stochastic", "zero-ablated"):
            if name in ref:
                adv_rows.append({"attack": f"{name} (same tokens)", adv_key: ref[name]})
        adv_rows.append({"attack": "zero-ablated (table above)", adv_key: self.zero_ablated})
        adv_cols = [("attack", "attack"), (adv_key, f"{adv_key.upper()} mean")]
        if ref:
            adv_cols += [(f"{adv_key}_max", "max"), ("per_stochastic", "÷ stochastic"),
                         ("per_stochastic_max", "max ÷ stochastic"), ("per_zero", "÷ zero-abl."),
                         ("per_zero_max", "max ÷ zero-abl.")]
            tokens = f"{ref['n_tokens']:,} {unit} in {ref['n_batches']} batch(es)"
            restarts = f", {self.settings.get('pgd_restarts', 1)} random restart(s)"
            shared = "one source per subcomponent shared across all of them"
        else:  # a report written before the shared multi-batch attack
            tokens, restarts = f"{self.settings.get('pgd_batches')} batch(es)", ""
            shared = "sources shared across the batch"
        return [
            ("Reconstruction (Δ excluded except in the last row)", recon_cols, self.recon),
            (f"L0 (CI > 0) and alive subcomponents per layer: alive = mean CI > "
             f"{ALIVE_THRESHOLD:g}, fired = CI > 0 at least once in {self.n_tokens:,} {unit}",
             [("layer", "layer")] + alive_cols, self.layers + [{"layer": "total", **self.total}]),
            ("Per site", [("site", "site")] + alive_cols, self.sites),
            (f"Adversarial {adv_key.upper()} (fresh PGD on {tokens}, {shared}{restarts}, "
             "step size 2/n)", adv_cols, adv_rows),
        ]

    def _header(self) -> str:
        s = self.settings
        shape = " × ".join(str(s[k]) for k in ("n_batches", "batch_size", "seq_len") if s.get(k))
        unit = "tokens" if self.metric == "ce" else "examples"
        return f"EvalReport ({self.metric}): {shape} = {self.n_tokens:,} {unit}"

    def __repr__(self) -> str:
        parts = [self._header()]
        for title, cols, rows in self._tables():
            parts += ["", title, text_table(cols, rows)]
        if self.history:
            parts += ["", f"Training history: {len(self.history)} logged rows (drawn in the HTML "
                      "view and by tl_vpd.plot_training_curves)"]
        return "\n".join(parts)

    def _repr_html_(self) -> str:
        parts = [f"<b>{html.escape(self._header())}</b>"]
        for title, cols, rows in self._tables():
            parts.append(f"<p><i>{html.escape(title)}</i></p>{html_table(cols, rows)}")
        if self.history:
            parts.append(self._curves_html())
        return "<div>" + "\n".join(parts) + "</div>"

    def _curves_html(self) -> str:
        """The training curves as an inline PNG (a note instead where matplotlib is missing)."""
        title = f"<p><i>Training curves ({len(self.history)} logged rows)</i></p>"
        try:
            from matplotlib.figure import Figure  # not pyplot: no figure left open to show twice
        except ImportError:
            return title + "<p>install matplotlib (the dev extra) to draw them</p>"
        from tl_vpd.curves import figure_png, plot_training_curves

        uri = figure_png(plot_training_curves(self.history, fig=Figure(figsize=(11, 7))))
        return f'{title}<img src="{uri}" alt="training curves" style="max-width:100%">'
