"""Fused elementwise kernels of the causal-importance side of a training step.

The leaky hard sigmoids, the masks built from them and the minimality frequencies are chains of
elementwise operations over every token × subcomponent of every site ([batch, pos, C] per site),
which dominate a CPU step when written as separate autograd nodes (each node is one pass over
memory and keeps its inputs alive). Here each chain is one autograd Function with a hand-written
backward that recomputes what it needs from ``z`` (VPD paper §2: masks m = g + (1 − g) r,
leaky views of g = σ_H(z); minimality over the upper view).
"""

from __future__ import annotations

import torch

__all__ = ["firing_frequency", "routed_masks"]


class _FiringFrequency(torch.autograd.Function):
    """f_c = mean over tokens of (upper(z) + eps)^p, upper(z) = clamp(z, 0, 1) + α·max(z − 1, 0)."""

    @staticmethod
    def forward(ctx, z, p: float, eps: float, alpha: float):
        u = _upper(z, alpha)
        u.add_(eps).pow_(p)
        ctx.save_for_backward(z)
        ctx.p, ctx.eps, ctx.alpha = p, eps, alpha
        return u.flatten(0, -2).mean(0)

    @staticmethod
    def backward(ctx, grad_f):
        (z,) = ctx.saved_tensors
        n = z.numel() // z.shape[-1]
        u = _upper(z, ctx.alpha)
        # d/dz (u + eps)^p = p (u + eps)^(p−1) u'(z), u' = 1 on [0, 1], α above, 0 below.
        g = u.add_(ctx.eps).pow_(ctx.p - 1.0).mul_(grad_f * (ctx.p / n))
        slope = torch.where(z > 1, ctx.alpha, (z >= 0).to(z.dtype))
        return g.mul_(slope), None, None, None


def _upper(z: torch.Tensor, alpha: float) -> torch.Tensor:
    u = z.clamp(0.0, 1.0)
    return u.add_((z - 1.0).clamp_min_(0.0), alpha=alpha)


def firing_frequency(z: torch.Tensor, p: float, eps: float, alpha: float) -> torch.Tensor:
    """``mean_{tokens} (upper_leaky(z) + eps)^p`` per subcomponent, ``[C]``, in at least fp32."""
    z = z.to(torch.promote_types(z.dtype, torch.float32))
    return _FiringFrequency.apply(z, float(p), float(eps), float(alpha))


class _RoutedMasks(torch.autograd.Function):
    """m = g + (1 − g) r where routed, else 1; m_Δ = r_Δ where routed, else 1; g = clamp(z, 0, 1)
    with the lower leaky sigmoid's backward (slope α below 0, only for gradients that raise z)."""

    @staticmethod
    def forward(ctx, z, r, route, alpha: float):
        g = z.clamp(0.0, 1.0)
        rc, rd = r[..., :-1], r[..., -1]
        m = torch.addcmul(g, 1.0 - g, rc)  # g + (1 − g) r
        lead = z.shape[:-1]
        if route is None:
            md = rd.expand(lead)
        else:
            m = torch.where(route[..., None], m, 1.0)
            md = torch.where(route, rd, 1.0)
        ctx.save_for_backward(z, r, route)
        ctx.alpha = alpha
        ctx.r_shape = r.shape
        return m, md

    @staticmethod
    def backward(ctx, gm, gmd):
        z, r, route = ctx.saved_tensors
        rc = r[..., :-1]
        gz = gr = None
        if ctx.needs_input_grad[0]:
            G = gm * (1.0 - rc)  # dm/dg = 1 − r where routed
            if route is not None:
                G = G.masked_fill_(~route[..., None], 0.0)
            inside = (z > 0) & (z < 1)
            rising = (z <= 0) & (G < 0)
            gz = torch.where(inside, G, torch.where(rising, ctx.alpha * G, 0.0))
        if ctx.needs_input_grad[1]:
            g = z.clamp(0.0, 1.0)
            gc = gm * (1.0 - g)
            gd = gmd
            if route is not None:
                gc = gc.masked_fill_(~route[..., None], 0.0)
                gd = torch.where(route, gmd, 0.0)
            gr = torch.cat([gc, gd[..., None]], -1).sum_to_size(ctx.r_shape)
        return gz, gr, None, None


def routed_masks(z: torch.Tensor, r: torch.Tensor, route: torch.Tensor | None, alpha: float):
    """``(masks [*lead, C], delta_masks [*lead])`` from pre-activations ``z`` and sources ``r``
    (``[..., C + 1]``, broadcastable), masking only where ``route`` (bool ``[*lead]``) is True."""
    return _RoutedMasks.apply(z, r.to(z.dtype), route, float(alpha))
