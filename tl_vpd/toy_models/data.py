"""Sparse-feature data for the toy targets (SPD paper, Appendix A.4).

Each feature is active independently with probability ``p`` and then takes a value drawn
uniformly from ``[low, high]``; inactive features are 0 (the reference implementation's
``at_least_zero_active``: a batch row may have no active feature).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tl_vpd._typing import Float

__all__ = ["SparseFeatures", "one_hot_inputs"]


@dataclass(frozen=True)
class SparseFeatures:
    """A callable ``data(batch_size, generator) -> [batch, n_features]`` for :func:`decompose`.

    Attributes:
        n_features: number of input features.
        p: probability that a feature is active.
        low, high: the range of an active feature's value.
    """

    n_features: int
    p: float
    low: float = 0.0
    high: float = 1.0

    def __call__(self, batch_size: int, generator: torch.Generator | None = None
                 ) -> Float[torch.Tensor, "batch n_features"]:
        shape = (batch_size, self.n_features)
        active = torch.rand(shape, generator=generator) < self.p
        values = self.low + (self.high - self.low) * torch.rand(shape, generator=generator)
        return torch.where(active, values, torch.zeros(()))


def one_hot_inputs(n_features: int, magnitude: float = 0.75) -> Float[torch.Tensor, "n_features n_features"]:
    """Row ``i`` is feature ``i`` alone at ``magnitude`` (the SPD paper's CI plots use 0.75)."""
    return magnitude * torch.eye(n_features)
