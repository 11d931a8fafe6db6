"""Run-time settings for the toy models' small tensors."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch

__all__ = ["fit_regression", "single_threaded"]


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


def fit_regression(model: torch.nn.Module, data, target_fn, *, steps: int, batch_size: int,
                   lr: float, weight_decay: float, seed: int, cosine: bool) -> torch.nn.Module:
    """Train a toy target on ``MSE(model(x), target_fn(x))`` with AdamW, single-threaded.

    Batches come from ``data(batch_size, generator)`` with a generator seeded from ``seed``;
    ``cosine`` decays the learning rate to 0 over ``steps`` (else it is constant). Returns the
    model in eval mode with its parameters frozen.
    """
    gen = torch.Generator().manual_seed(seed + 10_000)
    params = [q for q in model.parameters() if q.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    with single_threaded():
        for step in range(steps):
            if cosine:
                for group in opt.param_groups:
                    group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / max(steps - 1, 1)))
            x = data(batch_size, gen)
            loss = (model(x) - target_fn(x)).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    for q in model.parameters():
        q.requires_grad_(False)
    return model.eval()
