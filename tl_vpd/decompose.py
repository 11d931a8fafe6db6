"""The entry point: :func:`decompose` trains a decomposition of a model.

The loop itself is :class:`tl_vpd.trainer.Trainer`, the losses of a step
:func:`tl_vpd.recipe.step_losses`, and checkpoint files :mod:`tl_vpd.checkpoint`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from tl_vpd.config import VPDConfig
from tl_vpd.decomposition import Decomposition
from tl_vpd.run_dir import RunMismatchError, claim
from tl_vpd.trainer import Callback, DivergenceError, NonFiniteLossError, Trainer, TrainingInterrupted

__all__ = ["DivergenceError", "NonFiniteLossError", "RunMismatchError", "Trainer",
           "TrainingInterrupted", "decompose"]


def decompose(
    model: torch.nn.Module,
    cfg: VPDConfig | Mapping | None,
    data,
    *,
    eval_data=None,
    callbacks: Sequence[Callback] = (),
    run_dir: str | Path | None = None,
    resume: bool = False,
) -> Decomposition:
    """Train a VPD (or SPD) decomposition of ``model``.

    Arguments:
        model: a ``HookedTransformer``, a ``TransformerBridge`` (or a toy model with
            ``vpd_sites()``). It is frozen during training and never modified.
        cfg: the hyperparameters (``None`` = ``VPDConfig()``; a dict is read with
            ``VPDConfig.from_dict``; presets via ``VPDConfig.preset``).
        data: token ids ``[n, seq]``, an iterable of batches, a ``datasets.Dataset``, or for toy
            models a callable ``data(batch_size, generator)``.
        eval_data: data for periodic evaluation (every ``cfg.eval_every`` steps).
        callbacks: ``fn(step, metrics, decomposition)`` called after every logged step.
        run_dir: where checkpoints (every ``cfg.checkpoint_every`` steps, on Ctrl-C or SIGTERM
            after the current step, on any error, and at the end; the newest
            ``cfg.keep_checkpoints`` are kept) and the final decomposition are written. It
            records the run's identity (:mod:`tl_vpd.run_dir`): a directory holding another
            run is refused.
        resume: continue from the newest valid checkpoint in ``run_dir`` (with the same
            config, data and target; a directory without checkpoints starts afresh).

    Raises:
        TrainingInterrupted: Ctrl-C / SIGTERM (a ``KeyboardInterrupt``), after checkpointing.
        NonFiniteLossError, DivergenceError: a loss became NaN/inf or exploded.
        RunMismatchError: ``run_dir`` holds another run, or this one without ``resume``.

    Returns:
        The trained :class:`~tl_vpd.Decomposition` (``.history`` holds the logged metrics).
    """
    if cfg is None:
        cfg = VPDConfig()
    elif isinstance(cfg, Mapping):
        cfg = VPDConfig.from_dict(cfg)
    elif not isinstance(cfg, VPDConfig):
        raise TypeError(f"cfg must be a VPDConfig, a dict of its fields or None; got "
                        f"{type(cfg).__name__}")
    if data is None:
        raise ValueError("decompose needs data: token ids [n, seq], batches, or a callable")
    if cfg.checkpoint_every and run_dir is None:
        raise ValueError(f"checkpoint_every={cfg.checkpoint_every} needs a run_dir to write the "
                         "checkpoints to; pass run_dir=... or set checkpoint_every=0")
    if cfg.eval_every and eval_data is None:
        raise ValueError(f"eval_every={cfg.eval_every} needs eval_data to evaluate on; pass "
                         "eval_data=... or set eval_every=0")
    if resume and run_dir is None:
        raise ValueError("resume=True needs the run_dir of the run to continue")
    trainer = Trainer(model, cfg, data, eval_data=eval_data, callbacks=callbacks, run_dir=run_dir)
    if run_dir is not None and claim(run_dir, cfg, model, data, resume):
        trainer.load_checkpoint()
    return trainer.train()
