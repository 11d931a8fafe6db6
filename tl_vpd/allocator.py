"""Keep freed CPU memory in the process for reuse (glibc's allocator on Linux).

A training step allocates and frees the same large tensors on every pass: logits and their
log-softmax ``[tokens, vocab]``, masks ``[tokens, C]`` per site, activations. By default glibc
serves requests above its mmap threshold with fresh ``mmap`` pages and gives freed memory at the
top of its heap back to the kernel once it exceeds the trim threshold, so the next pass
page-faults every page in again (4 KiB at a time, each zeroed by the kernel). On the default main
job's decomposition that was ~80,000 minor page faults per step.

:func:`keep_freed_memory` turns glibc's use of ``mmap`` for large requests off, so every tensor
comes from the heap (its mmap threshold cannot be raised above 32 MiB, and the evaluation's and
the target training's logits are 32–64 MiB), and sets the trim threshold to its largest, so
freed memory stays mapped and the next allocation reuses warm pages. The cost: the process's
RSS does not fall back after its peak, and the peak itself rose by 5–10% where measured (heap
fragmentation). It is process-wide and cannot be undone, so the library applies it only where it
runs heavy CPU work (decomposition training on CPU, target training, evaluation), once.
``TL_VPD_KEEP_FREED_MEMORY=0`` in the environment turns it off; anything other than glibc on
Linux is left alone. ``benchmarks/train_step.py --malloc both`` measures the difference.
"""

from __future__ import annotations

import ctypes
import os
import sys

import torch

__all__ = ["ENV_VAR", "keep_freed_memory"]

ENV_VAR = "TL_VPD_KEEP_FREED_MEMORY"

# mallopt parameters (glibc <malloc.h>).
_M_TRIM_THRESHOLD = -1
_M_TOP_PAD = -2
_M_MMAP_MAX = -4
_TRIM_THRESHOLD = (1 << 31) - 1  # mallopt takes an int
_TOP_PAD = 256 << 20  # grow the heap in 256 MiB steps (virtual; pages are touched on use)

_applied: bool | None = None


def _disabled() -> bool:
    return os.environ.get(ENV_VAR, "1").strip().lower() in ("0", "false", "no", "off")


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        version = os.confstr("CS_GNU_LIBC_VERSION")  # "glibc 2.36"; musl has none
    except (ValueError, OSError):
        return None
    if not version or not version.startswith("glibc"):
        return None
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return None
    return libc if hasattr(libc, "mallopt") else None


def keep_freed_memory(device: "torch.device | str | None" = None) -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the kernel (see the
    module docstring). Idempotent; the first call on CPU decides.

    Arguments:
        device: where the heavy work runs; on any other device than the CPU (or ``None``, the
            CPU) this returns ``False`` and leaves the allocator alone.

    Returns:
        Whether the setting is in effect: ``False`` when ``TL_VPD_KEEP_FREED_MEMORY=0``, off
        Linux/glibc, if glibc refused a parameter, or for a non-CPU ``device``.
    """
    global _applied
    if device is not None and torch.device(device).type != "cpu":
        return False
    if _applied is not None:
        return _applied
    _applied = False
    if _disabled():
        return False
    libc = _glibc()
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = all(mallopt(param, value) == 1 for param, value in (
        (_M_MMAP_MAX, 0),
        (_M_TRIM_THRESHOLD, _TRIM_THRESHOLD),
        (_M_TOP_PAD, _TOP_PAD)))
    _applied = ok
    return ok
