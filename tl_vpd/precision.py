"""When the forward passes run in bf16 autocast, and the autocast context itself.

``"auto"`` turns bf16 autocast on for language models on hardware whose bf16 matmuls are fast:
CUDA devices that support bf16, and CPUs with native bf16 instructions (AVX-512-BF16 or AMX);
without them a CPU emulates bf16 and autocast would slow the step down. Parameters, optimiser
state, gradients and the losses stay fp32 either way (autocast only changes the dtype of the ops
it lists, matmuls first).
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["PRECISIONS", "autocast_context", "bf16_is_fast", "use_bf16"]

PRECISIONS = ("auto", "none", "bfloat16")


def bf16_is_fast(device: torch.device | str) -> bool:
    """True where bf16 matmuls run natively on ``device``."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = torch.cpu
        checks = [getattr(cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
        return any(check() for check in checks if check is not None)
    return False


def use_bf16(kind: str, device: torch.device | str, language_model: bool = True) -> bool:
    """Whether a run with precision ``kind`` (``"auto"``, ``"none"`` or ``"bfloat16"``) autocasts."""
    if kind not in PRECISIONS:
        raise ValueError(f"autocast must be one of {PRECISIONS}, got {kind!r}")
    if kind == "auto":
        return language_model and bf16_is_fast(device)
    return kind == "bfloat16"


def autocast_context(device: torch.device | str, enabled: bool) -> contextlib.AbstractContextManager:
    """A fresh bf16 autocast context on ``device`` (a no-op when not ``enabled``)."""
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=enabled)
