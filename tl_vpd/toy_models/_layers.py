"""The one building block of the toy targets: a linear map between two hook points.

``HookedLinear`` computes ``hook_out(hook_in(x) @ W.T + b)``, so ``hook_in`` carries exactly a
site's input and ``hook_out`` exactly its output ``x @ W.T + b`` — the contract of
:class:`~tl_vpd.backends.HookPointSiteSpec`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformer_lens.hook_points import HookPoint

from tl_vpd._typing import Float

__all__ = ["HookedLinear", "linear_init"]


def linear_init(d_out: int, d_in: int, generator: torch.Generator) -> torch.Tensor:
    """``nn.Linear``'s default weight init, ``U(-1/√d_in, 1/√d_in)``, from ``generator``."""
    bound = 1.0 / math.sqrt(d_in)
    return (torch.rand(d_out, d_in, generator=generator) * 2 - 1) * bound


class HookedLinear(nn.Module):
    """``x ↦ x @ W.T + b`` with hook points on its input and output.

    Arguments:
        d_in, d_out: widths.
        weight: the initial ``W [d_out, d_in]``, or ``None`` when the weight is passed to
            :meth:`forward` (tied weights, e.g. TMS's ``linear2 = linear1ᵀ``).
        bias: the initial bias ``[d_out]``, or ``None`` for no bias.
        trainable: whether ``W`` is trained (fixed identity matrices are not).
    """

    def __init__(self, d_in: int, d_out: int, weight: torch.Tensor | None,
                 bias: torch.Tensor | None = None, trainable: bool = True):
        super().__init__()
        self.d_in, self.d_out = d_in, d_out
        self.W = None if weight is None else nn.Parameter(weight.clone(), requires_grad=trainable)
        self.b = None if bias is None else nn.Parameter(bias.clone())
        self.hook_in = HookPoint()  # [batch, d_in]
        self.hook_out = HookPoint()  # [batch, d_out]

    def forward(self, x: Float[torch.Tensor, "batch d_in"],
                weight: Float[torch.Tensor, "d_out d_in"] | None = None
                ) -> Float[torch.Tensor, "batch d_out"]:
        W = self.W if weight is None else weight
        if W is None:
            raise ValueError("this HookedLinear has tied weights: pass `weight` to forward")
        return self.hook_out(F.linear(self.hook_in(x), W, self.b))
