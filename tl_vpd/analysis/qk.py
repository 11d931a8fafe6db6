"""Static Q·K interactions between query and key subcomponents of one attention layer.

``SIS[c_q, c_k, head, τ]`` is the attention score query subcomponent ``c_q`` and key subcomponent
``c_k`` would produce on their own at offset ``τ`` (query position − key position), with the
model's own rotary rotation: a weight-only view of which pairs implement which attention pattern
(the VPD paper's static interaction strength of attention subcomponents).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from tl_vpd._typing import Float
from tl_vpd.analysis.subcomponents import harvest
from tl_vpd.tables import text_table

if TYPE_CHECKING:
    from tl_vpd.decomposition import Decomposition

__all__ = ["QKInteractions", "heatmap", "qk_interaction", "qk_interactions"]


def heatmap(ax, values: Float[torch.Tensor, "rows cols"], title: str, xlabel: str, ylabel: str,
            xticks: Sequence | None = None):
    """A diverging heatmap centred at 0 (blue negative, red positive) with a colour bar, the one
    look of every Q·K plot."""
    v = values.detach().float().cpu()
    lim = float(v.abs().max()) or 1.0
    im = ax.imshow(v.numpy(), cmap="RdBu_r", vmin=-lim, vmax=lim, aspect="auto", interpolation="nearest")
    ax.set_title(title, fontsize="small")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if xticks is not None:
        step = max(1, len(xticks) // 8)
        ax.set_xticks(range(0, len(xticks), step), [str(t) for t in xticks[::step]])
    ax.figure.colorbar(im, ax=ax, fraction=0.046)
    return ax


@dataclass
class QKInteractions:
    """Static interaction strength ``SIS[c_q, c_k, head, offset]`` of one layer.

    ``SIS = (s_q ‖V_q‖ U^h_q)ᵀ R_τ (s_k ‖V_k‖ U^h_k)`` without the ``1/√d_head`` scale; ``s`` is
    the sign of the subcomponent's mean activation where it fires (+1 without data).
    """

    layer: int
    offsets: list[int]
    values: Float[torch.Tensor, "C_q C_k head offset"]
    rotary: bool

    @property
    def standardized(self) -> Float[torch.Tensor, "C_q C_k head offset"]:
        """``(SIS − μ_h) / σ_h`` with mean and std over all ``(c_q, c_k, τ)`` of each head."""
        v = self.values.transpose(0, 2)  # head first
        flat = v.reshape(v.shape[0], -1)
        mu, sd = flat.mean(-1), flat.std(-1).clamp_min(1e-12)
        return ((v - mu[:, None, None, None]) / sd[:, None, None, None]).transpose(0, 2)

    def pair(self, c_q: int, c_k: int) -> Float[torch.Tensor, "head offset"]:
        return self.values[c_q, c_k]

    def top(self, n: int = 10, standardized: bool = True) -> list[tuple[int, int, int, int, float]]:
        """The ``n`` pairs with the largest ``|SIS|`` over heads and offsets:
        ``(c_q, c_k, head, offset, value)``."""
        v = self.standardized if standardized else self.values
        best = v.abs().flatten(2).max(-1)
        order = best.values.flatten().argsort(descending=True)[:n]
        out = []
        for i in order.tolist():
            cq, ck = divmod(i, v.shape[1])
            h, t = divmod(int(best.indices[cq, ck]), v.shape[3])
            out.append((cq, ck, h, self.offsets[t], float(v[cq, ck, h, t])))
        return out

    def __repr__(self) -> str:
        rot = "rotary" if self.rotary else "no rotary: constant over offsets"
        Cq, Ck, H, _ = self.values.shape
        cols = [("c_q", "c_q"), ("c_k", "c_k"), ("head", "head"), ("offset", "offset"),
                ("value", "value")]
        rows = [dict(zip(("c_q", "c_k", "head", "offset", "value"), t)) for t in self.top(8)]
        table = text_table(cols, rows, lambda k, v: f"{v:+.2f}" if k == "value" else str(v))
        lines = [f"QKInteractions(layer {self.layer}, {Cq}×{Ck} pairs, {H} heads, offsets "
                 f"{self.offsets[0]}..{self.offsets[-1]}, {rot})", "  top pairs (standardized):"]
        return "\n".join(lines + ["  " + line for line in table.splitlines()])

    def plot(self, c_q: int, c_k: int, standardized: bool = True, ax=None):
        """The pair's strength as a heatmap, head × offset. Needs matplotlib; returns the
        ``Axes``."""
        if ax is None:
            import matplotlib.pyplot as plt  # optional dependency, imported only when plotting

            ax = plt.subplots(figsize=(6, 2.8))[1]
        v = (self.standardized if standardized else self.values)[c_q, c_k]
        title = f"{'standardized ' if standardized else ''}SIS of W_Q:{c_q} × W_K:{c_k}, layer {self.layer}"
        return heatmap(ax, v, title, "offset (query − key)", "head", xticks=self.offsets)


@torch.no_grad()
def qk_interactions(dec: Decomposition, layer: int, *, offsets: Sequence[int] | None = None, data=None,
                    signs: tuple | None = None) -> QKInteractions:
    """Static Q·K interaction of every (query, key) subcomponent pair of ``layer``.

    Arguments:
        dec: decomposition with ``blocks.{layer}.attn.W_Q`` and ``W_K`` decomposed.
        offsets: query − key offsets (default ``0..min(n_ctx, 32) − 1``).
        data: tokens to estimate each subcomponent's sign from (mean activation where it fires).
        signs: ``(s_q [C_q], s_k [C_k])`` given directly instead.

    The rotation is the model's own (its backend's ``apply_rotary``: the model's pairing,
    ``rotary_dim`` and base): the query block is rotated to position ``τ``, the key block to 0, so
    ``q̃·k̃ = qᵀ R(t_k − t_q) k`` as in the forward pass. Grouped-query keys are shared by their
    query heads.
    """
    qs, ks = f"blocks.{layer}.attn.W_Q", f"blocks.{layer}.attn.W_K"
    cq, ck = dec.components[dec.site(qs).name], dec.components[dec.site(ks).name]
    model = dec.model
    H, Hk = dec.site(qs).n_heads, dec.site(ks).n_heads
    if offsets is None:
        offsets = range(min(model.cfg.n_ctx, 32))
    offsets = [int(t) for t in offsets]
    if min(offsets) < 0 or max(offsets) >= model.cfg.n_ctx:
        raise ValueError(f"offsets must lie in [0, n_ctx={model.cfg.n_ctx})")
    if signs is None and data is not None:
        h = harvest(dec, data, sites=[qs, ks], top_k=1, progress=False)
        signs = (h.sign[qs], h.sign[ks])
    sq, sk = (torch.ones(cq.C), torch.ones(ck.C)) if signs is None else map(torch.as_tensor, signs)
    dtype = dec.target_weight(qs).dtype
    uq = (cq.U * (cq.V.norm(dim=1) * sq.to(cq.U))).to(dtype).view(H, -1, cq.C)  # [H, d_head, C_q]
    uk = (ck.U * (ck.V.norm(dim=1) * sk.to(ck.U))).to(dtype).view(Hk, -1, ck.C)
    uk = uk.repeat_interleave(H // Hk, dim=0)
    rotary = model.cfg.positional_embedding_type == "rotary"
    if rotary:
        T = max(offsets) + 1
        xq = uq.permute(2, 0, 1)[:, None].expand(cq.C, T, H, -1).contiguous()  # [C_q, pos, H, d]
        rq = dec.backend.apply_rotary(model, layer, xq)[:, offsets]
        rk = dec.backend.apply_rotary(model, layer, uk.permute(2, 0, 1)[:, None].contiguous())[:, 0]
        values = torch.einsum("qthd,khd->qkht", rq, rk)
    else:
        values = torch.einsum("hdq,hdk->qkh", uq, uk)[..., None].expand(-1, -1, -1, len(offsets))
    return QKInteractions(layer, offsets, values.float().cpu(), rotary)


def qk_interaction(dec: Decomposition, layer: int, c_q: int, c_k: int, *,
                   offsets: Sequence[int] | None = None,
                   data=None) -> Float[torch.Tensor, "head offset"]:
    """Static interaction ``[head, offset]`` of query subcomponent ``c_q`` and key ``c_k``."""
    return qk_interactions(dec, layer, offsets=offsets, data=data).pair(c_q, c_k)
