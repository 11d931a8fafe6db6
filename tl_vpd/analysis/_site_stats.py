"""Streaming statistics of one site for :func:`tl_vpd.analysis.harvest`.

Per subcomponent: how many tokens it fired on (CI > threshold), its summed CI and the summed
activation where it fired, and a running top-``k`` of positions by CI with a window of tokens and
CIs around each. One update per batch keeps memory at ``O(k · C · window)`` however long the
data is.
"""

from __future__ import annotations

import torch

from tl_vpd._typing import Float, Int

__all__ = ["SiteStats"]


class SiteStats:
    """Streaming per-site statistics: counts, sums and a running top-k by CI."""

    def __init__(self, C: int, k: int, width: int):
        self.C, self.k, self.width = C, k, width
        self.n_tokens = 0
        self.fired = torch.zeros(C, dtype=torch.float64)
        self.sum_ci = torch.zeros(C, dtype=torch.float64)
        self.sum_act_fired = torch.zeros(C, dtype=torch.float64)
        self.key = torch.empty(0, C)
        self.ci = torch.empty(0, C)
        self.act = torch.empty(0, C)
        self.seq = torch.empty(0, C, dtype=torch.long)
        self.pos = torch.empty(0, C, dtype=torch.long)
        self.win_tok = torch.empty(0, C, width, dtype=torch.long)
        self.win_ci = torch.empty(0, C, width)

    def update(self, tokens: Int[torch.Tensor, "batch pos"], g: Float[torch.Tensor, "batch pos C"],
               act: Float[torch.Tensor, "batch pos C"], seq0: int, threshold: float,
               before: int) -> None:
        """Add one batch: its tokens, CIs ``g`` and activations ``act``; ``seq0`` is the index
        of its first sequence in the data, ``before`` the window's tokens before a position."""
        b, T, C = g.shape
        fired = g > threshold
        self.n_tokens += b * T
        self.fired += fired.sum((0, 1)).double()
        self.sum_ci += g.sum((0, 1)).double()
        self.sum_act_fired += (act * fired).sum((0, 1)).double()
        # Rank by CI; |act| only breaks ties (CI saturates at 1 on many tokens).
        key = (g + 1e-3 * act.abs() / (1 + act.abs())).reshape(b * T, C)
        old = self.key.shape[0]
        top = torch.cat([self.key, key]).topk(min(self.k, old + b * T), dim=0).indices  # [k, C]
        new = top >= old
        flat = (top - old).clamp_min(0)
        bi, ti = flat // T, flat % T
        cols = torch.arange(C)[None, :]
        offs = torch.arange(self.width) - before
        tw = ti[..., None] + offs  # [k, C, W]
        valid = (tw >= 0) & (tw < T)
        twc = tw.clamp(0, T - 1)
        new_tok = torch.where(valid, tokens[bi[..., None], twc], -1)
        new_ci = torch.where(valid, g[bi[..., None], twc, cols[..., None]], 0.0)
        new_vals = (g.reshape(b * T, C)[flat, cols], act.reshape(b * T, C)[flat, cols],
                    key[flat, cols], seq0 + bi, ti)
        if old:
            oi = top.clamp_max(old - 1)
            old_vals = (self.ci[oi, cols], self.act[oi, cols], self.key[oi, cols], self.seq[oi, cols],
                        self.pos[oi, cols])
            merged = [torch.where(new, n, o) for n, o in zip(new_vals, old_vals)]
            self.win_tok = torch.where(new[..., None], new_tok, self.win_tok[oi, cols])
            self.win_ci = torch.where(new[..., None], new_ci, self.win_ci[oi, cols])
        else:
            merged = list(new_vals)
            self.win_tok, self.win_ci = new_tok, new_ci
        self.ci, self.act, self.key, self.seq, self.pos = merged
