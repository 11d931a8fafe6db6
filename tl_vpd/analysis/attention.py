"""Attention patterns and how an ablation changes them.

* :func:`attention_patterns` — every layer's pattern, optionally under masks;
* :func:`offset_profile` / :func:`prev_token_scores` — mean attention by offset; per head, at
  offset 1 (query position − key position) of the target;
* :func:`ablation_masks` — the masks of an ablation (the selected subcomponents at their
  ``alpha``, every other subcomponent 1); every analysis function that ablates builds them here;
* :func:`ablation_effect` — run with chosen subcomponents ablated (Δ on) and compare each head's
  attention by offset, with a one-line :meth:`AblationEffect.summary`.

Offsets are ``τ = query position − key position ≥ 0``; an offset profile is the mean over batch
and query positions ``t ≥ τ`` of ``pattern[t, t − τ]``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from tl_vpd import masking
from tl_vpd._typing import Float, Int
from tl_vpd.analysis.selection import Selection, check_selection, parse_selection, selection_label

if TYPE_CHECKING:
    from transformer_lens import HookedTransformer

    from tl_vpd.decomposition import Decomposition

__all__ = [
    "AblationEffect",
    "ablation_effect",
    "ablation_masks",
    "attention_patterns",
    "heads_text",
    "offset_profile",
    "prev_token_scores",
    "profiles",
]


# ----------------------------------------------------------------------------- patterns
def _model(dec_or_model):
    """The target model of a decomposition, or the model itself."""
    return dec_or_model if hasattr(dec_or_model, "blocks") else dec_or_model.model


@torch.no_grad()
def attention_patterns(
    dec: Decomposition | HookedTransformer,
    tokens: Int[torch.Tensor, "batch pos"],
    masks: Mapping[str, torch.Tensor] | None = None,
    delta_masks: Mapping[str, torch.Tensor] | None = None,
) -> dict[int, Float[torch.Tensor, "batch head q k"]]:
    """Every layer's attention pattern, optionally under masks (``dec.masked``).

    ``dec`` may also be a plain model (``HookedTransformer`` or ``TransformerBridge``; then
    ``masks`` must be ``None``).
    """
    model = _model(dec)
    ctx = dec.masked(masks, delta_masks) if masks else contextlib.nullcontext()
    with ctx:
        _, cache = model.run_with_cache(tokens, names_filter=lambda n: n.endswith("attn.hook_pattern"))
    return {int(n.split(".")[1]): cache[n] for n in cache.keys()}


def offset_profile(pattern: Float[torch.Tensor, "batch head q k"],
                   max_offset: int) -> Float[torch.Tensor, "head offset"]:
    """Mean attention at each offset ``0..max_offset`` per head (queries ``t ≥ τ``)."""
    cols = []
    for tau in range(max_offset + 1):
        d = pattern.diagonal(offset=-tau, dim1=-2, dim2=-1)  # [batch, head, q - tau]
        cols.append(d.mean((0, 2)) if d.shape[-1] else pattern.new_zeros(pattern.shape[1]))
    return torch.stack(cols, -1)


def profiles(patterns: Mapping[int, torch.Tensor],
             max_offset: int) -> Float[torch.Tensor, "layer head offset"]:
    """:func:`offset_profile` of every layer, stacked in layer order."""
    return torch.stack([offset_profile(patterns[L], max_offset) for L in sorted(patterns)])


def prev_token_scores(dec_or_model, tokens: Int[torch.Tensor, "batch pos"],
                      offset: int = 1) -> Float[torch.Tensor, "layer head"]:
    """Mean attention at ``offset`` (default 1: the previous token) of every head of the target."""
    pats = attention_patterns(_model(dec_or_model), tokens)
    return profiles(pats, offset)[..., offset]


def ablation_masks(dec: Decomposition, selection: Selection, lead: Sequence[int], *,
                   include: Sequence[str] = ()) -> dict[str, torch.Tensor]:
    """Masks ``{site: [*lead, C]}``: 1 everywhere except the selected subcomponents, which get
    their ``alpha`` (0 unless given; see :func:`~tl_vpd.analysis.selection.parse_selection`).

    Arguments:
        dec: the decomposition.
        selection: the subcomponents to ablate (any form ``parse_selection`` accepts).
        lead: the leading shape of the masks, ``[batch, pos]`` for language models.
        include: further sites that get a mask (all ones where nothing of theirs is selected),
            so that the masks of several ablations can be stacked along the batch.

    Returns:
        ``{site: mask}`` in the dtype and on the device of each site's weight.
    """
    sel = parse_selection(selection)
    check_selection(dec, sel)
    sel.update({s: {} for s in include if s not in sel})
    return masking.ablation_masks(dec.components, sel, lead)


# ----------------------------------------------------------------------------- ablation
@dataclass
class AblationEffect:
    """Attention by offset of every head, with and without an ablation.

    Attributes:
        ablated: ``{site: {c: alpha}}``.
        base, after: ``[layer, head, offset]`` mean attention at offsets ``0..max_offset``.
    """

    ablated: dict[str, dict[int, float]]
    base: Float[torch.Tensor, "layer head offset"]
    after: Float[torch.Tensor, "layer head offset"]

    @property
    def delta(self) -> Float[torch.Tensor, "layer head offset"]:
        return self.after - self.base

    @property
    def label(self) -> str:
        return selection_label(self.ablated)

    def removed(self, offset: int = 1, min_base: float = 0.3,
                max_ratio: float = 0.5) -> list[tuple[int, int]]:
        """``(layer, head)`` whose attention at ``offset`` was at least ``min_base`` and fell
        to at most ``max_ratio`` of it."""
        b, a = self.base[..., offset], self.after[..., offset]
        hit = (b >= min_base) & (a <= max_ratio * b)
        return [tuple(x) for x in hit.nonzero().tolist()]

    def summary(self, offset: int = 1, **kwargs) -> str:
        """E.g. ``"ablating blocks.1.attn.W_Q:3 removes offset-1 attention in heads 0, 2, 3 of
        layer 1"``."""
        heads = self.removed(offset, **kwargs)
        if heads:
            return f"ablating {self.label} removes offset-{offset} attention in {heads_text(heads)}"
        d = self.delta.abs()
        L, H, t = (int(i) for i in torch.unravel_index(d.argmax(), d.shape))
        return (f"ablating {self.label} removes no head's offset-{offset} attention; largest "
                f"change {self.delta[L, H, t]:+.3f} at offset {t} in head {H} of layer {L}")

    def __repr__(self) -> str:
        lines = [self.summary(), "  layer head  offset: base → ablated"]
        changed = (self.delta.abs() > 0.05).any(-1).nonzero().tolist()
        for L, H in changed:
            cells = "  ".join(f"{t}: {self.base[L, H, t]:.2f}→{self.after[L, H, t]:.2f}"
                              for t in range(self.base.shape[-1]))
            lines.append(f"  {L:>5} {H:>4}  {cells}")
        return "\n".join(lines)


def heads_text(heads: Sequence[tuple[int, int]]) -> str:
    """``"heads 0, 2 of layer 1; head 3 of layer 2"``."""
    by_layer: dict[int, list[int]] = {}
    for L, H in heads:
        by_layer.setdefault(L, []).append(H)
    parts = [f"head{'s' if len(hs) > 1 else ''} {', '.join(map(str, hs))} of layer {L}"
             for L, hs in sorted(by_layer.items())]
    return "; ".join(parts)


def ablation_effect(dec: Decomposition, tokens: Int[torch.Tensor, "batch pos"], ablate, *,
                    max_offset: int = 4) -> AblationEffect:
    """Change of every head's attention by offset when ``ablate`` is removed.

    Arguments:
        dec: the decomposition.
        tokens: prompts ``[batch, pos]``.
        ablate: subcomponents, e.g. ``"blocks.1.attn.W_Q:3"`` or ``{site: [c, ...]}``; they get
            mask 0 (or their ``alpha``), every other subcomponent 1, Δ on.
        max_offset: largest offset reported.
    """
    sel = parse_selection(ablate)
    base = profiles(attention_patterns(dec, tokens), max_offset)
    after = profiles(attention_patterns(dec, tokens, ablation_masks(dec, sel, tokens.shape)), max_offset)
    return AblationEffect(sel, base, after)
