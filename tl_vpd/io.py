"""The on-disk format of a saved decomposition: safetensors for tensors, JSON for the rest.

Layout of a saved directory (file names are constants so tools can rely on them)::

    decomposition.json     construction spec, site shapes, target fingerprint, library version
    components.safetensors U and V of every site ("{site}.U", "{site}.V")
    ci_fn.safetensors      the causal-importance function's parameters

No pickle anywhere. This module only reads and writes the format; building a
:class:`~tl_vpd.Decomposition` from it is :meth:`tl_vpd.Decomposition.load` (``tl_vpd.load``).
The target model is not saved: the loader needs it and refuses a model whose decomposed weights
differ from the one the decomposition was trained on (see :func:`check_fingerprint`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from tl_vpd import atomic
from tl_vpd._typing import Float

__all__ = [
    "CI_FILE",
    "COMPONENTS_FILE",
    "FORMAT_VERSION",
    "SPEC_FILE",
    "check_fingerprint",
    "fingerprint",
    "read_ci_state",
    "read_components",
    "read_metadata",
    "write_decomposition",
]

SPEC_FILE = "decomposition.json"
COMPONENTS_FILE = "components.safetensors"
CI_FILE = "ci_fn.safetensors"
FORMAT_VERSION = 1

# A fingerprint's sums are recomputed on possibly another device or BLAS: equal up to rounding.
_FP_RTOL, _FP_ATOL = 1e-5, 1e-6


def fingerprint(weights: Mapping[str, Float[torch.Tensor, "d_out d_in"]]) -> dict[str, list[float]]:
    """Per-site summary of the target's weights: shape plus shape- and position-sensitive sums.

    Arguments:
        weights: ``{site: W}``, the target's decomposed matrices.

    Returns:
        ``{site: [d_out, d_in, sum W, sum |W|, sum W * ramp]}`` (``ramp`` is linear in the flat
        position, so a permutation of the weights changes it).
    """
    out = {}
    for name, W in weights.items():
        W = W.detach().to(torch.float64).cpu()
        ramp = torch.linspace(-1.0, 1.0, W.numel(), dtype=torch.float64).view_as(W)
        out[name] = [float(W.shape[0]), float(W.shape[1]), W.sum().item(),
                     W.abs().sum().item(), (W * ramp).sum().item()]
    return out


def check_fingerprint(saved: Mapping[str, list[float]], now: Mapping[str, list[float]]) -> None:
    """Raise ``ValueError`` unless every saved site's fingerprint matches ``now``'s."""
    for name, old in saved.items():
        new = now[name]
        if new[:2] != old[:2] or any(
            not math.isclose(a, b, rel_tol=_FP_RTOL, abs_tol=_FP_ATOL)
            for a, b in zip(new[2:], old[2:])
        ):
            raise ValueError(
                f"this model is not the decomposition's target: the weights of site {name} "
                f"differ (fingerprint {old} saved, {new} now)"
            )


def write_decomposition(
    path: str | Path,
    meta: Mapping,
    components: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    ci_state: Mapping[str, torch.Tensor],
) -> Path:
    """Write one saved decomposition to the directory ``path`` (created if needed).

    Arguments:
        path: The directory.
        meta: JSON-safe metadata (``format_version`` is added).
        components: ``{site: (U, V)}``.
        ci_state: The CI function's ``state_dict()``.

    Returns:
        ``path``.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for name, (U, V) in components.items():
        tensors[f"{name}.U"] = U.detach().contiguous().cpu()
        tensors[f"{name}.V"] = V.detach().contiguous().cpu()
    save_file(tensors, str(path / COMPONENTS_FILE))
    save_file({k: v.detach().contiguous().cpu() for k, v in ci_state.items()}, str(path / CI_FILE))
    atomic.write_text(path / SPEC_FILE, json.dumps({"format_version": FORMAT_VERSION, **meta}, indent=2))
    return path


def read_metadata(path: str | Path) -> dict:
    """The metadata of a saved decomposition.

    Raises:
        FileNotFoundError: ``path`` is not a saved decomposition.
        ValueError: it was written in an unsupported format version.
    """
    path = Path(path)
    if not (path / SPEC_FILE).exists():
        raise FileNotFoundError(f"{path} holds no {SPEC_FILE}; is it a saved decomposition?")
    meta = json.loads((path / SPEC_FILE).read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format version {meta.get('format_version')} is not supported")
    return meta


def read_components(path: str | Path, sites: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{site: (U, V)}`` of a saved decomposition, for the given sites."""
    tensors = load_file(str(Path(path) / COMPONENTS_FILE))
    return {name: (tensors[f"{name}.U"], tensors[f"{name}.V"]) for name in sites}


def read_ci_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The CI function's saved ``state_dict``."""
    return load_file(str(Path(path) / CI_FILE))
