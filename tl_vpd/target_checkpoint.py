"""Checkpoints of target training (:func:`tl_vpd.target.train_target`): the weights at each
evaluation and, beside them, what a resumed run needs to continue exactly.

::

    run_dir/checkpoints/step_{k}.safetensors   the weights at step k
    run_dir/checkpoints/state_{k}.pt           optimiser, lr schedule, data position, curve and
                                               the run's identity (its arguments and data)

Both are written to a temporary name and renamed, so a kill never leaves a truncated file under
a real name; the two newest states are kept, and a damaged newest one falls back to the other.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tl_vpd.layout import CHECKPOINT_DIR

__all__ = ["restore", "save_model", "save_state"]


def save_model(model: nn.Module, path: Path) -> None:
    """Write ``model``'s weights to ``path`` (atomically)."""
    # safetensors refuses tensors that share memory, and TL buffers may; copies are tiny here.
    tensors = {name: t.detach().cpu().contiguous().clone() for name, t in model.state_dict().items()}
    # Write then rename, so a Ctrl-C mid-write never leaves a truncated file under the real name.
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp))
    os.replace(tmp, path)


def save_state(run_path: Path, step: int, state: dict) -> None:
    """``checkpoints/state_{step}.pt`` beside the weights; only the two newest are kept."""
    ckpt = run_path / CHECKPOINT_DIR
    tmp = ckpt / f"state_{step}.pt.tmp"
    torch.save({"step": step, **state}, tmp)
    os.replace(tmp, ckpt / f"state_{step}.pt")
    for old in _state_files(run_path)[:-2]:
        old.unlink(missing_ok=True)


def _state_files(run_path: Path) -> list[Path]:
    files = (run_path / CHECKPOINT_DIR).glob("state_*.pt")
    return sorted(files, key=lambda p: int(p.stem.split("_")[1]))


def restore(run_path, identity, model, optimizer, scheduler, stream) -> tuple[int, list[dict]]:
    """Load the newest readable checkpoint of an unfinished run; ``(0, [])`` if there is none."""
    problems = []
    for path in reversed(_state_files(run_path)):
        try:
            state = torch.load(path, weights_only=True)
            weights = load_file(str(path.with_name(f"step_{state['step']}.safetensors")))
        except Exception as err:  # noqa: BLE001 - a damaged file: try the one before
            problems.append(f"{path}: {err}")
            continue
        if state["identity"] != identity:
            diff = sorted(k for k in identity if state["identity"].get(k) != identity[k])
            raise ValueError(f"{run_path} holds an unfinished run with other {diff}; resume only "
                             "continues the same run (use another run_dir, or delete it).")
        model.load_state_dict(weights)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        stream.load_state_dict(state["stream"])
        print(f"resuming target training at step {state['step']} from {path}", file=sys.stderr)
        return state["step"], list(state["curve"])
    if problems:
        print("no readable target checkpoint (" + "; ".join(problems) + "); starting over",
              file=sys.stderr)
    return 0, []


