"""The on-disk format of a saved decomposition: safetensors for tensors, JSON for the rest.

Layout of a saved directory (file names are constants so tools can rely on them)::

    decomposition.json     construction spec, site shapes, target fingerprints, library version
    components.safetensors U and V of every site ("{site}.U", "{site}.V")
    ci_fn.safetensors      the causal-importance function's parameters

No pickle anywhere. This module only reads and writes the format; building a
:class:`~tl_vpd.Decomposition` from it is :meth:`tl_vpd.Decomposition.load` (``tl_vpd.load``).
The target model is not saved: the loader needs it and refuses a model whose decomposed weights
(:func:`check_fingerprint`) or, from format version 2, any of whose parameters
(:func:`tl_vpd.identity.model_fingerprint`) differ from the one the decomposition was trained on.
Every reader here names the file it read in its errors; checking the contents against a model is
:mod:`tl_vpd.load_checks`.

Format versions: 1 has per-site fingerprints only; 2 adds ``model_fingerprint`` (every parameter
of the target). Both are read.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from tl_vpd import atomic
from tl_vpd._typing import Float

__all__ = [
    "CI_FILE",
    "COMPONENTS_FILE",
    "FORMAT_VERSION",
    "SPEC_FILE",
    "SUPPORTED_VERSIONS",
    "check_fingerprint",
    "fingerprint",
    "read_ci_state",
    "read_components",
    "read_header",
    "read_metadata",
    "read_tensors",
    "write_decomposition",
]

SPEC_FILE = "decomposition.json"
COMPONENTS_FILE = "components.safetensors"
CI_FILE = "ci_fn.safetensors"
FORMAT_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)

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
    """Raise ``ValueError`` unless every saved site's fingerprint matches ``now``'s (a saved site
    missing from ``now`` counts as differing)."""
    for name, old in saved.items():
        new = now.get(name)
        if new is None:
            raise ValueError(f"this model is not the decomposition's target: it has no site {name}")
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
    """The metadata of a saved decomposition (only its JSON and format version are checked here;
    :func:`tl_vpd.load_checks.read_checked` checks its contents).

    Raises:
        FileNotFoundError: ``path`` is not a saved decomposition.
        ValueError: the file is not a JSON object, has no ``format_version``, or was written in an
            unsupported format version.
    """
    file = Path(path) / SPEC_FILE
    if not file.is_file():
        raise FileNotFoundError(f"{Path(path)} holds no {SPEC_FILE}; is it a saved decomposition?")
    try:
        meta = json.loads(file.read_text())
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{file} is not valid JSON ({e}): the file is truncated or corrupt; "
                         "save the decomposition again") from None
    if not isinstance(meta, dict):
        raise ValueError(f"{file} holds a JSON {type(meta).__name__}, not an object: it is not a "
                         "saved decomposition's metadata")
    if "format_version" not in meta:
        raise ValueError(f"{file} has no 'format_version': it is not a saved decomposition's "
                         "metadata, or it was edited; save the decomposition again")
    version = meta["format_version"]
    if isinstance(version, bool) or version not in SUPPORTED_VERSIONS:
        raise ValueError(f"{file}: format version {version!r} is not supported (this tl_vpd reads "
                         f"versions {list(SUPPORTED_VERSIONS)}); load it with the tl_vpd that "
                         "wrote it")
    return meta


def read_header(file: str | Path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The tensors a safetensors file holds, from its header only (no tensor data is read).

    Arguments:
        file: the ``.safetensors`` file.

    Returns:
        ``{key: (dtype, shape)}``, dtype as safetensors names it (``"F32"``, ``"BF16"``, ...).

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: the file is truncated or corrupt.
    """
    def read():
        with safe_open(str(file), framework="pt") as f:
            return {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape()))
                    for k in f.keys()}
    return _guarded(file, read)


def read_tensors(file: str | Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, on the CPU.

    Raises:
        FileNotFoundError: the file is missing.
        ValueError: the file is truncated or corrupt.
    """
    return _guarded(file, lambda: load_file(str(file)))


def _guarded(file: str | Path, read):
    """``read()``, with the safetensors and OS errors of a bad file turned into errors that name
    it (a directory in the file's place, a truncated or overwritten file, ...)."""
    file = Path(file)
    if not file.is_file():
        raise FileNotFoundError(f"{file} is missing (or not a file): a saved decomposition holds "
                                f"{SPEC_FILE}, {COMPONENTS_FILE} and {CI_FILE}; save it again")
    try:
        return read()
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise ValueError(f"{file} is truncated or corrupt ({e}); save the decomposition "
                         "again") from None


def read_components(path: str | Path, sites: list[str]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """``{site: (U, V)}`` of a saved decomposition, for the given sites (shapes unchecked; see
    :mod:`tl_vpd.load_checks`).

    Raises:
        ValueError: the file is truncated or corrupt, or lacks a site's tensor.
    """
    file = Path(path) / COMPONENTS_FILE
    tensors = read_tensors(file)
    missing = [k for n in sites for k in (f"{n}.U", f"{n}.V") if k not in tensors]
    if missing:
        raise ValueError(f"{file} lacks the tensor(s) {missing}: the file is corrupt or belongs "
                         "to another decomposition")
    return {name: (tensors[f"{name}.U"], tensors[f"{name}.V"]) for name in sites}


def read_ci_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The CI function's saved ``state_dict``."""
    return read_tensors(Path(path) / CI_FILE)
