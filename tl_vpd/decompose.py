"""The entry point: :func:`decompose` trains a decomposition of a model.

The loop itself is :class:`tl_vpd.trainer.Trainer`, the losses of a step
:func:`tl_vpd.recipe.step_losses`, and checkpoint files :mod:`tl_vpd.checkpoint`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from tl_vpd.config import VPDConfig
from tl_vpd.decomposition import Decomposition
from tl_vpd.trainer import Callback, NonFiniteLossError, Trainer

__all__ = ["NonFiniteLossError", "Trainer", "decompose"]


def decompose(
    model: torch.nn.Module,
    cfg: VPDConfig | None,
    data,
    *,
    eval_data=None,
    callbacks: Sequence[Callback] = (),
    run_dir: str | Path | None = None,
    resume: bool = False,
) -> Decomposition:
    """Train a VPD (or SPD) decomposition of ``model``.

    Arguments:
        model: a ``HookedTransformer`` (or a toy model with ``vpd_sites()``). It is frozen
            during training and never modified.
        cfg: the hyperparameters (``None`` = ``VPDConfig()``; presets via ``VPDConfig.preset``).
        data: token ids ``[n, seq]``, an iterable of batches, a ``datasets.Dataset``, or for toy
            models a callable ``data(batch_size, generator)``.
        eval_data: data for periodic evaluation (every ``cfg.eval_every`` steps).
        callbacks: ``fn(step, metrics, decomposition)`` called after every logged step.
        run_dir: where checkpoints (every ``cfg.checkpoint_every`` steps, on Ctrl-C, on a
            non-finite loss, and at the end) and the final decomposition are written.
        resume: continue from the latest checkpoint in ``run_dir``.

    Returns:
        The trained :class:`~tl_vpd.Decomposition` (``.history`` holds the logged metrics).
    """
    cfg = cfg or VPDConfig()
    if data is None:
        raise ValueError("decompose needs data: token ids [n, seq], batches, or a callable")
    trainer = Trainer(model, cfg, data, eval_data=eval_data, callbacks=callbacks, run_dir=run_dir)
    if resume:
        trainer.load_checkpoint()
    return trainer.train()
