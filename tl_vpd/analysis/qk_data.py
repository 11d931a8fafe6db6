"""Data-dependent Q·K interaction strength of query and key subcomponents on real prompts.

VPD paper, "QK Circuit - Metric 2: Data-Dependent Interaction Strength": on an input, head
``h``'s attention score between query position ``t`` and key position ``t'`` is a sum over
(query, key) subcomponent pairs,

    DDIS(c, c', t, t', h) = (φ_t·V_Q,c) · (U^h_Q,c)ᵀ R_{t−t'} U^h_K,c' · (V_K,c'·φ_t'),

plus the terms of the biases and of Δ (and of pairs left out). :func:`qk_data_interactions`
computes it for every pair on a batch of prompts, with the model's own rotary rotation (each
subcomponent's head block rotated to its position, as the forward pass rotates ``q`` and ``k``).
Where both activations are constant the ``[t, t − τ]`` entries are the static strength
``SIS(c, c', h, τ)`` of :mod:`~tl_vpd.analysis.qk` times ``a_q a_k / (s_q s_k ‖V_Q,c‖ ‖V_K,c'‖)``.

With ``weight="ci"`` each activation is multiplied by its causal importance, so a pair's term
is what it adds to the scores when the model runs with masks = CI (the paper's "which pairs are
interacting on this datapoint" when only causally important subcomponents count).

Values are raw ``q·k`` like the static strength; ``values / attn_scale`` is in the units of
``hook_attn_scores`` (see :meth:`QKDataInteractions.scores`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from tl_vpd._typing import Float, Int
from tl_vpd.analysis.qk import heatmap
from tl_vpd.tables import text_table

if TYPE_CHECKING:
    from tl_vpd.decomposition import Decomposition

__all__ = ["QKDataInteractions", "attn_scale", "qk_data_interactions"]

MAX_ELEMENTS = 2 ** 27  # ~0.5 GB of float32: beyond it, choose fewer pairs or prompts


def attn_scale(model, layer: int) -> float:
    """What the model divides ``q·k`` by in ``layer`` (``√d_head`` unless configured)."""
    cfg = model.cfg
    if not getattr(cfg, "use_attn_scale", True):
        return 1.0
    scale = float(getattr(cfg, "attn_scale", None) or -1)
    scale = scale if scale > 0 else math.sqrt(cfg.d_head)  # bridges store -1 for the default
    if getattr(cfg, "scale_attn_by_inverse_layer_idx", False):
        scale *= layer + 1
    return scale


@dataclass
class QKDataInteractions:
    """``DDIS[b, h, t, t', i, j]`` of query subcomponent ``q[i]`` and key subcomponent ``k[j]``.

    Attributes:
        layer: the attention layer.
        q, k: the query and key subcomponent indices included (positions ``i``, ``j`` of
            ``values``).
        values: ``[batch, head, q_pos, k_pos, n_q, n_k]``; zero where ``k_pos > q_pos``.
        attn_scale: the model's divisor of ``q·k`` in this layer.
        weight: ``"act"`` (the paper's definition) or ``"ci"`` (activations times CI).
        rotary: whether the model's rotary rotation was applied.
    """

    layer: int
    q: list[int]
    k: list[int]
    values: Float[torch.Tensor, "batch head q_pos k_pos n_q n_k"]
    attn_scale: float
    weight: str
    rotary: bool

    def _index(self, c_q: int, c_k: int) -> tuple[int, int]:
        if c_q not in self.q or c_k not in self.k:
            raise KeyError(f"pair (W_Q:{c_q}, W_K:{c_k}) was not computed; query subcomponents "
                           f"{self.q}, key subcomponents {self.k} (pass q=/k=)")
        return self.q.index(c_q), self.k.index(c_k)

    def pair(self, c_q: int, c_k: int) -> Float[torch.Tensor, "batch head q_pos k_pos"]:
        """One pair's term of every head's scores (raw ``q·k`` units)."""
        i, j = self._index(c_q, c_k)
        return self.values[..., i, j]

    @property
    def causal(self) -> torch.Tensor:
        T = self.values.shape[2]
        return torch.ones(T, T, dtype=torch.bool).tril()

    def scores(self, pairs: Sequence[tuple[int, int]] | None = None
               ) -> Float[torch.Tensor, "batch head q_pos k_pos"]:
        """The attention scores (``hook_attn_scores`` units, ``-inf`` above the diagonal) made of
        ``pairs`` alone (default: every computed pair), as in the paper's figure that sums chosen
        pairs' interaction strengths."""
        if pairs is None:
            s = self.values.sum((-2, -1))
        else:
            s = sum(self.pair(cq, ck) for cq, ck in pairs)
        return (s / self.attn_scale).masked_fill(~self.causal, -torch.inf)

    def pattern(self, pairs: Sequence[tuple[int, int]] | None = None
                ) -> Float[torch.Tensor, "batch head q_pos k_pos"]:
        """The attention pattern if only ``pairs`` contributed to the scores."""
        return self.scores(pairs).softmax(-1)

    def strength(self) -> Float[torch.Tensor, "n_q n_k head"]:
        """Mean ``|DDIS|`` over prompts and causal ``(t, t')`` of every pair in every head."""
        T = self.values.shape[2]
        n = self.values.shape[0] * T * (T + 1) / 2
        return self.values.abs().sum((0, 2, 3)).permute(1, 2, 0) / n

    def by_offset(self, c_q: int, c_k: int) -> Float[torch.Tensor, "head offset"]:
        """Mean over prompts and query positions of the pair's term at each offset ``t − t'``
        (comparable with the static ``QKInteractions.pair``)."""
        v = self.pair(c_q, c_k)
        return torch.stack([v.diagonal(-tau, 2, 3).mean((0, 2)) for tau in range(v.shape[2])], -1)

    def top(self, n: int = 10) -> list[tuple[int, int, int, float]]:
        """The ``n`` (pair, head) with the largest mean ``|DDIS|``: ``(c_q, c_k, head, value)``."""
        s = self.strength()
        out = []
        for flat in s.flatten().argsort(descending=True)[:n].tolist():
            i, rest = divmod(flat, s.shape[1] * s.shape[2])
            j, h = divmod(rest, s.shape[2])
            out.append((self.q[i], self.k[j], h, float(s[i, j, h])))
        return out

    def __repr__(self) -> str:
        b, H, T = self.values.shape[:3]
        cols = [(c, c) for c in ("c_q", "c_k", "head", "mean |DDIS|")]
        rows = [dict(zip(("c_q", "c_k", "head", "mean |DDIS|"), t)) for t in self.top(8)]
        table = text_table(cols, rows, lambda key, v: f"{v:.3f}" if key == "mean |DDIS|" else str(v))
        head = (f"QKDataInteractions(layer {self.layer}, {len(self.q)}×{len(self.k)} pairs, {H} heads, "
                f"{b} prompt(s) × {T} positions, weight={self.weight!r}, "
                f"{'rotary' if self.rotary else 'no rotary'})")
        return "\n".join([head, "  top pairs by mean |DDIS| (raw q·k units):"]
                         + ["  " + line for line in table.splitlines()])

    def plot(self, c_q: int, c_k: int, prompt: int = 0, heads: Sequence[int] | None = None,
             axes=None):
        """One prompt's ``DDIS`` of the pair as a heatmap per head (query × key position, blue
        negative, red positive). Needs matplotlib; returns the ``Axes``."""
        v = self.pair(c_q, c_k)[prompt]
        heads = list(range(v.shape[0])) if heads is None else list(heads)
        if axes is None:
            import matplotlib.pyplot as plt  # optional dependency, imported only when plotting

            axes = plt.subplots(1, len(heads), figsize=(2.6 * len(heads), 2.8), squeeze=False)[1][0]
        for ax, h in zip(axes, heads):
            heatmap(ax, v[h], f"L{self.layer}H{h}", "key position", "query position")
        axes[0].figure.suptitle(f"DDIS of W_Q:{c_q} × W_K:{c_k}")
        return axes


def _acts(dec: Decomposition, site: str, x: torch.Tensor, idx: list[int]) -> torch.Tensor:
    """``V_c · x`` ``[b, T, heads or 1, n]`` (per-head inputs keep their head axis)."""
    comp = dec.components[site]
    V = comp.V[idx].to(comp.U.dtype)
    x = x.to(V.dtype)
    return x @ V.T if dec.site(site).per_head_input else (x @ V.T)[:, :, None]


def _rotated(dec: Decomposition, layer: int, site: str, idx: list[int], T: int,
             rotary: bool) -> torch.Tensor:
    """The head blocks ``U^h_c`` ``[n, T, heads, d_head]``, rotated to each position."""
    comp, s = dec.components[site], dec.site(site)
    u = comp.U[:, idx].view(s.n_heads, -1, len(idx)).permute(2, 0, 1)  # [n, heads, d_head]
    u = u[:, None].expand(len(idx), T, *u.shape[1:]).contiguous()
    return dec.backend.apply_rotary(dec.model, layer, u) if rotary else u


@torch.no_grad()
def qk_data_interactions(dec: Decomposition, layer: int, tokens: Int[torch.Tensor, "*batch pos"], *,
                         q: Sequence[int] | None = None, k: Sequence[int] | None = None,
                         weight: str = "act") -> QKDataInteractions:
    """Data-dependent interaction strength of (query, key) subcomponent pairs of ``layer``.

    Arguments:
        dec: decomposition with ``blocks.{layer}.attn.W_Q`` and ``W_K`` decomposed.
        tokens: one prompt ``[pos]`` or a batch ``[batch, pos]``.
        q, k: query / key subcomponents to include (default: those with CI > 0 somewhere on
            ``tokens``).
        weight: ``"act"`` (activations ``V_c·φ``, the paper's definition) or ``"ci"``
            (activations times causal importance).

    Returns:
        A :class:`QKDataInteractions` (``values [batch, head, q_pos, k_pos, n_q, n_k]``).
    """
    if weight not in ("act", "ci"):
        raise ValueError(f"weight must be 'act' or 'ci', got {weight!r}")
    if not dec.backend.language_model:
        raise NotImplementedError(f"qk_data_interactions needs a language model; this "
                                  f"decomposition's backend is {dec.backend.name!r}")
    qs, ks = dec.site(f"blocks.{layer}.attn.W_Q").name, dec.site(f"blocks.{layer}.attn.W_K").name
    tokens = tokens[None] if tokens.dim() == 1 else tokens
    _, xs = dec.run_target(tokens)
    ci = dec.ci(xs).lower

    def chosen(site, given):
        if given is not None:
            return [int(c) for c in given]
        return (ci[site] > 0).flatten(0, -2).any(0).nonzero().flatten().tolist()

    qi, ki = chosen(qs, q), chosen(ks, k)
    if not qi or not ki:
        raise ValueError(f"no {'query' if not qi else 'key'} subcomponent has CI > 0 on these "
                         "tokens; pass q=/k= explicitly")
    model = dec.model
    H, Hk = dec.site(qs).n_heads, dec.site(ks).n_heads
    b, T = tokens.shape
    if b * H * T * T * len(qi) * len(ki) > MAX_ELEMENTS:
        raise ValueError(f"{b}×{H}×{T}²×{len(qi)}×{len(ki)} values is too many: pass fewer "
                         "prompts or choose subcomponents with q=[...], k=[...]")
    aq, ak = _acts(dec, qs, xs[qs], qi), _acts(dec, ks, xs[ks], ki)  # [b, T, H|1, n]
    if weight == "ci":
        aq = aq * ci[qs][..., qi][:, :, None].to(aq)
        ak = ak * ci[ks][..., ki][:, :, None].to(ak)
    ak = ak.repeat_interleave(H // Hk, dim=2) if ak.shape[2] > 1 else ak
    rotary = model.cfg.positional_embedding_type == "rotary"
    uq = _rotated(dec, layer, qs, qi, T, rotary)  # [n_q, T, H, d]
    uk = _rotated(dec, layer, ks, ki, T, rotary).repeat_interleave(H // Hk, dim=2)
    g = torch.einsum("itha,jsha->htsij", uq, uk.to(uq))  # [H, T, T, n_q, n_k]
    v = (aq.permute(0, 2, 1, 3)[:, :, :, None, :, None] * ak.permute(0, 2, 1, 3)[:, :, None, :, None, :]
         * g[None].to(aq))
    v = v.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=v.device).tril()[:, :, None, None], 0.0)
    return QKDataInteractions(layer, qi, ki, v.float().cpu(), attn_scale(model, layer), weight, rotary)
