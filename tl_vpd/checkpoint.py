"""Checkpoints of a training run: atomic, verified writes; restore from the newest valid one.

Layout of a run directory written by :func:`tl_vpd.decompose` (``run_dir``)::

    run.json                       the run's identity (tl_vpd.run_dir)
    config.yaml                    the VPDConfig of the run
    checkpoints/step_0000400/      a saved decomposition plus
        trainer_state.pt           step, optimiser, generators, data position, adversary, history
        adversary_rank{r}.pt       per-rank persistent sources (data parallel, per-token scope)
        manifest.json              size and SHA-256 of every other file (written last)
    decomposition/                 the final decomposition (:func:`tl_vpd.load`)

A checkpoint is written to ``step_….tmp``, flushed to disk, given its manifest and renamed when
complete, so an interrupted write never looks like a checkpoint; a checkpoint damaged later
(truncated, edited) fails its manifest and the newest valid one is used instead. Only the newest
``keep`` checkpoints are kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tl_vpd import atomic
from tl_vpd.decomposition import Decomposition
from tl_vpd.distributed import Shard
from tl_vpd.layout import CHECKPOINT_DIR, DECOMPOSITION_DIR, MANIFEST_FILE, TRAINER_STATE_FILE
from tl_vpd.layout import DECOMP_CONFIG_FILE as CONFIG_FILE

__all__ = [
    "CHECKPOINT_DIR",
    "CONFIG_FILE",
    "DECOMPOSITION_DIR",
    "TRAINER_STATE_FILE",
    "adversary_file",
    "checkpoints",
    "latest_checkpoint",
    "load_checkpoint",
    "load_newest_valid",
    "prune_checkpoints",
    "save_checkpoint",
    "verify_checkpoint",
]


def adversary_file(checkpoint: Path, rank: int) -> Path:
    """Where rank ``rank`` keeps its shard of per-token persistent sources."""
    return checkpoint / f"adversary_rank{rank}.pt"


def checkpoints(run_dir: Path) -> list[Path]:
    """The run's complete checkpoint directories, oldest first (valid or not)."""
    return sorted(p for p in (Path(run_dir) / CHECKPOINT_DIR).glob("step_*[0-9]") if p.is_dir())


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # directories cannot be fsynced on every platform
        pass
    finally:
        os.close(fd)


def _seal(tmp: Path) -> None:
    """Flush every file of ``tmp`` to disk and write its manifest."""
    files = sorted(p for p in tmp.iterdir() if p.is_file() and p.name != MANIFEST_FILE)
    for p in files:
        _fsync(p)
    manifest = {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in files}
    atomic.write_text(tmp / MANIFEST_FILE, json.dumps(manifest, indent=1))
    _fsync(tmp)


def verify_checkpoint(path: Path) -> None:
    """Raise ``ValueError`` naming the file unless ``path`` matches its manifest.

    A checkpoint written before manifests existed (none present) passes unverified.
    """
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        if not (path / TRAINER_STATE_FILE).is_file():
            raise ValueError(f"{path} is not a complete checkpoint (no {TRAINER_STATE_FILE})")
        return
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{manifest_path} is unreadable ({err})") from err
    for name, entry in manifest.items():
        f = path / name
        if not f.is_file():
            raise ValueError(f"{f} is missing")
        if f.stat().st_size != entry["bytes"]:
            raise ValueError(f"{f} has {f.stat().st_size} bytes, {entry['bytes']} were written "
                             "(truncated or overwritten)")
        if _sha256(f) != entry["sha256"]:
            raise ValueError(f"{f} does not match its checksum (corrupted or edited)")


def save_checkpoint(
    run_dir: Path,
    step: int,
    dec: Decomposition,
    state: dict[str, Any] | None,
    shard: Shard,
    *,
    rank_state: dict[str, Any] | None = None,
    collective: bool = True,
    keep: int = 0,
) -> Path:
    """Write ``run_dir/checkpoints/step_{step}/`` (decomposition + trainer state) atomically.

    Arguments:
        run_dir: the run directory.
        step: the step the state belongs to.
        dec: the decomposition.
        state: the trainer state (only rank 0's is written; other ranks may pass ``None``).
        shard: the data-parallel group.
        rank_state: this rank's own state (per-token persistent sources), written by every rank.
        collective: every rank calls this (barriers around the per-rank files); on an interrupt
            only rank 0 does, and per-rank state is then not saved (a resume re-draws it).
        keep: keep only the newest ``keep`` checkpoints afterwards (0: keep all).

    Returns:
        The checkpoint directory.
    """
    final = Path(run_dir) / CHECKPOINT_DIR / f"step_{step:07d}"
    tmp = final.with_name(final.name + ".tmp")
    if shard.is_main:
        if tmp.exists():  # left by a process killed mid-write
            shutil.rmtree(tmp)
        dec.save(tmp)
        torch.save(state, tmp / TRAINER_STATE_FILE)
    if collective and rank_state is not None:
        shard.barrier()
        torch.save(rank_state, adversary_file(tmp, shard.rank))
        shard.barrier()
    if shard.is_main:
        _seal(tmp)
        old = final.with_name(final.name + ".old")
        if final.exists():  # the same step saved again (e.g. the end of a run)
            final.rename(old)
        tmp.rename(final)
        _fsync(final.parent)
        shutil.rmtree(old, ignore_errors=True)
        if keep:
            prune_checkpoints(run_dir, keep)
    if collective:
        shard.barrier()
    return final


def prune_checkpoints(run_dir: Path, keep: int) -> list[Path]:
    """Delete all but the newest ``keep`` checkpoints (and leftovers of killed writes).

    Returns:
        The deleted directories.
    """
    ckpt_dir = Path(run_dir) / CHECKPOINT_DIR
    stale = checkpoints(run_dir)[:-keep] if keep > 0 else []
    stale += [p for p in ckpt_dir.glob("step_*.old") if p.is_dir()]
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def latest_checkpoint(run_dir: Path) -> Path:
    """The newest checkpoint of ``run_dir`` that passes :func:`verify_checkpoint`.

    Damaged newer ones are skipped with a warning naming them.

    Raises:
        FileNotFoundError: there is no valid checkpoint.
    """
    found = checkpoints(run_dir)
    bad = []
    for path in reversed(found):
        try:
            verify_checkpoint(path)
        except ValueError as err:
            bad.append(str(err))
            continue
        if bad:
            warnings.warn(f"skipping damaged checkpoint(s): {'; '.join(bad)}; resuming from {path}",
                          stacklevel=2)
        return path
    where = Path(run_dir) / CHECKPOINT_DIR
    detail = f" ({'; '.join(bad)})" if bad else ""
    raise FileNotFoundError(f"no valid checkpoint to resume from in {where}{detail}")


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
    try:
        dec = Decomposition.load(path, model)
    except (ValueError, FileNotFoundError):
        raise
    except Exception as err:  # noqa: BLE001 - a damaged file: OSError, SafetensorError, ...
        raise ValueError(f"{path}: the saved decomposition cannot be read ({err})") from err
    try:
        state = torch.load(path / TRAINER_STATE_FILE, weights_only=True)
        own = adversary_file(path, shard.rank)
        rank_state = torch.load(own, weights_only=True) if own.exists() else None
    except (OSError, RuntimeError, EOFError) as err:
        raise ValueError(f"{path}: the trainer state cannot be read ({err})") from err
    return dec, state, rank_state


def load_newest_valid(candidates: list[Path], model: nn.Module, shard: Shard
                      ) -> tuple[Path, Decomposition, dict[str, Any], dict[str, Any] | None]:
    """:func:`load_checkpoint` of the newest of ``candidates`` (oldest first, as
    :func:`checkpoints` lists them) that passes :func:`verify_checkpoint` and loads; damaged
    newer ones are skipped with a warning naming them.

    Returns:
        ``(path, decomposition, trainer_state, rank_state)``.

    Raises:
        FileNotFoundError: none is valid (the message lists why each was refused).
    """
    problems = []
    for path in reversed(candidates):
        try:
            verify_checkpoint(path)
            loaded = load_checkpoint(path, model, shard)
        except ValueError as err:
            problems.append(str(err))
            continue
        if problems:
            warnings.warn("skipping damaged checkpoint(s): " + "; ".join(problems)
                          + f"; resuming from {path}", stacklevel=3)
        return (path, *loaded)
    where = f" in {candidates[0].parent}" if candidates else ""
    raise FileNotFoundError(f"no valid checkpoint to resume from{where}"
                            + (f": {'; '.join(problems)}" if problems else ""))
