"""Training per-layer transcoders on a target model, and :class:`Transcoders`, the trained set.

Each layer's transcoder learns its MLP on the *clean* model's activations (every MLP intact: the
standard local-MSE recipe of the PLTs the VPD paper compares against), from the same data stream
a decomposition trains on (:class:`tl_vpd.data_stream.DataStream`, so any ``data`` that
:func:`tl_vpd.decompose` accepts works here).

Loss per layer: the normalised MSE ``Σ‖ŷ − y‖² / Σ‖y − ȳ‖²`` over the batch's tokens (``ȳ`` the
batch mean: 1 is the mean-output baseline), plus ``aux_coeff`` × the AuxK loss, the same
normalised MSE of the dead latents' estimate of the remaining error (Gao et al. 2024; a latent is
dead once it has not fired for ``dead_after_tokens`` tokens).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import nn
from tqdm.auto import tqdm

from tl_vpd.baselines.splice import MLPPoint, capture_mlps, mlp_points
from tl_vpd.baselines.transcoder import Transcoder, aux_k_reconstruction, topk_relu
from tl_vpd.data_stream import DataStream
from tl_vpd.tables import html_table, text_table

__all__ = ["Transcoders", "train_transcoders"]


class Transcoders(nn.Module):
    """One trained :class:`~tl_vpd.baselines.transcoder.Transcoder` per MLP layer.

    Attributes:
        layers: the replaced block indices.
        hooks: per layer, where it reads and writes: ``(input_name, output_name)`` (see
            :func:`tl_vpd.baselines.splice.mlp_points`; names only, so no model is held).
        settings: the training arguments.
        log: per layer ``{"layer", "nmse", "dead"}`` over the last training steps (normalised
            MSE on clean inputs; latents that had not fired for ``dead_after_tokens`` tokens).
        history: ``[{"step", "nmse": {layer: value}}]`` every ~1/20 of the run.
    """

    def __init__(self, transcoders: dict[int, Transcoder], points: Sequence[MLPPoint],
                 settings: dict | None = None, log: list[dict] | None = None,
                 history: list[dict] | None = None):
        super().__init__()
        self.tcs = nn.ModuleDict({str(layer): tc for layer, tc in transcoders.items()})
        self.hooks = [(p.input_name, p.output_name) for p in points]
        self.settings, self.log, self.history = dict(settings or {}), log or [], history or []

    @property
    def layers(self) -> list[int]:
        return [int(layer) for layer in self.tcs]

    def __getitem__(self, layer: int) -> Transcoder:
        return self.tcs[str(layer)]

    def items(self) -> Iterator[tuple[int, Transcoder]]:
        return ((int(layer), tc) for layer, tc in self.tcs.items())

    @property
    def n_latents(self) -> int:
        """Latents summed over layers (the dictionary's total capacity)."""
        return sum(tc.n_latents for _, tc in self.items())

    def evaluate(self, model: nn.Module, data, **kwargs):
        """:func:`tl_vpd.baselines.evaluate.evaluate_transcoders` of these transcoders."""
        from tl_vpd.baselines.evaluate import evaluate_transcoders  # it imports this module

        return evaluate_transcoders(model, self, data, **kwargs)

    def _rows(self) -> list[dict]:
        log = {r["layer"]: r for r in self.log}
        return [{"layer": layer, "input": reads, "output": writes,
                 "n_latents": self[layer].n_latents, "k": self[layer].k,
                 "nmse": log.get(layer, {}).get("nmse"), "dead": log.get(layer, {}).get("dead")}
                for layer, (reads, writes) in zip(self.layers, self.hooks)]

    _COLS = [("layer", "layer"), ("input", "reads"), ("output", "writes"),
             ("n_latents", "latents"), ("k", "k"), ("nmse", "train NMSE"), ("dead", "dead")]

    def __repr__(self) -> str:
        steps = self.settings.get("steps")
        return (f"Transcoders: {len(self.layers)} TopK transcoder(s), {steps} steps\n"
                + text_table(self._COLS, self._rows()))

    def _repr_html_(self) -> str:
        return f"<b>Transcoders</b>{html_table(self._COLS, self._rows())}"


def train_transcoders(
    model: nn.Module,
    data,
    n_latents: int,
    k: int,
    steps: int,
    *,
    layers: Sequence[int] | None = None,
    batch_size: int = 32,
    seq_len: int | None = None,
    lr: float = 1e-3,
    lr_decay_frac: float = 0.2,
    aux_coeff: float = 1 / 32,
    aux_k: int | None = None,
    dead_after_tokens: int = 50_000,
    seed: int = 0,
    progress: bool = True,
) -> Transcoders:
    """Train one TopK transcoder per MLP layer of ``model`` on its clean activations.

    Arguments:
        model: the target (HookedTransformer or TransformerBridge); never modified.
        data: token data in any form :func:`tl_vpd.decompose` accepts.
        n_latents: latents per layer.
        k: active latents per token and layer (TopK).
        steps: optimizer steps (one batch of ``batch_size`` sequences each).
        layers: block indices to train (default: every MLP).
        batch_size: sequences per step.
        seq_len: crop sequences to this (default: the model's ``n_ctx``).
        lr: Adam learning rate, constant, then decayed linearly to 0 over the last
            ``lr_decay_frac`` of the steps.
        aux_coeff: weight of the AuxK loss (Gao et al.: 1/32; 0 switches it off).
        aux_k: dead latents used by AuxK (default ``2 k``).
        dead_after_tokens: a latent not fired for this many tokens counts as dead (Gao et al.
            use 10M tokens on large runs; this default suits CPU-sized runs).
        seed: seeds the initialisation and the data order.
        progress: show a progress bar.

    Returns:
        The trained :class:`Transcoders`.
    """
    if steps < 1 or batch_size < 1:
        raise ValueError(f"steps and batch_size must be >= 1, got {steps} and {batch_size}")
    if not 0.0 <= lr_decay_frac <= 1.0:
        raise ValueError(f"lr_decay_frac must be in [0, 1], got {lr_decay_frac}")
    points = mlp_points(model, layers)
    d_model = model.cfg.d_model
    gen = torch.Generator().manual_seed(seed)
    tcs = {p.layer: Transcoder(d_model, d_model, n_latents, k, generator=gen) for p in points}
    if torch.is_tensor(data):
        batch_size = min(batch_size, data.shape[0])
    stream = DataStream.for_model(data, model, batch_size, seq_len, seed)
    params = [p for tc in tcs.values() for p in tc.parameters()]
    opt = torch.optim.Adam(params, lr=lr)
    decay_start = int(steps * (1 - lr_decay_frac))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 1.0 if s < decay_start else max(0.0, (steps - s) / max(1, steps - decay_start)))
    since_fired = {layer: torch.zeros(n_latents, dtype=torch.long) for layer in tcs}
    aux_k = 2 * k if aux_k is None else aux_k
    recent: dict[int, list[float]] = {layer: [] for layer in tcs}
    history, every = [], max(1, steps // 20)
    model_device = next(model.parameters()).device
    for tc in tcs.values():
        tc.to(model_device)
    bar = tqdm(range(steps), desc="transcoders", disable=not progress, dynamic_ncols=True)
    for step in bar:
        with torch.no_grad(), capture_mlps(model, points) as seen:
            model(stream.next().to(model_device))
        loss = torch.zeros((), device=model_device)
        nmse = {}
        for layer, tc in tcs.items():
            x, y = (t.flatten(0, -2).float() for t in seen[layer])
            if step == 0:  # the decoder bias starts at the mean output
                with torch.no_grad():
                    tc.b_dec.copy_(y.mean(0))
            pre = tc.pre_acts(x)
            latents = topk_relu(pre, tc.k)
            y_hat = tc.decode(latents)
            var = (y - y.mean(0)).pow(2).sum().clamp_min(1e-12)
            layer_loss = (y_hat - y).pow(2).sum() / var
            fired = (latents > 0).any(0).cpu()
            since_fired[layer] = torch.where(fired, 0, since_fired[layer] + x.shape[0])
            dead = (since_fired[layer] >= dead_after_tokens).to(x.device)
            if aux_coeff > 0:
                err_hat = aux_k_reconstruction(tc, pre, dead, aux_k)
                if err_hat is not None:
                    err = (y - y_hat).detach()
                    err_var = (err - err.mean(0)).pow(2).sum().clamp_min(1e-12)
                    layer_loss = layer_loss + aux_coeff * (err_hat - err).pow(2).sum() / err_var
            loss = loss + layer_loss
            nmse[layer] = ((y_hat - y).pow(2).sum() / var).item()
            recent[layer] = (recent[layer] + [nmse[layer]])[-max(1, steps // 20):]
        if not torch.isfinite(loss):
            raise FloatingPointError(f"transcoder loss is {loss.item()} at step {step}; "
                                     f"lower lr (now {lr})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        for tc in tcs.values():
            tc.remove_parallel_grad_()
        opt.step()
        sched.step()
        for tc in tcs.values():
            tc.normalize_decoder_()
        if step % every == 0 or step == steps - 1:
            history.append({"step": step, "nmse": nmse})
            bar.set_postfix(nmse=f"{sum(nmse.values()) / len(nmse):.3g}")
    log = [{"layer": layer, "nmse": sum(v) / len(v),
            "dead": int((since_fired[layer] >= dead_after_tokens).sum())}
           for layer, v in recent.items()]
    settings = dict(n_latents=n_latents, k=k, steps=steps, batch_size=batch_size,
                    seq_len=seq_len, lr=lr, lr_decay_frac=lr_decay_frac, aux_coeff=aux_coeff,
                    aux_k=aux_k, dead_after_tokens=dead_after_tokens, seed=seed)
    for tc in tcs.values():
        tc.requires_grad_(False)
    return Transcoders(tcs, points, settings, log, history)
