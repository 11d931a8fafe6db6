"""Causal-importance (CI) functions and the leaky hard sigmoids.

A CI function maps each site's input activation to pre-activations ``z [..., C]``; the causal
importance is ``g = σ_H(z) ∈ [0, 1]``. Two leaky views (VPD paper, the leaky hard sigmoids):

* :func:`lower_leaky_sigmoid` — forward is exactly ``clamp(z, 0, 1)``; below 0 the gradient
  passes through scaled by ``alpha`` only when it would *raise* z (incoming gradient < 0), so
  a dead subcomponent can come back but z does not drift lower. Used for masks.
* :func:`upper_leaky_sigmoid` — ``0`` below 0, ``z`` on [0, 1], ``1 + alpha (z − 1)`` above.
  Used for the minimality losses, so they keep pushing z down from above 1.

CI functions (``ci_fn`` in the config):

* ``mlp``: one ``1 → hidden → 1`` GELU MLP per subcomponent on its inner activation ``v_c · x``;
* ``vector_mlp``: one ``d_in → hidden → 1`` MLP per subcomponent on the whole input;
* ``shared_mlp``: one ``d_in → hidden → C`` MLP per site;
* ``global_mlp``: one MLP over the RMS-normalised concatenation of all sites' inputs, emitting
  every site's ``C`` pre-activations;
* ``global_transformer``: the VPD paper's choice — the same concatenated input projected to
  ``d_model``, a few pre-norm *bidirectional* transformer blocks over positions (rotary
  positions), and a linear head to every site's ``C``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn


__all__ = [
    "CI_FUNCTIONS",
    "CausalImportance",
    "build_ci_fn",
    "lower_leaky_grad",
    "lower_leaky_sigmoid",
    "upper_leaky_sigmoid",
]


class _LowerLeakyHardSigmoid(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, alpha):
        ctx.save_for_backward(z)
        ctx.alpha = alpha
        return z.clamp(0.0, 1.0)

    @staticmethod
    def backward(ctx, grad):
        (z,) = ctx.saved_tensors
        return lower_leaky_grad(z, grad, ctx.alpha), None


def lower_leaky_grad(z: torch.Tensor, grad: torch.Tensor, alpha: float) -> torch.Tensor:
    """The lower leaky sigmoid's backward: ``grad`` passes on ``(0, 1)``; below 0 it leaks
    (×``alpha``) only where it is negative, i.e. where descent would raise ``z``."""
    # Six elementwise passes (this runs over every token × subcomponent of every site).
    out = torch.where(z <= 0, grad.clamp(max=0.0).mul_(alpha), grad)
    return out.masked_fill_(z >= 1, 0.0)


def lower_leaky_sigmoid(z: torch.Tensor, alpha: float) -> torch.Tensor:
    """``clamp(z, 0, 1)`` with a straight-through leak (slope ``alpha``) below 0 that only lets
    gradient descent raise ``z``."""
    return _LowerLeakyHardSigmoid.apply(z, alpha)


def upper_leaky_sigmoid(z: torch.Tensor, alpha: float) -> torch.Tensor:
    """``0`` for ``z < 0``, ``z`` on ``[0, 1]``, ``1 + alpha (z − 1)`` above 1."""
    return torch.where(z > 1, 1 + alpha * (z - 1), z.clamp_min(0.0))


class CausalImportance(nn.Module):
    """Base class: ``forward(inputs, inner_acts) -> {site: pre-activations [..., C]}``.

    ``inputs[site]`` is the site's input ``[..., d_in]`` (per-head inputs are averaged over
    heads by the caller) and ``inner_acts[site]`` is ``x Vᵀ`` ``[..., C]`` — computed only for
    functions that read it (``uses_inner_acts``), since it is a full matmul per site.
    """

    uses_inner_acts = False

    def __init__(self, site_dims: Mapping[str, tuple[int, int]]):
        super().__init__()
        self.site_names = list(site_dims)
        self.site_dims = dict(site_dims)  # name -> (d_in, C)


class PerSubcomponentMLP(CausalImportance):
    """``mlp``: ``g_c = σ(MLP_c(v_c · x))``, one tiny scalar MLP per subcomponent."""

    uses_inner_acts = True
    compiled = False  # set by tl_vpd.components.compiled_sites for the training step

    def __init__(self, site_dims, hidden: int):
        super().__init__(site_dims)
        self.w1 = nn.ParameterList()
        self.b1 = nn.ParameterList()
        self.w2 = nn.ParameterList()
        self.b2 = nn.ParameterList()
        for _, C in site_dims.values():
            self.w1.append(nn.Parameter(torch.randn(C, hidden) * math.sqrt(2.0)))
            self.b1.append(nn.Parameter(torch.zeros(C, hidden)))
            self.w2.append(nn.Parameter(torch.randn(C, hidden) / math.sqrt(hidden)))
            self.b2.append(nn.Parameter(torch.zeros(C)))

    def forward(self, inputs, inner_acts):
        if self.compiled and torch.is_grad_enabled():
            from tl_vpd.fused import scalar_mlp  # tl_vpd.fused imports this module

            return {name: scalar_mlp(inner_acts[name], self.w1[i], self.b1[i], self.w2[i],
                                     self.b2[i], compiled=True)
                    for i, name in enumerate(self.site_names)}
        out = {}
        for i, name in enumerate(self.site_names):
            h = inner_acts[name].unsqueeze(-1) * self.w1[i] + self.b1[i]  # [..., C, hidden]
            out[name] = (F.gelu(h) * self.w2[i]).sum(-1) + self.b2[i]
        return out


class PerSubcomponentVectorMLP(CausalImportance):
    """``vector_mlp``: ``g_c = σ(MLP_c(x))``, one ``d_in → hidden → 1`` MLP per subcomponent."""

    def __init__(self, site_dims, hidden: int):
        super().__init__(site_dims)
        self.w1 = nn.ParameterList()
        self.b1 = nn.ParameterList()
        self.w2 = nn.ParameterList()
        self.b2 = nn.ParameterList()
        for d_in, C in site_dims.values():
            self.w1.append(nn.Parameter(torch.randn(C, d_in, hidden) / math.sqrt(d_in)))
            self.b1.append(nn.Parameter(torch.zeros(C, hidden)))
            self.w2.append(nn.Parameter(torch.randn(C, hidden) / math.sqrt(hidden)))
            self.b2.append(nn.Parameter(torch.zeros(C)))

    def forward(self, inputs, inner_acts):
        out = {}
        for i, name in enumerate(self.site_names):
            h = torch.einsum("...i,cih->...ch", inputs[name], self.w1[i]) + self.b1[i]
            out[name] = (F.gelu(h) * self.w2[i]).sum(-1) + self.b2[i]
        return out


class SharedMLP(CausalImportance):
    """``shared_mlp``: one ``d_in → hidden → C`` GELU MLP per site."""

    def __init__(self, site_dims, hidden: int):
        super().__init__(site_dims)
        self.mlps = nn.ModuleList(
            nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, C))
            for d_in, C in site_dims.values()
        )

    def forward(self, inputs, inner_acts):
        return {name: mlp(inputs[name]) for name, mlp in zip(self.site_names, self.mlps)}


def _rms_concat(inputs: Mapping[str, torch.Tensor], names) -> torch.Tensor:
    parts = [inputs[n] * torch.rsqrt(inputs[n].pow(2).mean(-1, keepdim=True) + 1e-6) for n in names]
    return torch.cat(parts, dim=-1)


class GlobalMLP(CausalImportance):
    """``global_mlp``: one MLP over all sites' RMS-normalised, concatenated inputs."""

    def __init__(self, site_dims, hidden: int):
        super().__init__(site_dims)
        d_total = sum(d for d, _ in site_dims.values())
        self.net = nn.Sequential(nn.Linear(d_total, hidden), nn.GELU(),
                                 nn.Linear(hidden, sum(C for _, C in site_dims.values())))

    def forward(self, inputs, inner_acts):
        z = self.net(_rms_concat(inputs, self.site_names))
        return dict(zip(self.site_names, z.split([C for _, C in self.site_dims.values()], -1)))


class _RMSNorm(nn.RMSNorm):
    """RMSNorm computed in its weight's dtype: under bf16 autocast the input arrives in bf16, and
    mixed dtypes make torch skip its fused kernel (with a warning on every call)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.to(self.weight.dtype))


class _Block(nn.Module):
    """Pre-norm bidirectional transformer block with rotary positions."""

    def __init__(self, d_model: int, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self.norm1 = _RMSNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.norm2 = _RMSNorm(d_model)
        self.ff = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, z: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm1(z)).unflatten(-1, (3, self.n_heads, -1)).unbind(-3)
        q, k, v = (t.transpose(-2, -3) for t in (q, k, v))  # [..., heads, pos, d_head]
        q, k = _rotate(q, cos, sin), _rotate(k, cos, sin)
        a = F.scaled_dot_product_attention(q, k, v)  # bidirectional: no causal mask
        z = z + self.proj(a.transpose(-2, -3).flatten(-2))
        return z + self.ff(self.norm2(z))


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


class GlobalTransformer(CausalImportance):
    """``global_transformer``: the VPD paper's CI function, scaled down.

    Input ``[batch, pos, Σ d_in]`` (RMS-normalised per site) → ``d_model`` → ``n_layers``
    bidirectional blocks → final RMSNorm → ``Σ C`` pre-activations. Inputs without a position
    axis (toy models) are treated as length-1 sequences.
    """

    def __init__(self, site_dims, d_model: int, n_layers: int, n_heads: int):
        super().__init__(site_dims)
        if d_model % (2 * n_heads):
            raise ValueError(f"ci_d_model={d_model} must be divisible by 2*ci_n_heads={2 * n_heads}")
        d_total = sum(d for d, _ in site_dims.values())
        self.d_head = d_model // n_heads
        self.inp = nn.Linear(d_total, d_model)
        self.blocks = nn.ModuleList(_Block(d_model, n_heads) for _ in range(n_layers))
        self.norm = _RMSNorm(d_model)
        self.head = nn.Linear(d_model, sum(C for _, C in site_dims.values()))

    def forward(self, inputs, inner_acts):
        x = _rms_concat(inputs, self.site_names)
        squeeze = x.dim() == 2
        if squeeze:
            x = x.unsqueeze(-2)
        T = x.shape[-2]
        half = self.d_head // 2
        freq = 10000.0 ** (-torch.arange(half, device=x.device, dtype=x.dtype) / half)
        ang = torch.arange(T, device=x.device, dtype=x.dtype)[:, None] * freq
        cos, sin = ang.cos(), ang.sin()
        z = self.inp(x)
        for block in self.blocks:
            z = block(z, cos, sin)
        z = self.head(self.norm(z))
        if squeeze:
            z = z.squeeze(-2)
        return dict(zip(self.site_names, z.split([C for _, C in self.site_dims.values()], -1)))


CI_FUNCTIONS = {
    "mlp": PerSubcomponentMLP,
    "vector_mlp": PerSubcomponentVectorMLP,
    "shared_mlp": SharedMLP,
    "global_mlp": GlobalMLP,
    "global_transformer": GlobalTransformer,
}


def build_ci_fn(kind: str, site_dims: Mapping[str, tuple[int, int]], *, hidden: int,
                d_model: int, n_layers: int, n_heads: int) -> CausalImportance:
    """Construct a CI function by name (no silent fallback on an unknown name).

    Arguments:
        kind: a key of :data:`CI_FUNCTIONS`.
        site_dims: ``{site: (d_in, C)}``.
        hidden: width of the per-site / per-subcomponent MLPs (and of ``global_mlp``).
        d_model: width of ``global_transformer``.
        n_layers: blocks of ``global_transformer``.
        n_heads: heads of ``global_transformer``.

    Returns:
        The CI function (defaults of these sizes: :data:`tl_vpd.spec.SPEC_DEFAULTS`).
    """
    if kind not in CI_FUNCTIONS:
        raise ValueError(f"ci_fn must be one of {sorted(CI_FUNCTIONS)}, got {kind!r}")
    if kind == "global_transformer":
        return GlobalTransformer(site_dims, d_model=d_model, n_layers=n_layers, n_heads=n_heads)
    return CI_FUNCTIONS[kind](site_dims, hidden=hidden)
