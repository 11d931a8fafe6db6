"""Checkpoints of a training run: the run-directory layout and atomic save / restore.

Layout of a run directory written by :func:`tl_vpd.decompose` (``run_dir``)::

    config.yaml                    the VPDConfig of the run
    checkpoints/step_0000400/      a saved decomposition plus
        trainer_state.pt           step, optimiser, generators, data position, adversary, history
        adversary_rank{r}.pt       per-rank persistent sources (data parallel, per-token scope)
    decomposition/                 the final decomposition (:func:`tl_vpd.load`)

A checkpoint is written to ``step_….tmp`` and renamed when complete, so an interrupted write
never looks like a checkpoint.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tl_vpd.config import VPDConfig
from tl_vpd.decomposition import Decomposition
from tl_vpd.distributed import Shard
from tl_vpd.layout import CHECKPOINT_DIR, DECOMPOSITION_DIR, TRAINER_STATE_FILE
from tl_vpd.layout import DECOMP_CONFIG_FILE as CONFIG_FILE

__all__ = [
    "CHECKPOINT_DIR",
    "CONFIG_FILE",
    "DECOMPOSITION_DIR",
    "TRAINER_STATE_FILE",
    "adversary_file",
    "latest_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
]


def adversary_file(checkpoint: Path, rank: int) -> Path:
    """Where rank ``rank`` keeps its shard of per-token persistent sources."""
    return checkpoint / f"adversary_rank{rank}.pt"


def save_checkpoint(
    run_dir: Path,
    step: int,
    dec: Decomposition,
    cfg: VPDConfig,
    state: dict[str, Any] | None,
    shard: Shard,
    *,
    rank_state: dict[str, Any] | None = None,
    collective: bool = True,
) -> Path:
    """Write ``run_dir/checkpoints/step_{step}/`` (decomposition + trainer state) atomically.

    Arguments:
        run_dir: the run directory.
        step: the step the state belongs to.
        dec: the decomposition.
        cfg: the config (written beside the checkpoints as ``config.yaml``).
        state: the trainer state (only rank 0's is written; other ranks may pass ``None``).
        shard: the data-parallel group.
        rank_state: this rank's own state (per-token persistent sources), written by every rank.
        collective: every rank calls this (barriers around the per-rank files); on an interrupt
            only rank 0 does, and per-rank state is then not saved (a resume re-draws it).

    Returns:
        The checkpoint directory.
    """
    final = run_dir / CHECKPOINT_DIR / f"step_{step:07d}"
    tmp = final.with_name(final.name + ".tmp")
    if shard.is_main:
        dec.save(tmp)
        torch.save(state, tmp / TRAINER_STATE_FILE)
        cfg.to_file(run_dir / CONFIG_FILE)
    if collective and rank_state is not None:
        shard.barrier()
        torch.save(rank_state, adversary_file(tmp, shard.rank))
        shard.barrier()
    if shard.is_main:
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)
    if collective:
        shard.barrier()
    return final


def latest_checkpoint(run_dir: Path) -> Path:
    """The newest complete checkpoint of ``run_dir`` (``FileNotFoundError`` if none)."""
    ckpts = sorted((run_dir / CHECKPOINT_DIR).glob("step_*[0-9]"))
    if not ckpts:
        raise FileNotFoundError(f"no checkpoint to resume from in {run_dir / CHECKPOINT_DIR}")
    return ckpts[-1]


def load_checkpoint(path: Path, model: nn.Module, shard: Shard
                    ) -> tuple[Decomposition, dict[str, Any], dict[str, Any] | None]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Arguments:
        path: the checkpoint directory.
        model: the target model.
        shard: the data-parallel group (selects this rank's own state file).

    Returns:
        ``(decomposition, trainer_state, rank_state)``; ``rank_state`` is ``None`` when this
        rank saved none.
    """
    dec = Decomposition.load(path, model)
    state = torch.load(path / TRAINER_STATE_FILE, weights_only=True)
    own = adversary_file(path, shard.rank)
    rank_state = torch.load(own, weights_only=True) if own.exists() else None
    return dec, state, rank_state
