"""Syntax routing: how much attention each head puts on boundary tokens, with and without an
ablation.

VPD paper, "Decomposing attention behavior 2: Previous syntax boundary movement": a key
subcomponent that fires on punctuation, brackets and newlines, paired with an always-on query
subcomponent, makes heads attend to the previous syntax boundary. :func:`boundary_routing`
measures that routing directly: for every head, the mean over prompts and query positions of the
attention on key positions holding a boundary token,

    mass[L, h] = mean_{b, t} Σ_{t' ≤ t, token[b, t'] ∈ boundary} A^{L,h}[b, t, t'],

once for the target and once with the chosen subcomponents ablated (their masks at 0, or their
``alpha``; every other mask 1, Δ on: :func:`~tl_vpd.analysis.attention.ablation_masks`). A head
that attends uniformly to its context would score :attr:`BoundaryRouting.chance`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from tl_vpd._typing import Bool, Float, Int
from tl_vpd.analysis._tokens import fmt_token, token_decoder
from tl_vpd.analysis.attention import ablation_masks, attention_patterns
from tl_vpd.analysis.finders import classify_token
from tl_vpd.analysis.selection import parse_selection, selection_label
from tl_vpd.tables import html_table, text_table

if TYPE_CHECKING:
    from tl_vpd.decomposition import Decomposition

__all__ = ["BoundaryRouting", "boundary_mask", "boundary_routing"]

Boundary = Callable[[str], bool] | Collection | torch.Tensor | None


def boundary_mask(model, tokens: Int[torch.Tensor, "batch pos"], boundary: Boundary = None,
                  decode: Callable | None = None) -> tuple[Bool[torch.Tensor, "batch pos"], str]:
    """Which positions hold a boundary token, and a label for it.

    Arguments:
        model: the target (its tokenizer decodes when ``decode`` is not given).
        tokens: the prompts.
        boundary: ``None`` (every token :func:`~tl_vpd.analysis.finders.classify_token` calls a
            newline, bracket, quote or punctuation), a predicate on the decoded token, a
            collection of token ids or decoded strings, or a bool mask ``[batch, pos]``.
        decode: ``decode([id]) -> str``.
    """
    if torch.is_tensor(boundary) and boundary.dtype == torch.bool:
        if boundary.shape != tokens.shape:
            raise ValueError(f"a boundary mask must have the tokens' shape {tuple(tokens.shape)}, "
                             f"got {tuple(boundary.shape)}")
        return boundary.cpu(), "given positions"
    to_str = token_decoder(model, decode)
    if boundary is None or callable(boundary):
        if boundary is None and decode is None and getattr(model, "tokenizer", None) is None:
            raise ValueError("boundary tokens by class need decode=... (the model has no "
                             "tokenizer), or pass boundary= as token ids")
        pred = boundary or (lambda s: classify_token(s) is not None)
        ids = [i for i in range(model.cfg.d_vocab) if pred(to_str(i))]
    else:
        items = list(boundary.tolist() if torch.is_tensor(boundary) else boundary)
        strs = {s for s in items if isinstance(s, str)}
        ids = sorted({int(i) for i in items if not isinstance(i, str)}
                     | {i for i in range(model.cfg.d_vocab) if strs and to_str(i) in strs})
    if not ids:
        raise ValueError("no vocabulary token matches the boundary definition")
    label = " ".join(repr(fmt_token(to_str(i))) for i in ids[:8]) + (" ..." if len(ids) > 8 else "")
    is_b = torch.zeros(model.cfg.d_vocab, dtype=torch.bool)
    is_b[ids] = True
    return is_b[tokens.cpu()], label


@dataclass
class BoundaryRouting:
    """Attention on boundary tokens per head, for the target and with an ablation.

    Attributes:
        ablated: ``{site: {c: alpha}}``.
        boundary: which tokens count (a label).
        base, after: ``[layer, head]`` mean attention on boundary keys.
        chance: what uniform attention over each query's context would give.
        frac_boundary: fraction of the prompts' tokens that are boundaries.
    """

    ablated: dict[str, dict[int, float]]
    boundary: str
    base: Float[torch.Tensor, "layer head"]
    after: Float[torch.Tensor, "layer head"]
    chance: float
    frac_boundary: float

    @property
    def delta(self) -> Float[torch.Tensor, "layer head"]:
        return self.after - self.base

    def rows(self) -> list[dict]:
        """One row per head, the largest change first."""
        order = self.delta.abs().flatten().argsort(descending=True).tolist()
        H = self.base.shape[1]
        return [{"head": f"L{i // H}H{i % H}", "base": float(self.base.flatten()[i]),
                 "after": float(self.after.flatten()[i]), "delta": float(self.delta.flatten()[i])}
                for i in order]

    _COLS = [("head", "head"), ("base", "target"), ("after", "ablated"), ("delta", "change")]

    def table(self, n: int | None = None) -> str:
        """Heads by the size of the change, as a text table (all heads unless ``n``)."""
        return text_table(self._COLS, self.rows()[:n], _fmt)

    def _header(self) -> str:
        return (f"attention on boundary tokens [{self.boundary}] ({self.frac_boundary:.0%} of "
                f"tokens; uniform attention would give {self.chance:.3f}), target vs. ablating "
                f"{selection_label(self.ablated)}")

    def __repr__(self) -> str:
        return self._header() + "\n" + "\n".join("  " + s for s in self.table(8).splitlines())

    def _repr_html_(self) -> str:
        return f"<p>{self._header()}</p>" + html_table(self._COLS, self.rows(), _fmt)


def _fmt(key: str, v) -> str:
    return f"{v:+.3f}" if key == "delta" else f"{v:.3f}" if isinstance(v, float) else str(v)


def boundary_mass(patterns: dict[int, torch.Tensor],
                  keys: Bool[torch.Tensor, "batch pos"]) -> Float[torch.Tensor, "layer head"]:
    """Mean over prompts and queries of each head's attention on the ``keys`` positions."""
    rows = []
    for L in sorted(patterns):
        p = patterns[L]
        rows.append(torch.einsum("bhqk,bk->bhq", p, keys.to(p)).mean((0, 2)))
    return torch.stack(rows).float().cpu()


@torch.no_grad()
def boundary_routing(dec: Decomposition, tokens: Int[torch.Tensor, "*batch pos"], ablate,
                     boundary: Boundary = None, *, decode: Callable | None = None) -> BoundaryRouting:
    """Each head's attention on boundary tokens, for the target and with ``ablate`` removed.

    Arguments:
        dec: the decomposition.
        tokens: prompts ``[batch, pos]``.
        ablate: the subcomponents to ablate, e.g. a syntax-boundary key ``"blocks.1.attn.W_K:7"``
            (any selection :func:`~tl_vpd.analysis.selection.parse_selection` accepts).
        boundary: which tokens are boundaries (see :func:`boundary_mask`; default: newlines,
            brackets, quotes and punctuation, which needs ``decode`` or a tokenizer).
        decode: ``decode([id]) -> str``.
    """
    if not dec.backend.language_model:
        raise NotImplementedError(f"boundary_routing needs a language model's attention; this "
                                  f"decomposition's backend is {dec.backend.name!r}")
    tokens = tokens[None] if tokens.dim() == 1 else tokens
    sel = parse_selection(ablate)
    keys, label = boundary_mask(dec.model, tokens, boundary, decode)
    base = boundary_mass(attention_patterns(dec, tokens), keys)
    after = boundary_mass(attention_patterns(dec, tokens, ablation_masks(dec, sel, tokens.shape)), keys)
    T = tokens.shape[1]
    chance = float((keys.float().cumsum(-1) / torch.arange(1, T + 1)).mean())
    return BoundaryRouting(sel, label, base, after, chance, float(keys.float().mean()))
