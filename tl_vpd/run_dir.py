"""A decomposition run directory knows which run it holds, and refuses to mix two.

``run.json`` records the run's identity when it starts: the config fields that decide what it
computes (:func:`tl_vpd.identity.config_identity`), a fingerprint of the data and of the whole
target. :func:`claim` is called by :func:`tl_vpd.decompose` before anything is written:

- an empty (or new) directory is claimed for this run;
- a directory holding this same run is resumed with ``resume=True``, and refused without it (a
  fresh start would overwrite its checkpoints);
- a directory holding another run (or anything this run cannot tell apart from one) is refused
  with what differs and what to do.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from tl_vpd import atomic, identity
from tl_vpd.checkpoint import checkpoints
from tl_vpd.config import VPDConfig
from tl_vpd.layout import CHECKPOINT_DIR, DECOMP_CONFIG_FILE, DECOMPOSITION_DIR, RUN_FILE

__all__ = ["RunMismatchError", "claim", "run_identity"]


class RunMismatchError(ValueError):
    """The run directory holds another run, or a run that may not be continued this way."""


def run_identity(cfg: VPDConfig, model: nn.Module, data) -> dict:
    """The identity recorded in ``run.json``: config, data and target fingerprints."""
    return {"config": identity.config_identity(cfg.to_dict()),
            "data": identity.data_fingerprint(data),
            "target": identity.model_fingerprint(model)}


def _differences(saved: dict, now: dict) -> list[str]:
    out = []
    old_cfg, new_cfg = saved.get("config", {}), now["config"]
    for key in sorted(set(old_cfg) | set(new_cfg)):
        if old_cfg.get(key) != new_cfg.get(key):
            out.append(f"config {key}: {old_cfg.get(key)!r} in the directory, {new_cfg.get(key)!r} now")
    if saved.get("data") != now["data"]:
        out.append(f"the data (fingerprint {saved.get('data')} in the directory, {now['data']} now)")
    params = identity.differing_parameters(saved.get("target", {}), now["target"])
    if params:
        shown = ", ".join(params[:4]) + (f" and {len(params) - 4} more" if len(params) > 4 else "")
        out.append(f"the target model (parameters {shown} differ)")
    return out


def _contents(run_dir: Path) -> list[str]:
    names = [n for n in (CHECKPOINT_DIR, DECOMPOSITION_DIR, DECOMP_CONFIG_FILE)
             if (run_dir / n).exists()]
    return names


def claim(run_dir: str | Path, cfg: VPDConfig, model: nn.Module, data, resume: bool) -> bool:
    """Check ``run_dir`` may hold this run, record its identity, and say whether to resume.

    Arguments:
        run_dir: the run directory (created if missing).
        cfg, model, data: the run's config, target and training data.
        resume: the caller asked to continue the run in ``run_dir``.

    Returns:
        Whether there is a checkpoint to resume from (only ever true with ``resume``).

    Raises:
        RunMismatchError: the directory holds another run, or this run without ``resume``.
    """
    run_dir = Path(run_dir)
    now = run_identity(cfg, model, data)
    path = run_dir / RUN_FILE
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
        except ValueError as err:
            raise RunMismatchError(f"{path} is unreadable ({err}); use another run_dir") from err
        diff = _differences(saved, now)
        if diff:
            raise RunMismatchError(
                f"{run_dir} holds another run: " + "; ".join(diff) + ". Use another run_dir, or "
                "delete this one to start over" + (" (resume continues only the same run)"
                                                   if resume else ""))
    else:
        held = _contents(run_dir) if run_dir.is_dir() else []
        if held:
            raise RunMismatchError(
                f"{run_dir} holds {held} but no {RUN_FILE} (a run of an older tl_vpd, or "
                "something else): its identity cannot be checked. Use another run_dir")
    found = bool(checkpoints(run_dir)) or (run_dir / DECOMPOSITION_DIR).is_dir()
    if found and not resume:
        raise RunMismatchError(
            f"{run_dir} already holds this run's checkpoints; pass resume=True to continue it "
            "(`tl-vpd decompose` does so by itself), or use another run_dir to start afresh")
    run_dir.mkdir(parents=True, exist_ok=True)
    if not path.is_file():
        atomic.write_text(path, json.dumps(now) + "\n")
        cfg.to_file(run_dir / DECOMP_CONFIG_FILE)
    return resume and bool(checkpoints(run_dir))
