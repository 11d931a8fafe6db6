"""The CE/KL table of a set of transcoders spliced in place of the MLPs, comparable row for row
with a decomposition's (:func:`tl_vpd.evaluate.evaluate`).

The VPD paper compares methods by simultaneously replacing every MLP with its sparse
reconstruction and measuring the increase in CE over the target (section "Comparison with
transcoders"). Here every transcoder reads the spliced model's own MLP input (errors of earlier
layers propagate, the paper's "error-propagating" protocol). The metric code is the
decomposition evaluation's own, and the batches are drawn the same way from the same stream
(same ``n_batches``, ``batch_size`` and ``seed`` give the same tokens), so the target rows agree
exactly and the other rows compare.

Rows: ``target``; ``transcoders`` (every replaced MLP's ``hook_mlp_out`` is its transcoder's
output); ``zero-ablated`` (those ``hook_mlp_out`` set to 0, the paper's dashed line; the VPD
table's zero-ablated row removes the decomposed matrices instead, leaving MLP biases).
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from tl_vpd.baselines.splice import mlp_points, mlp_hooks
from tl_vpd.baselines.train import Transcoders
from tl_vpd.data_stream import DataStream
from tl_vpd.evaluate import TARGET, ZERO, _measure, _recon_rows, _Sums
from tl_vpd.tables import html_table, text_table

__all__ = ["SPLICED", "TranscoderReport", "evaluate_transcoders"]

SPLICED = "transcoders"


@dataclass
class TranscoderReport:
    """What :func:`evaluate_transcoders` measured.

    Attributes:
        recon: per mode (``target``, ``transcoders``, ``zero-ablated``): ``ce`` (next-token
            CE), ``kl`` (per-token KL(target ‖ spliced)), ``ce_degradation`` (CE − target CE),
            ``ce_recovered`` and ``compute_recovered`` as in :class:`tl_vpd.report.EvalReport`.
        layers: per layer ``layer``, ``n_latents``, ``k``, ``l0`` (mean active latents per
            token in the spliced run), ``alive`` (latents active on at least one evaluated
            token), ``nmse`` (normalised MSE on the clean model's MLP inputs).
        total: ``n_latents``, ``l0`` and ``alive`` summed over layers.
        n_tokens: tokens evaluated.
        settings: batches, batch size, sequence length, seed.
        fired: per layer, which latents were active on some token (not saved by
            :meth:`to_dict`).
    """

    recon: list[dict]
    layers: list[dict]
    total: dict
    n_tokens: int
    settings: dict
    fired: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)

    def row(self, mode: str) -> dict:
        for r in self.recon:
            if r["mode"] == mode:
                return r
        raise KeyError(f"no mode {mode!r}; modes: {[r['mode'] for r in self.recon]}")

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("recon", "layers", "total", "n_tokens", "settings")}

    def _tables(self):
        recon_cols = [("mode", "mode"), ("ce", "CE"), ("ce_degradation", "CE − target"),
                      ("kl", "KL(target‖·)"), ("ce_recovered", "CE recovered")]
        layer_cols = [("layer", "layer"), ("n_latents", "latents"), ("k", "k"), ("l0", "L0"),
                      ("alive", "alive"), ("nmse", "NMSE (clean)")]
        return [("Reconstruction (every listed MLP replaced)", recon_cols, self.recon),
                (f"L0 (active latents per token) and alive latents (active on some token of "
                 f"{self.n_tokens:,})", layer_cols,
                 self.layers + [{"layer": "total", **self.total}])]

    def __repr__(self) -> str:
        s = self.settings
        parts = [f"TranscoderReport: {s['n_batches']} × {s['batch_size']} × {s['seq_len']} = "
                 f"{self.n_tokens:,} tokens"]
        for title, cols, rows in self._tables():
            parts += ["", title, text_table(cols, rows)]
        return "\n".join(parts)

    def _repr_html_(self) -> str:
        return "<div>" + "".join(f"<p><i>{html.escape(t)}</i></p>{html_table(c, r)}"
                                 for t, c, r in self._tables()) + "</div>"


def evaluate_transcoders(model: nn.Module, transcoders: Transcoders, data, *, n_batches: int = 8,
                         batch_size: int = 16, seed: int = 0, target_curve=None,
                         progress: bool = True) -> TranscoderReport:
    """Splice every transcoder in place of its MLP and measure CE, KL, L0 and alive latents.

    Arguments:
        model: the target the transcoders were trained on.
        transcoders: from :func:`tl_vpd.baselines.train.train_transcoders`.
        data: evaluation tokens in any form :func:`tl_vpd.evaluate.evaluate` accepts.
        n_batches: batches (fewer if ``data`` is a smaller tensor).
        batch_size: sequences per batch; pass a decomposition evaluation's value to compare on
            the same tokens.
        seed: seeds the batch order (as in :func:`tl_vpd.evaluate.evaluate`).
        target_curve: the target's training curve, for "compute recovered".
        progress: show a progress bar.

    Returns:
        The :class:`TranscoderReport`.
    """
    if n_batches < 1:
        raise ValueError(f"n_batches must be >= 1, got {n_batches}")
    points = mlp_points(model, transcoders.layers)
    if torch.is_tensor(data):
        batch_size = min(batch_size, data.shape[0])
    stream = DataStream.for_model(data, model, batch_size, None, seed)
    cap = None if stream.tokens is None else stream.tokens.shape[0] // batch_size
    batches = [stream.next() for _ in range(n_batches if cap is None else min(n_batches, cap))]
    device = next(model.parameters()).device
    sums = {m: _Sums() for m in (TARGET, SPLICED, ZERO)}
    layers = transcoders.layers
    l0 = dict.fromkeys(layers, 0.0)
    sse, sst = dict.fromkeys(layers, 0.0), dict.fromkeys(layers, 0.0)
    fired = {layer: torch.zeros(transcoders[layer].n_latents, dtype=torch.bool) for layer in layers}
    n_tokens = 0

    def clean(layer, x, y):  # the target's own MLP: score each transcoder on its clean input
        err = transcoders[layer](x).double() - y.double()
        sse[layer] += err.pow(2).sum().item()
        yf = y.flatten(0, -2).double()
        sst[layer] += (yf - yf.mean(0)).pow(2).sum().item()

    def splice(layer, x, y):
        latents = transcoders[layer].encode(x)
        active = (latents > 0).flatten(0, -2).cpu()
        l0[layer] += active.sum().item()
        fired[layer] |= active.any(0)
        return transcoders[layer].decode(latents)

    for batch in tqdm(batches, desc="evaluate transcoders", disable=not progress,
                      dynamic_ncols=True):
        tokens = batch.to(device)
        with torch.no_grad():
            with mlp_hooks(model, points, clean):
                target = model(tokens)
            _measure("ce", batch, target, target, sums[TARGET])
            with mlp_hooks(model, points, splice):
                _measure("ce", batch, target, model(tokens), sums[SPLICED])
            with mlp_hooks(model, points, lambda layer, x, y: torch.zeros_like(y)):
                _measure("ce", batch, target, model(tokens), sums[ZERO])
        n_tokens += batch.numel()

    recon = _recon_rows("ce", sums, target_curve)
    ce_target = recon[0]["ce"]
    for r in recon:
        r["ce_degradation"] = r["ce"] - ce_target
    rows = [{"layer": layer, "n_latents": transcoders[layer].n_latents, "k": transcoders[layer].k,
             "l0": l0[layer] / n_tokens, "alive": int(fired[layer].sum()),
             "nmse": sse[layer] / sst[layer] if sst[layer] > 0 else None} for layer in layers]
    total = {k: sum(r[k] for r in rows) for k in ("n_latents", "l0", "alive")}
    settings = {"n_batches": len(batches), "batch_size": int(batches[0].shape[0]),
                "seq_len": int(batches[0].shape[1]), "seed": seed,
                "protocol": "error-propagating: each transcoder reads the spliced model"}
    return TranscoderReport(recon, rows, total, n_tokens, settings, fired)
