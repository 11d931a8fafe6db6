"""Rank-1 subcomponents of one weight matrix and the factorized masked output.

``W ≈ U V = Σ_c u_c v_cᵀ`` with ``U [d_out, C]`` (columns write) and ``V [C, d_in]`` (rows
read); ``Δ = W − U V`` is derived, never a free parameter, so ``U V + Δ = W`` exactly.

Per token the masked matrix is ``W'[b,t] = U diag(m[b,t]) V + m_Δ[b,t] Δ``. It is never built:

    out = ((x Vᵀ) ⊙ m) Uᵀ + m_Δ (x Δᵀ) + b
        = ((x Vᵀ) ⊙ (m − m_Δ)) Uᵀ + m_Δ (x Wᵀ) + b          since x Δᵀ = x Wᵀ − (x Vᵀ) Uᵀ

and ``x Wᵀ + b`` is the output the target layer has already computed, so the masked forward
costs only the factorized term ``2·C·(d_in + d_out)`` FLOPs per token on top of the plain model,
and all-ones masks give the target's output exactly (``m − m_Δ = 0``). Gradients reach U and V
(through both terms), the masks, and the input.
"""

from __future__ import annotations

import contextlib
import functools
import math
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from tl_vpd._typing import Float
from tl_vpd.sites import Site

__all__ = ["DTYPES", "SiteComponents", "warn_if_coarser"]

#: the dtypes U, V and the CI function may be stored in (``DecompositionSpec.dtype``)
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}


class SiteComponents(nn.Module):
    """``U``, ``V`` and the target matrix of one site.

    Arguments:
        site: the site (gives ``W``, the bias and the head layout).
        C: number of subcomponents.
        init: ``"random"`` (V fan-in ``d_in``, U fan-in ``C``, scaled so ``‖UV‖`` matches
            ``‖W‖``), ``"fan_in"`` (the same without the scaling: the reference
            implementation's init, better on TMS 40-10) or ``"svd"`` (top-``C`` singular
            directions split as ``U√S``, ``√S V``; extra columns beyond the rank are zero in U,
            random in V).
        generator: random generator for the initialisation.
    """

    def __init__(self, site: Site, C: int, init: str = "random",
                 generator: torch.Generator | None = None, dtype: torch.dtype | None = None):
        super().__init__()
        if C < 1:
            raise ValueError(f"site {site.name}: C must be >= 1, got {C}")
        self.name = site.name
        self.C = C
        self.n_heads = site.n_heads
        self.per_head_input = site.per_head_input
        W = site.weight
        dtype = dtype or W.dtype
        self.register_buffer("W", W.to(dtype), persistent=False)
        b = site.bias
        self.register_buffer("bias", None if b is None else b.to(dtype), persistent=False)
        U, V = _init(W.to(torch.float64).cpu(), C, init, generator)
        self.U = nn.Parameter(U.to(dtype=dtype, device=W.device))
        self.V = nn.Parameter(V.to(dtype=dtype, device=W.device))
        self.compiled = False  # run masked_output through torch.compile (VPDConfig.compile)

    @property
    def d_out(self) -> int:
        return self.W.shape[0]

    @property
    def d_in(self) -> int:
        return self.W.shape[1]

    @property
    def delta(self) -> Float[torch.Tensor, "d_out d_in"]:
        """``W − U V``, with gradient into U and V."""
        return self.W - self.U @ self.V

    def weight(self) -> Float[torch.Tensor, "d_out d_in"]:
        """``U V`` (the subcomponents' sum, without Δ)."""
        return self.U @ self.V

    def inner_acts(self, x: Float[torch.Tensor, "*lead d_in"]) -> Float[torch.Tensor, "*lead C"]:
        """``h_c = v_c · x`` for every subcomponent."""
        return x @ self.V.T

    def masked_output(
        self,
        x: Float[torch.Tensor, "*x_lead d_in"],
        out: Float[torch.Tensor, "*out_lead d_out"],
        mask: Float[torch.Tensor, "*lead C"],
        delta_mask: Float[torch.Tensor, "*lead"] | None,
    ) -> Float[torch.Tensor, "*out_lead d_out"]:
        """The factorized masked output (see the module docstring).

        Arguments:
            x: the site's input, ``[*lead, d_in]`` (or ``[*lead, h, d_in]`` per head).
            out: the target's output ``x Wᵀ + b`` for the same ``x``, ``[*lead, d_out]``
                (or ``[*lead, h, d_out/h]``: ``*x_lead`` and ``*out_lead`` then end in ``h``).
            mask: per-token subcomponent masks.
            delta_mask: per-token Δ mask; ``None`` means 1 (Δ on).

        Returns:
            The masked output, shaped like ``out``.
        """
        # Under autocast the whole site computes in the autocast dtype (bf16): casting the
        # activations up to the parameters' dtype would only be undone by the next matmul.
        device = x.device.type
        cdt = (torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device)
               else self.V.dtype)
        fn = _compiled_factorized() if self.compiled else _factorized
        return fn(x, out, mask, delta_mask, self.V, self.U, self.bias, cdt,
                  self.per_head_input, self.C)

    def materialized_output(
        self,
        x: torch.Tensor,
        mask: Float[torch.Tensor, "*lead C"],
        delta_mask: Float[torch.Tensor, "*lead"] | None,
    ) -> torch.Tensor:
        """Slow reference: builds ``W'[b,t] = U diag(m) V + m_Δ Δ`` for every token.

        For tests and benchmarks only; memory grows as ``tokens · d_out · d_in``.
        """
        x = x.to(self.V.dtype)
        md = torch.ones(mask.shape[:-1], dtype=self.V.dtype, device=mask.device) \
            if delta_mask is None else delta_mask.to(self.V.dtype)
        W_tok = torch.einsum("oc,...c,ci->...oi", self.U, mask.to(self.V.dtype), self.V)
        W_tok = W_tok + md[..., None, None] * self.delta
        bias = 0.0 if self.bias is None else self.bias
        if self.per_head_input:
            h = x.shape[-2]
            W_h = W_tok.unflatten(-2, (h, -1))  # [*lead, h, d_out/h, d_in]
            bias = bias if self.bias is None else self.bias.view(h, -1)
            return torch.einsum("...hoi,...hi->...ho", W_h, x) + bias
        return torch.einsum("...oi,...i->...o", W_tok, x) + bias

    def extra_repr(self) -> str:
        heads = f", heads={self.n_heads}" if self.n_heads else ""
        return f"{self.name}: W[{self.d_out}, {self.d_in}], C={self.C}{heads}"


def _factorized(x, out, mask, delta_mask, V, U, bias, cdt: torch.dtype, per_head: bool, C: int):
    """The body of :meth:`SiteComponents.masked_output` (a pure function, so it can be compiled)."""
    dtype = out.dtype
    x = x.to(cdt)
    md = None if delta_mask is None else delta_mask.to(cdt)
    coef = mask.to(cdt) if md is None else mask.to(cdt) - md[..., None]
    if md is None:
        coef = coef - 1.0
    if per_head:
        h = x.shape[-2]
        hidden = (x @ V.T.to(cdt)) * coef.unsqueeze(-2)  # [*lead, h, C]
        factor = torch.einsum("...hc,hdc->...hd", hidden, U.to(cdt).view(h, -1, C))
        bias = 0.0 if bias is None else bias.view(h, -1).to(cdt)
        scale = 1.0 if md is None else md[..., None, None]
    else:
        factor = ((x @ V.T.to(cdt)) * coef) @ U.T.to(cdt)
        bias = 0.0 if bias is None else bias.to(cdt)
        scale = 1.0 if md is None else md[..., None]
    target_part = out.to(cdt) - bias
    return (factor + scale * target_part + bias).to(dtype)


COMPILE_RECOMPILE_LIMIT = 128  # graphs per compiled function inside compiled_sites


@contextlib.contextmanager
def compiled_sites(components, enabled: bool = True, ci_fn=None):
    """Inside the block, ``masked_output`` of ``components`` runs through ``torch.compile`` (the
    training step with ``VPDConfig.compile``; evaluation and analysis stay eager), and so does
    ``ci_fn`` where it has a compiled path (the ``mlp`` CI function's fused kernel)."""
    components = list(components) + ([ci_fn] if hasattr(ci_fn, "compiled") else [])
    before = [c.compiled for c in components]
    for c in components:
        c.compiled = enabled
    # Dynamo keeps at most ``recompile_limit`` (8) graphs per function and runs the rest eagerly;
    # the sites' shapes (W_Q/W_K/W_V per head, W_O, W_in, W_out, ...) times the passes' batch
    # shapes and grad modes need more, so without this most sites silently stayed eager.
    limit = contextlib.nullcontext()
    if enabled:
        import torch._dynamo

        limit = torch._dynamo.config.patch(
            recompile_limit=max(torch._dynamo.config.recompile_limit, COMPILE_RECOMPILE_LIMIT))
    try:
        with limit:
            yield
    finally:
        for c, b in zip(components, before):
            c.compiled = b


@functools.cache
def _compiled_factorized():
    return torch.compile(_factorized, dynamic=False)


def warn_if_coarser(dtype: torch.dtype, sites: Sequence[Site]) -> None:
    """One ``UserWarning`` when ``dtype`` is coarser than the weights of ``sites``.

    The components then hold ``W`` (and compute the swap) in ``dtype``, so even with all masks
    1 the decomposed model differs from the target by ``dtype``'s rounding (about 1e-2 of an
    output for bfloat16 on a float32 model) rather than being exact.

    Arguments:
        dtype: the components' dtype.
        sites: the decomposed sites.

    The warning points at the first caller outside tl_vpd (the user's ``from_model`` call).
    """
    found = [(s, s.weight.dtype) for s in sites]
    coarse = [(s, d) for s, d in found
              if d.is_floating_point and torch.finfo(dtype).eps > torch.finfo(d).eps]
    if not coarse:
        return
    site, wdt = coarse[0]
    name, model_name = (str(d).removeprefix("torch.") for d in (dtype, wdt))
    exact = model_name if model_name in DTYPES else "float32"
    warnings.warn(
        f"the components are stored in {name}, a lower precision than the model's weights "
        f"({model_name}, e.g. {site.name}): the unmasked decomposition (all masks 1) will differ "
        f"from the target by {name} rounding instead of matching it exactly; pass "
        f"dtype=\"{exact}\" for an exact swap",
        UserWarning, stacklevel=_outside_package())


def _outside_package() -> int:
    """The ``stacklevel`` of the innermost frame of the caller's stack not in tl_vpd."""
    package = str(Path(__file__).parent)
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def _init(W: torch.Tensor, C: int, init: str, generator: torch.Generator | None):
    d_out, d_in = W.shape
    if init == "svd":
        Us, S, Vh = torch.linalg.svd(W, full_matrices=False)
        k = min(C, S.numel())
        U = torch.zeros(d_out, C, dtype=W.dtype)
        V = torch.randn(C, d_in, generator=generator, dtype=W.dtype) / math.sqrt(d_in)
        U[:, :k] = Us[:, :k] * S[:k].sqrt()
        V[:k] = S[:k].sqrt()[:, None] * Vh[:k]
        return U, V
    if init not in ("random", "fan_in"):
        raise ValueError(f"init must be 'random', 'fan_in' or 'svd', got {init!r}")
    V = torch.randn(C, d_in, generator=generator, dtype=W.dtype) / math.sqrt(d_in)
    U = torch.randn(d_out, C, generator=generator, dtype=W.dtype) / math.sqrt(C)
    if init == "fan_in":
        return U, V
    # Match the target's scale so the faithfulness loss starts O(1) relative to ‖W‖.
    scale = (W.norm() / (U @ V).norm().clamp_min(1e-12)).sqrt()
    return U * scale, V * scale
