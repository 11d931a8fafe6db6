"""Run-time settings for the toy models' small tensors."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["single_threaded"]


@contextlib.contextmanager
def single_threaded() -> Iterator[None]:
    """Use one intra-op thread inside the block, restoring the previous count after.

    Toy models multiply matrices of a few thousand entries, where thread synchronisation costs
    far more than it saves: on a loaded 2-core machine one thread ran a TMS training step 20x
    faster and a residual-MLP step 8x faster than two.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
