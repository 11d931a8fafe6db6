"""One TopK transcoder: a sparse, wide replacement for one MLP (the per-layer transcoders, PLTs,
the VPD paper compares against in its section "Comparison with transcoders").

    latents = ReLU(TopK_k(x @ W_enc + b_enc))        [*batch, n_latents], at most k non-zero
    out     = latents @ W_dec + b_dec                 [*batch, d_out]

``x`` is the MLP's input and ``out`` stands for its output. The recipe is the standard TopK one
(Gao et al. 2024, "Scaling and evaluating sparse autoencoders"): the encoder starts as the
decoder's transpose, decoder rows are kept at unit norm (the gradient's component along each row
is removed before a step and the rows renormalised after it), and dead latents get the auxiliary
AuxK loss (:func:`aux_k_reconstruction`). The VPD paper's PLTs use BatchTopK; plain TopK keeps
``k`` per token fixed, so L0 is set by construction.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from tl_vpd._typing import Bool, Float

__all__ = ["Transcoder", "aux_k_reconstruction", "topk_relu"]


class Transcoder(nn.Module):
    """A TopK transcoder from ``d_in`` to ``d_out`` with ``n_latents`` latents, ``k`` active.

    Arguments:
        d_in: width of the MLP input it reads.
        d_out: width of the MLP output it writes.
        n_latents: dictionary size.
        k: latents kept per token (TopK, then ReLU: fewer are non-zero if a kept
            pre-activation is <= 0).
        generator: seeds the initialisation.
    """

    def __init__(self, d_in: int, d_out: int, n_latents: int, k: int, *,
                 generator: torch.Generator | None = None):
        super().__init__()
        if not 1 <= k <= n_latents:
            raise ValueError(f"k must be in [1, n_latents={n_latents}], got {k}")
        self.d_in, self.d_out, self.n_latents, self.k = d_in, d_out, n_latents, k
        W_dec = torch.randn(n_latents, d_out, generator=generator)
        W_dec /= W_dec.norm(dim=-1, keepdim=True)
        if d_in == d_out:  # Gao et al.: the encoder starts as the decoder's transpose
            W_enc = W_dec.T.clone()
        else:
            W_enc = torch.randn(d_in, n_latents, generator=generator) / math.sqrt(d_in)
        self.W_enc = nn.Parameter(W_enc)  # [d_in, n_latents]
        self.b_enc = nn.Parameter(torch.zeros(n_latents))
        self.W_dec = nn.Parameter(W_dec)  # [n_latents, d_out], unit rows
        self.b_dec = nn.Parameter(torch.zeros(d_out))

    def pre_acts(self, x: Float[torch.Tensor, "*batch d_in"]
                 ) -> Float[torch.Tensor, "*batch n_latents"]:
        return x.to(self.W_enc.dtype) @ self.W_enc + self.b_enc

    def encode(self, x: Float[torch.Tensor, "*batch d_in"]
               ) -> Float[torch.Tensor, "*batch n_latents"]:
        """The latent activations: the ``k`` largest pre-activations, ReLU'd; the rest 0."""
        return topk_relu(self.pre_acts(x), self.k)

    def decode(self, latents: Float[torch.Tensor, "*batch n_latents"]
               ) -> Float[torch.Tensor, "*batch d_out"]:
        return latents @ self.W_dec + self.b_dec

    def forward(self, x: Float[torch.Tensor, "*batch d_in"]) -> Float[torch.Tensor, "*batch d_out"]:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def remove_parallel_grad_(self) -> None:
        """Drop the component of ``W_dec``'s gradient along each row: with unit rows, it would
        only change their norms, which :meth:`normalize_decoder_` undoes."""
        g = self.W_dec.grad
        if g is not None:
            g -= (g * self.W_dec).sum(-1, keepdim=True) * self.W_dec

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Rescale every decoder row to unit norm (so a latent's size is its activation)."""
        self.W_dec /= self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, d_out={self.d_out}, n_latents={self.n_latents}, k={self.k}"


def topk_relu(pre: Float[torch.Tensor, "*batch n"], k: int) -> Float[torch.Tensor, "*batch n"]:
    """``pre`` with all but its ``k`` largest entries (last axis) set to 0, then ReLU."""
    values, idx = pre.topk(k, dim=-1)
    return torch.zeros_like(pre).scatter(-1, idx, values.relu())


def aux_k_reconstruction(tc: Transcoder, pre: Float[torch.Tensor, "tokens n_latents"],
                         dead: Bool[torch.Tensor, "n_latents"], k_aux: int
                         ) -> Float[torch.Tensor, "tokens d_out"] | None:
    """The AuxK estimate of the main reconstruction's error (Gao et al.): the top ``k_aux``
    pre-activations among dead latents, decoded without ``b_dec``; ``None`` if none is dead.
    Trained to match the error, it gives dead latents a gradient towards what is missing."""
    n_dead = int(dead.sum())
    if n_dead == 0:
        return None
    masked = pre.masked_fill(~dead, float("-inf"))
    return topk_relu(masked, min(k_aux, n_dead)) @ tc.W_dec
