"""Saving and loading decompositions: safetensors for tensors, JSON for everything else.

Layout of a saved directory (file names are constants so tools can rely on them)::

    decomposition.json     construction spec, site shapes, target fingerprint, library version
    components.safetensors U and V of every site
    ci_fn.safetensors      the causal-importance function's parameters

No pickle anywhere. The target model is not saved; :func:`load` needs it, and refuses a model
whose decomposed weights differ from the one the decomposition was trained on.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = ["CI_FILE", "COMPONENTS_FILE", "SPEC_FILE", "fingerprint", "load", "save"]

SPEC_FILE = "decomposition.json"
COMPONENTS_FILE = "components.safetensors"
CI_FILE = "ci_fn.safetensors"
FORMAT_VERSION = 1


def fingerprint(dec) -> dict[str, list[float]]:
    """Per-site summary of the target's weights: shape-sensitive and position-sensitive sums."""
    out = {}
    for name in dec.sites:
        W = dec.target_weight(name).detach().to(torch.float64).cpu()
        ramp = torch.linspace(-1.0, 1.0, W.numel(), dtype=torch.float64).view_as(W)
        out[name] = [float(W.shape[0]), float(W.shape[1]), W.sum().item(),
                     W.abs().sum().item(), (W * ramp).sum().item()]
    return out


def save(dec, path) -> Path:
    """Write ``dec`` to the directory ``path`` (created if needed)."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    comps = dec.components
    tensors = {}
    for name, c in comps.items():
        tensors[f"{name}.U"] = c.U.detach().contiguous().cpu()
        tensors[f"{name}.V"] = c.V.detach().contiguous().cpu()
    save_file(tensors, str(path / COMPONENTS_FILE))
    save_file({k: v.detach().contiguous().cpu() for k, v in dec.ci_fn.state_dict().items()},
              str(path / CI_FILE))
    from tl_vpd import __version__

    meta = {
        "format_version": FORMAT_VERSION,
        "tl_vpd_version": __version__,
        "backend": dec.backend.name,
        "target_type": type(dec.model).__name__,
        "spec": dec.spec.to_dict(),
        "site_shapes": {n: [c.d_out, c.d_in, c.C] for n, c in comps.items()},
        "fingerprint": fingerprint(dec),
        "extra": getattr(dec, "extra", {}),
        "config": None if getattr(dec, "config", None) is None else dec.config.to_dict(),
    }
    (path / SPEC_FILE).write_text(json.dumps(meta, indent=2))
    return path


def load(path, model: nn.Module):
    """Restore a decomposition saved with :func:`save` onto ``model``.

    Raises:
        FileNotFoundError: ``path`` is not a saved decomposition.
        ValueError: ``model`` is not the target it was trained on (different sites, shapes or
            weights).
    """
    from tl_vpd.decomposition import Decomposition

    path = Path(path)
    if not (path / SPEC_FILE).exists():
        raise FileNotFoundError(f"{path} holds no {SPEC_FILE}; is it a saved decomposition?")
    meta = json.loads((path / SPEC_FILE).read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format version {meta.get('format_version')} is not supported")
    spec = dict(meta["spec"])
    sites = spec.pop("sites")
    dec = Decomposition.from_model(model, sites=sites, **spec)
    if dec.sites != sites:
        raise ValueError(f"the model's sites {dec.sites} differ from the saved ones {sites}")
    fp = fingerprint(dec)
    for name, saved in meta["fingerprint"].items():
        now = fp[name]
        if now[:2] != saved[:2] or any(
            not math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-6) for a, b in zip(now[2:], saved[2:])
        ):
            raise ValueError(
                f"this model is not the decomposition's target: the weights of site {name} "
                f"differ (fingerprint {saved} saved, {now} now)"
            )
    tensors = load_file(str(path / COMPONENTS_FILE))
    with torch.no_grad():
        for name, c in dec.components.items():
            c.U.copy_(tensors[f"{name}.U"])
            c.V.copy_(tensors[f"{name}.V"])
    dec.ci_fn.load_state_dict(load_file(str(path / CI_FILE)))
    dec.extra = meta.get("extra", {})
    if meta.get("config") is not None:
        from tl_vpd.config import VPDConfig

        dec.config = VPDConfig.from_dict(meta["config"])
    return dec
