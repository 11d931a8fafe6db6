"""Fused kernels for the causal-importance side of a training step (VPD paper: masks
``m = g + (1 − g) r`` from the lower leaky view of ``g = σ_H(z)``; minimality over the upper view).

Written as chains of autograd ops, these are dozens of passes over every token × subcomponent of
every site (``[batch, pos, C]`` each), each keeping its inputs alive for the backward — on a CPU
they cost more than the matmuls. Here each chain is one autograd Function whose backward
recomputes what it needs from ``z``. The forward and backward bodies are plain tensor functions;
with ``compiled=True`` they run through ``torch.compile`` (one fused loop each; the first call
of each shape compiles for some seconds).
"""

from __future__ import annotations

import functools

import torch

from tl_vpd._typing import Bool, Float

__all__ = ["firing_frequency", "routed_masks", "scalar_mlp"]


# ------------------------------------------------------------------------------- kernels
# Step functions are arithmetic (sign, clamp), never bool tensors: eager on a CPU, a comparison
# writing a bool tensor takes ~0.1 ms over ``[8, 128, 512]`` and ``torch.where`` or
# ``masked_fill_`` ~1 ms, against ~0.04 ms for an add (torch 2.13, this project's 2-core VM), and
# these run over every token × subcomponent of every site (benchmarks/train_step.py). Multiplying
# by an exact 0.0/1.0 keeps every value exact (a zeroed gradient may be -0.0).
def _above(z, t: float):
    """1.0 where ``z > t``, 0.0 elsewhere (a new tensor)."""
    return (z - t).sign_().clamp_(min=0.0) if t else z.sign().clamp_(min=0.0)


def _below(z, t: float):
    """1.0 where ``z < t``, 0.0 elsewhere (a new tensor)."""
    return (t - z).sign_().clamp_(min=0.0)


def _routed(route, dtype):
    """The route as 0.0/1.0 with a trailing axis for C (tiny: ``[*lead, 1]``)."""
    return route.to(dtype).unsqueeze(-1)


def _leaky_grad(z, grad, alpha: float):
    """:func:`tl_vpd.importance.lower_leaky_grad` in arithmetic: ``grad`` on (0, 1), 0 from 1
    up, and below 0 ``alpha`` × its negative part."""
    pos = _above(z, 0.0)
    inside = _below(z, 1.0).mul_(pos)
    leak = grad.clamp(max=0.0).mul_(pos.neg_().add_(1.0)).mul_(alpha)
    return leak.addcmul_(grad, inside)


def _upper(z, alpha: float):
    """Upper leaky hard sigmoid: 0 below 0, z on [0, 1], 1 + α(z − 1) above (a new tensor)."""
    return z.clamp(0.0, 1.0).add_((z - 1.0).clamp_min_(0.0), alpha=alpha)


def _freq_fwd(z, p, eps: float, alpha: float):
    base = _upper(z, alpha).add_(eps)  # > 0
    powered = base.log().mul_(p).exp_()  # = base ** p; vectorised exp/log beat pow on CPU
    return powered.flatten(0, -2).mean(0), base, powered


def _freq_bwd(z, base, powered, grad_f, p, alpha: float):
    n = z.numel() // z.shape[-1]
    # d/dz (u + eps)^p = p (u + eps)^(p − 1) u'(z), with u' = 1 on [0, 1], α above, 0 below;
    # (u + eps)^(p − 1) is the forward's (u + eps)^p / (u + eps): no second pow (a costly op).
    above = _above(z, 1.0)
    slope = _below(z, 0.0).neg_().add_(1.0).mul_(1.0 - above).add_(above, alpha=alpha)
    return powered.div(base).mul_(slope).mul_(grad_f * (p / n))


def _masks_fwd(z, r, route, dtype=None):
    # ``dtype``: the masks' dtype (the masked forward's autocast dtype). The last op writes it
    # directly: computed in z's dtype and rounded once on the store, the same values as a cast
    # afterwards, without the extra pass (eager) and its backward's cast of the gradient.
    def last(shape):
        return None if dtype is None else torch.empty(shape, dtype=dtype, device=z.device)

    g = z.clamp(0.0, 1.0)
    md = r[..., -1].expand(z.shape[:-1])
    if route is None:
        m = torch.addcmul(g, 1.0 - g, r[..., :-1], out=last(z.shape))  # g + (1 − g) r
        return m, md if dtype is None else md.to(dtype)
    # Unrouted tokens keep everything: m · 1 + 0 = m, m · 0 + 1 = 1.
    rf = _routed(route, z.dtype)
    m = torch.addcmul(1.0 - rf, torch.addcmul(g, 1.0 - g, r[..., :-1]), rf, out=last(z.shape))
    md = torch.addcmul(1.0 - rf[..., 0], md, rf[..., 0], out=last(md.shape))
    return m, md


def _masks_bwd_z(z, r, route, gm, alpha: float):
    G = torch.addcmul(gm, gm, r[..., :-1], value=-1.0)  # dm/dg = 1 − r where routed
    if route is not None:
        G = G.mul_(_routed(route, G.dtype))
    return _leaky_grad(z, G, alpha)


def _masks_bwd_r(z, route, gm, gmd):
    gc = torch.addcmul(gm, gm, z.clamp(0.0, 1.0), value=-1.0)  # dm/dr = 1 − g where routed
    if route is not None:
        rf = _routed(route, gc.dtype)
        gc = gc.mul_(rf)
        gmd = gmd * rf[..., 0]
    return torch.cat([gc, gmd.to(gc.dtype)[..., None]], -1)


def _mlp_fwd(x, w1, b1, w2, b2):
    h = torch.addcmul(b1, x.unsqueeze(-1), w1)  # [..., C, hidden]; fused away when compiled
    return (torch.nn.functional.gelu(h) * w2).sum(-1) + b2


def _mlp_bwd(xT, w1, b1, w2, gT):
    # Token axis last ([C, hidden, N]): the reductions over tokens are innermost, which the
    # compiled loop vectorises (~20% faster than tokens first). h is recomputed instead of
    # kept alive: compiled, no [N, C, hidden] tensor is written to memory.
    w1, b1, w2 = w1.unsqueeze(-1), b1.unsqueeze(-1), w2.unsqueeze(-1)
    h = torch.addcmul(b1, xT.unsqueeze(1), w1)
    cdf = 0.5 * (1.0 + torch.erf(h * 0.7071067811865476))  # Φ(h)
    dgelu = cdf + h * torch.exp(-0.5 * h * h) * 0.3989422804014327  # Φ(h) + h φ(h)
    gu = gT.unsqueeze(1)
    dh = gu * w2 * dgelu
    return ((dh * w1).sum(1), (dh * xT.unsqueeze(1)).sum(-1), dh.sum(-1), (gu * h * cdf).sum(-1),
            gT.sum(-1))


_KERNELS = {"freq_fwd": _freq_fwd, "freq_bwd": _freq_bwd, "masks_fwd": _masks_fwd,
            "masks_bwd_z": _masks_bwd_z, "masks_bwd_r": _masks_bwd_r,
            "mlp_fwd": _mlp_fwd, "mlp_bwd": _mlp_bwd}


@functools.cache
def _kernel(name: str, compiled: bool):
    fn = _KERNELS[name]
    return torch.compile(fn, dynamic=False) if compiled else fn


# ------------------------------------------------------------------------------- functions
class _FiringFrequency(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, p, eps: float, alpha: float, compiled: bool):
        freq, base, powered = _kernel("freq_fwd", compiled)(z, p, eps, alpha)
        ctx.save_for_backward(z, base, powered, p)  # freed by the minimality loss's backward
        ctx.alpha, ctx.compiled = alpha, compiled
        return freq

    @staticmethod
    def backward(ctx, grad_f):
        z, base, powered, p = ctx.saved_tensors
        grad = _kernel("freq_bwd", ctx.compiled)(z, base, powered, grad_f, p, ctx.alpha)
        return grad, None, None, None, None


def firing_frequency(z: Float[torch.Tensor, "*lead C"], p: float, eps: float, alpha: float,
                     compiled: bool = False) -> Float[torch.Tensor, " C"]:
    """``mean_{tokens} (upper_leaky(z) + eps)^p`` per subcomponent, in at least fp32: the
    frequencies of :func:`tl_vpd.losses.minimality_loss`, straight from the pre-activations."""
    z = z.to(torch.promote_types(z.dtype, torch.float32))
    p = torch.tensor(float(p), dtype=z.dtype, device=z.device)  # a tensor: no recompile per p
    return _FiringFrequency.apply(z, p, float(eps), float(alpha), compiled)


class _RoutedMasks(torch.autograd.Function):
    @staticmethod
    def forward(ctx, z, r, route, alpha: float, compiled: bool, dtype):
        ctx.save_for_backward(z, r, route)
        ctx.alpha, ctx.compiled, ctx.r_shape = alpha, compiled, r.shape
        if compiled:  # out= does not compile: the compiled kernel's masks are cast after it
            m, md = _kernel("masks_fwd", True)(z, r, route)
            return (m, md) if dtype is None else (m.to(dtype), md.to(dtype))
        return _masks_fwd(z, r, route, dtype)

    @staticmethod
    def backward(ctx, gm, gmd):
        z, r, route = ctx.saved_tensors
        gz = gr = None
        if ctx.needs_input_grad[0]:
            gz = _kernel("masks_bwd_z", ctx.compiled)(z, r, route, gm, ctx.alpha)
        if ctx.needs_input_grad[1]:
            gr = _kernel("masks_bwd_r", ctx.compiled)(z, route, gm, gmd).sum_to_size(ctx.r_shape)
        return gz, gr, None, None, None, None


def routed_masks(
    z: Float[torch.Tensor, "*lead C"],
    r: Float[torch.Tensor, "*r_lead C1"],
    route: Bool[torch.Tensor, "*lead"] | None,
    alpha: float,
    compiled: bool = False,
    dtype: torch.dtype | None = None,
) -> tuple[Float[torch.Tensor, "*lead C"], Float[torch.Tensor, "*lead"]]:
    """Masks and Δ masks from pre-activations and sources, equal to
    :func:`tl_vpd.masking.masks_from_sources` on the lower leaky view of ``z``.

    Arguments:
        z: CI pre-activations ``[*lead, C]``.
        r: sources ``[..., C + 1]`` broadcastable to ``[*lead, C + 1]`` (the last entry is Δ's).
        route: True where the site is masked (``None``: everywhere); unrouted tokens get 1.
        alpha: slope of the leaky hard sigmoid.
        compiled: run the kernels through ``torch.compile``.
        dtype: the masks' dtype when it is not ``z``'s: the dtype the masked forward computes
            in under autocast (the same values as ``masks.to(dtype)``, one pass fewer each way;
            the gradients reaching ``z`` and ``r`` are in their own dtypes).

    Returns:
        ``(masks [*lead, C], delta_masks [*lead])``.
    """
    dtype = None if dtype == z.dtype else dtype
    return _RoutedMasks.apply(z, r.to(z.dtype), route, float(alpha), compiled, dtype)


class _ScalarMLP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w1, b1, w2, b2, compiled: bool):
        ctx.save_for_backward(x, w1, b1, w2)
        ctx.compiled = compiled
        return _kernel("mlp_fwd", compiled)(x, w1, b1, w2, b2)

    @staticmethod
    def backward(ctx, g):
        x, w1, b1, w2 = ctx.saved_tensors
        lead = x.shape
        xT, gT = x.reshape(-1, lead[-1]).T.contiguous(), g.reshape(-1, lead[-1]).T.contiguous()
        gxT, *grads = _kernel("mlp_bwd", ctx.compiled)(xT, w1, b1, w2, gT)
        return (gxT.T.reshape(lead), *grads, None)


def scalar_mlp(
    x: Float[torch.Tensor, "*lead C"],
    w1: Float[torch.Tensor, "C hidden"],
    b1: Float[torch.Tensor, "C hidden"],
    w2: Float[torch.Tensor, "C hidden"],
    b2: Float[torch.Tensor, " C"],
    compiled: bool = False,
) -> Float[torch.Tensor, "*lead C"]:
    """``Σ_h GELU(x_c w1_ch + b1_ch) w2_ch + b2_c``: the ``mlp`` CI function of one site (one
    scalar MLP per subcomponent), whose autograd graph would keep two ``[*lead, C, hidden]``
    tensors per site; this one keeps none. Compiled, forward and backward never write
    ``[*lead, C, hidden]`` to memory (about 4x faster than autograd at 4096 × 200 × 16 on a
    CPU); uncompiled it is slower than autograd, so callers use it only with ``compiled``."""
    return _ScalarMLP.apply(x.to(w1.dtype), w1, b1, w2, b2, compiled)
