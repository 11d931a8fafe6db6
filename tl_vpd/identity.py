"""What a run or a saved decomposition is *of*: fingerprints of a whole model, of data, of a config.

Used to refuse mixing things that do not belong together: resuming a run with other data or
another target, starting a run in a directory that holds another one (:mod:`tl_vpd.checkpoint`),
loading a decomposition onto a model that is not its target (:mod:`tl_vpd.io`).

A model's fingerprint summarises every parameter (embeddings, norms, biases, not only the
decomposed matrices) by sums that are position-sensitive and survive a move to another device or
BLAS up to rounding, so they are compared with a tolerance rather than hashed.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping

import torch
from torch import nn

__all__ = [
    "IDENTITY_EXEMPT_FIELDS",
    "config_identity",
    "data_fingerprint",
    "differing_parameters",
    "model_fingerprint",
]

# VPDConfig fields that change what a run shows or how often it saves, never what it computes:
# a resumed run may change them.
IDENTITY_EXEMPT_FIELDS = frozenset({
    "progress", "log_every", "eval_every", "checkpoint_every", "keep_checkpoints",
    "wandb_project",
})

_RTOL, _ATOL = 1e-5, 1e-6
_BLOCK = 1 << 20


def model_fingerprint(model: nn.Module) -> dict[str, list[float]]:
    """``{name: [numel, sum, sum |p|, sum p * ramp]}`` for every named parameter of ``model``.

    ``ramp`` is linear in the flat position (from -1 to 1), so a permutation of a parameter
    changes it. Sums are taken in float64 over blocks of ``_BLOCK`` entries, so a large model
    never needs a float64 copy of a whole parameter.
    """
    out = {}
    for name, p in model.named_parameters():
        flat = p.detach().reshape(-1)
        n = flat.numel()
        total = absolute = ramped = 0.0
        for start in range(0, n, _BLOCK):
            block = flat[start:start + _BLOCK].to("cpu", torch.float64)
            ramp = torch.arange(start, start + block.numel(), dtype=torch.float64)
            ramp = ramp.mul_(2.0 / max(n - 1, 1)).sub_(1.0)
            total += block.sum().item()
            absolute += block.abs().sum().item()
            ramped += (block * ramp).sum().item()
        out[name] = [float(n), total, absolute, ramped]
    return out


def differing_parameters(saved: Mapping[str, list[float]], now: Mapping[str, list[float]]
                         ) -> list[str]:
    """Names of parameters whose fingerprints differ (missing on either side counts)."""
    out = sorted(set(saved) ^ set(now))
    for name in sorted(set(saved) & set(now)):
        old, new = saved[name], now[name]
        if len(old) != len(new) or old[0] != new[0] or any(
                not math.isclose(a, b, rel_tol=_RTOL, abs_tol=_ATOL) for a, b in zip(old[1:], new[1:])):
            out.append(name)
    return out


def data_fingerprint(data) -> str | None:
    """A short string identifying ``data``, or ``None`` when it cannot be identified without
    consuming it (a plain iterable of batches).

    Tensors are hashed (shape, dtype, bytes); a ``datasets.Dataset`` gives its own fingerprint;
    a callable (toy data) its qualified name.
    """
    if torch.is_tensor(data):
        t = data.detach().cpu().contiguous()
        h = hashlib.sha256(f"{tuple(t.shape)}|{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
        return "tensor:" + h.hexdigest()[:32]
    fp = getattr(data, "_fingerprint", None)
    if isinstance(fp, str):
        return "datasets:" + fp
    if callable(data):
        fn = getattr(data, "__func__", data)
        return "callable:" + f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
    return None


def config_identity(cfg_dict: Mapping) -> dict:
    """The fields of a config dict (``VPDConfig.to_dict()``) that decide what a run computes."""
    return {k: v for k, v in cfg_dict.items() if k not in IDENTITY_EXEMPT_FIELDS}
