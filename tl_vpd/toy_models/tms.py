"""Toy Model of Superposition (Elhage et al. 2022), with or without a hidden identity.

``x̂ = ReLU(W₁ᵀ I W₁ x + b)`` with ``W₁ [n_hidden, n_features]`` (SPD paper §3.1–3.2). The up
projection is tied to the down projection (``linear2.W = linear1.Wᵀ``); the optional identity
``hidden_layers.0`` is fixed at ``I`` and never trained (SPD paper §3.2).

Sites (the SPD paper decomposes every matrix): ``linear1`` ``[n_hidden, n_features]``,
``linear2`` ``[n_features, n_hidden]`` (its bias ``b`` is not decomposed), and
``hidden_layers.0`` ``[n_hidden, n_hidden]`` for the identity variants.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from transformer_lens import HookedRootModule

from tl_vpd._typing import Float
from tl_vpd.backends.hookpoints import HookPointSiteSpec
from tl_vpd.toy_models._layers import HookedLinear
from tl_vpd.toy_models._runtime import fit_regression
from tl_vpd.toy_models.data import SparseFeatures

__all__ = ["TMS", "TMS_FEATURE_PROBABILITY", "tms_data", "train_tms", "with_identity"]

TMS_FEATURE_PROBABILITY = 0.05  # SPD paper A.4.1


class TMS(HookedRootModule):
    """The TMS target. Build a trained one with :func:`train_tms`.

    Arguments:
        n_features: input/output width (5 or 40 in the SPD paper).
        n_hidden: bottleneck width (2 or 10).
        identity: insert the fixed identity ``hidden_layers.0`` between the projections.
        seed: seeds the initial weights: Xavier-normal ``W`` and zero ``b``, Elhage et al.'s
            choice. (With ``nn.Linear``'s default init, 4 of 6 seeds of TMS 5-2 lost 1-3
            features to dead directions; with this init all 6 learned the pentagon.)
    """

    def __init__(self, n_features: int, n_hidden: int, identity: bool = False, seed: int = 0):
        super().__init__()
        self.n_features, self.n_hidden, self.identity = n_features, n_hidden, identity
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(n_hidden, n_features, generator=g) * math.sqrt(2.0 / (n_features + n_hidden))
        self.linear1 = HookedLinear(n_features, n_hidden, W)
        self.hidden_layers = nn.ModuleList(
            [HookedLinear(n_hidden, n_hidden, torch.eye(n_hidden), trainable=False)] if identity else [])
        self.linear2 = HookedLinear(n_hidden, n_features, None, torch.zeros(n_features))  # W = linear1.Wᵀ
        self.setup()

    @property
    def W(self) -> Float[torch.Tensor, "n_hidden n_features"]:
        """The embedding matrix whose columns are the features' directions (``linear1``)."""
        return self.linear1.W

    def forward(self, x: Float[torch.Tensor, "batch n_features"]) -> Float[torch.Tensor, "batch n_features"]:
        h = self.linear1(x)
        for layer in self.hidden_layers:
            h = layer(h)
        return F.relu(self.linear2(h, weight=self.linear1.W.T))

    def vpd_sites(self) -> list[HookPointSiteSpec]:
        sites = [HookPointSiteSpec("linear1", lambda: self.linear1.W, lambda: None,
                                   "linear1.hook_in", "linear1.hook_out", kind="linear1")]
        for i, layer in enumerate(self.hidden_layers):
            sites.append(HookPointSiteSpec(f"hidden_layers.{i}", lambda layer=layer: layer.W,
                                           lambda: None, f"hidden_layers.{i}.hook_in",
                                           f"hidden_layers.{i}.hook_out", kind="identity"))
        sites.append(HookPointSiteSpec("linear2", lambda: self.linear1.W.T, lambda: self.linear2.b,
                                       "linear2.hook_in", "linear2.hook_out", kind="linear2"))
        return sites

    def __repr__(self) -> str:
        return (f"TMS(n_features={self.n_features}, n_hidden={self.n_hidden}, "
                f"identity={self.identity})")


def tms_data(n_features: int, p: float = TMS_FEATURE_PROBABILITY) -> SparseFeatures:
    """TMS inputs: each feature active with probability ``p`` (0.05), value ``U(0, 1)``."""
    return SparseFeatures(n_features, p, 0.0, 1.0)


def train_tms(
    n_features: int,
    n_hidden: int,
    *,
    identity: bool = False,
    seed: int = 0,
    steps: int = 10_000,
    batch_size: int | None = None,
    lr: float = 5e-3,
    weight_decay: float = 0.01,
    p: float = TMS_FEATURE_PROBABILITY,
) -> TMS:
    """Train a TMS target to reconstruct its input (SPD paper A.4.1).

    Arguments:
        n_features, n_hidden, identity: the architecture (see :class:`TMS`).
        seed: seeds the initial weights and the data; the result is deterministic.
        steps: 10k in the paper.
        batch_size: 1024 for 5-2, 8192 for 40-10 in the paper (the default picks by size).
        lr, weight_decay: AdamW, constant learning rate 5e-3, weight decay 0.01 (paper).
        p: feature probability (0.05).

    Returns:
        The trained model, with its parameters frozen (``requires_grad=False``).
    """
    batch_size = batch_size or (1024 if n_features <= 5 else 8192)
    model = TMS(n_features, n_hidden, identity=identity, seed=seed)
    data = tms_data(n_features, p)
    return fit_regression(model, data, lambda x: x, steps=steps, batch_size=batch_size, lr=lr,
                          weight_decay=weight_decay, seed=seed, cosine=False)


def with_identity(target: TMS) -> TMS:
    """The trained ``target`` with the fixed identity ``hidden_layers.0`` inserted (frozen).

    The identity is never trained and ``h I = h`` holds exactly in floating point, so training
    ``TMS(identity=True)`` from a seed gives bit for bit the weights ``TMS(identity=False)`` gets
    from it: this is the identity variant's target without a second training run (the SPD
    paper's §3.2 model, whose ``W`` and ``b`` are the plain TMS's).
    """
    if target.identity:
        raise ValueError("with_identity needs a TMS without the identity layer; this one has it")
    out = TMS(target.n_features, target.n_hidden, identity=True)
    with torch.no_grad():
        out.linear1.W.copy_(target.linear1.W)
        out.linear2.b.copy_(target.linear2.b)
    for q in out.parameters():
        q.requires_grad_(False)
    return out.eval()
