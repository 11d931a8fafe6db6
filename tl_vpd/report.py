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
            fresh PGD with sources shared across the batch, step size ``2/n``.
        zero_ablated: KL (MSE) with every decomposed matrix zero-ablated, the reference for the
            adversarial numbers.
        n_tokens: tokens (toy: examples) the L0 and alive counts are measured on.
        settings: how it was measured (batches, batch size, sequence length, seed, ...).
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
        """A report from :meth:`to_dict`'s output."""
        return cls(**d)

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
        adv_rows = [{"attack": f"PGD {r['pgd_steps']} steps", adv_key: r[adv_key]}
                    for r in self.adversarial]
        adv_rows.append({"attack": "zero-ablated", adv_key: self.zero_ablated})
        n_pgd = self.settings.get("pgd_batches")
        return [
            ("Reconstruction (Δ excluded except in the last row)", recon_cols, self.recon),
            (f"L0 (CI > 0) and alive subcomponents per layer: alive = mean CI > "
             f"{ALIVE_THRESHOLD:g}, fired = CI > 0 at least once in {self.n_tokens:,} {unit}",
             [("layer", "layer")] + alive_cols, self.layers + [{"layer": "total", **self.total}]),
            ("Per site", [("site", "site")] + alive_cols, self.sites),
            (f"Adversarial {adv_key.upper()} (fresh PGD on {n_pgd} batch(es), sources shared "
             "across the batch, step size 2/n)",
             [("attack", "attack"), (adv_key, adv_key.upper())], adv_rows),
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
        return "\n".join(parts)

    def _repr_html_(self) -> str:
        parts = [f"<b>{html.escape(self._header())}</b>"]
        for title, cols, rows in self._tables():
            parts.append(f"<p><i>{html.escape(title)}</i></p>{html_table(cols, rows)}")
        return "<div>" + "\n".join(parts) + "</div>"
