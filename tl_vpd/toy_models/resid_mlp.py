"""Toy Models of Compressed Computation and Cross-Layer Distributed Representations.

A residual MLP (Braun et al. 2025; SPD paper §3.3–3.4, A.4.2): a fixed random embedding
``W_E [n_features, d_embed]`` with unit-norm rows, ``n_layers`` ReLU MLP blocks without biases
added to the residual stream, and the unembedding ``W_U = W_Eᵀ``. It is trained so that output
``i`` approximates ``x_i + ReLU(x_i)`` for sparse inputs ``x_i ∈ [-1, 1]``: more ReLUs than it
has neurons (100 functions, 50 neurons).

Sites, with TransformerLens names and hook points (matrices stored ``[d_out, d_in]`` as in
``nn.Linear`` and the SPD paper, the transpose of TransformerLens's ``W_in``/``W_out``):

* ``blocks.{l}.mlp.W_in`` ``[d_mlp, d_embed]``: ``blocks.{l}.hook_resid_pre`` → ``blocks.{l}.mlp.hook_pre``;
* ``blocks.{l}.mlp.W_out`` ``[d_embed, d_mlp]``: ``blocks.{l}.mlp.hook_post`` → ``blocks.{l}.hook_mlp_out``.

The embedding is not decomposed.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from tl_vpd._typing import Float
from tl_vpd.backends.hookpoints import HookPointSiteSpec
from tl_vpd.toy_models._layers import linear_init
from tl_vpd.toy_models._runtime import fit_regression
from tl_vpd.toy_models.data import SparseFeatures

__all__ = ["ResidualMLP", "RESID_MLP_FEATURE_PROBABILITY", "resid_mlp_data", "resid_mlp_labels",
           "train_resid_mlp"]

RESID_MLP_FEATURE_PROBABILITY = 0.01  # SPD paper A.4.2


class MLP(nn.Module):
    """``W_out ReLU(W_in x)``, no biases (the reference implementation's setting)."""

    def __init__(self, d_embed: int, d_mlp: int, generator: torch.Generator):
        super().__init__()
        self.W_in = nn.Parameter(linear_init(d_mlp, d_embed, generator))  # [d_mlp, d_embed]
        self.W_out = nn.Parameter(linear_init(d_embed, d_mlp, generator))  # [d_embed, d_mlp]
        self.hook_pre = HookPoint()  # [batch, d_mlp]
        self.hook_post = HookPoint()  # [batch, d_mlp]

    def forward(self, x: Float[torch.Tensor, "batch d_embed"]) -> Float[torch.Tensor, "batch d_embed"]:
        post = self.hook_post(F.relu(self.hook_pre(F.linear(x, self.W_in))))
        return F.linear(post, self.W_out)


class ResidBlock(nn.Module):
    def __init__(self, d_embed: int, d_mlp: int, generator: torch.Generator):
        super().__init__()
        self.hook_resid_pre = HookPoint()  # [batch, d_embed]
        self.mlp = MLP(d_embed, d_mlp, generator)
        self.hook_mlp_out = HookPoint()  # [batch, d_embed]
        self.hook_resid_post = HookPoint()  # [batch, d_embed]

    def forward(self, resid: Float[torch.Tensor, "batch d_embed"]) -> Float[torch.Tensor, "batch d_embed"]:
        resid = self.hook_resid_pre(resid)
        return self.hook_resid_post(resid + self.hook_mlp_out(self.mlp(resid)))


class ResidualMLP(HookedRootModule):
    """The residual-MLP target. Build a trained one with :func:`train_resid_mlp`.

    Arguments:
        n_features: 100 (1 and 2 layers) or 102 (3 layers) in the SPD paper.
        d_embed: residual width (1000).
        d_mlp: neurons per layer (50, 25, 17).
        n_layers: 1, 2 or 3.
        seed: seeds the fixed embedding and the initial MLP weights.
    """

    def __init__(self, n_features: int = 100, d_embed: int = 1000, d_mlp: int = 50,
                 n_layers: int = 1, seed: int = 0):
        super().__init__()
        self.n_features, self.d_embed, self.d_mlp, self.n_layers = n_features, d_embed, d_mlp, n_layers
        g = torch.Generator().manual_seed(seed)
        W_E = torch.randn(n_features, d_embed, generator=g)
        self.register_buffer("W_E", W_E / W_E.norm(dim=-1, keepdim=True))  # [n_features, d_embed]
        self.hook_embed = HookPoint()  # [batch, d_embed]
        self.blocks = nn.ModuleList(ResidBlock(d_embed, d_mlp, g) for _ in range(n_layers))
        self.setup()

    @property
    def W_U(self) -> Float[torch.Tensor, "d_embed n_features"]:
        return self.W_E.T

    def forward(self, x: Float[torch.Tensor, "batch n_features"]) -> Float[torch.Tensor, "batch n_features"]:
        resid = self.hook_embed(x @ self.W_E)
        for block in self.blocks:
            resid = block(resid)
        return resid @ self.W_U

    def vpd_sites(self) -> list[HookPointSiteSpec]:
        sites = []
        for l, block in enumerate(self.blocks):
            mlp = block.mlp
            sites.append(HookPointSiteSpec(f"blocks.{l}.mlp.W_in", lambda mlp=mlp: mlp.W_in, lambda: None,
                                           f"blocks.{l}.hook_resid_pre", f"blocks.{l}.mlp.hook_pre",
                                           layer=l, kind="W_in"))
            sites.append(HookPointSiteSpec(f"blocks.{l}.mlp.W_out", lambda mlp=mlp: mlp.W_out, lambda: None,
                                           f"blocks.{l}.mlp.hook_post", f"blocks.{l}.hook_mlp_out",
                                           layer=l, kind="W_out"))
        return sites

    def __repr__(self) -> str:
        return (f"ResidualMLP(n_features={self.n_features}, d_embed={self.d_embed}, "
                f"d_mlp={self.d_mlp}, n_layers={self.n_layers})")


def resid_mlp_data(n_features: int, p: float = RESID_MLP_FEATURE_PROBABILITY) -> SparseFeatures:
    """Residual-MLP inputs: each feature active with probability ``p`` (0.01), value ``U(-1, 1)``."""
    return SparseFeatures(n_features, p, -1.0, 1.0)


def resid_mlp_labels(x: Float[torch.Tensor, "batch n_features"]) -> Float[torch.Tensor, "batch n_features"]:
    """The task, ``y_i = x_i + ReLU(x_i)`` (SPD paper §3.3; label coefficients 1)."""
    return x + F.relu(x)


def train_resid_mlp(
    n_features: int = 100,
    d_mlp: int = 50,
    n_layers: int = 1,
    *,
    d_embed: int = 1000,
    seed: int = 0,
    steps: int | None = None,
    batch_size: int = 2048,
    lr: float = 3e-3,
    weight_decay: float = 0.01,
    p: float = RESID_MLP_FEATURE_PROBABILITY,
) -> ResidualMLP:
    """Train a residual-MLP target (SPD paper A.4.2; the reference implementation's run lengths).

    Arguments:
        n_features, d_mlp, n_layers, d_embed: the architecture (see :class:`ResidualMLP`).
        seed: seeds the embedding, the initial weights and the data; deterministic.
        steps: 1000 for 1 and 2 layers, 10k for 3 layers (reference implementation) by default.
        batch_size: 2048. lr: 3e-3 with cosine decay. weight_decay: 0.01 (AdamW).
        p: feature probability (0.01).

    Returns:
        The trained model, with its parameters frozen.
    """
    steps = steps if steps is not None else (10_000 if n_layers >= 3 else 1000)
    model = ResidualMLP(n_features, d_embed, d_mlp, n_layers, seed=seed)
    data = resid_mlp_data(n_features, p)
    return fit_regression(model, data, resid_mlp_labels, steps=steps, batch_size=batch_size, lr=lr,
                          weight_decay=weight_decay, seed=seed, cosine=True)
