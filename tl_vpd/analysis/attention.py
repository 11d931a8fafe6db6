"""Attention analysis: offset profiles, ablation effects, and finders for attention mechanisms.

* :func:`prev_token_scores` — per-head mean attention at offset 1 (query position − key
  position) of the target.
* :func:`ablation_effect` — run with chosen subcomponents ablated (mask 0, others 1, Δ on) and
  compare each head's attention by offset, with a one-line :meth:`AblationEffect.summary`.
* :func:`find_prev_token_subcomponents` — the subcomponents whose ablation removes recent-token
  attention in several heads (the VPD paper's previous-token Q/K pair).
* :func:`qk_interactions` — static Q·K interaction strength of query and key subcomponents per
  head and offset, with the model's own rotary rotation (digest §12).
* :func:`find_syntax_boundary` — key subcomponents whose CI concentrates on punctuation,
  brackets, quotes and newlines, with precision per token class and the attention they route.

Offsets are ``τ = query position − key position ≥ 0``; an offset profile is the mean over batch
and query positions ``t ≥ τ`` of ``pattern[t, t − τ]``.
"""

from __future__ import annotations

import contextlib
import fnmatch
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import torch

from tl_vpd._typing import Float, Int
from tl_vpd.analysis.inspect import (
    check_selection,
    harvest,
    iter_token_batches,
    parse_selection,
    selection_label,
    token_decoder,
)

__all__ = [
    "AblationEffect",
    "BOUNDARY_CLASSES",
    "BoundaryHit",
    "PrevTokenHit",
    "QKInteractions",
    "ablation_effect",
    "ablation_masks",
    "attention_patterns",
    "classify_token",
    "find_prev_token_subcomponents",
    "find_syntax_boundary",
    "offset_profile",
    "prev_token_scores",
    "qk_interaction",
    "qk_interactions",
]

BOUNDARY_CLASSES = ("newline", "bracket", "quote", "punctuation")
_BRACKETS = set("()[]{}<>")
_QUOTES = set("\"'`“”‘’«»")
_PUNCT = set(string.punctuation) - _BRACKETS - _QUOTES | set("…–—")


# ----------------------------------------------------------------------------- patterns
def _model(dec_or_model):
    """The HookedTransformer of a decomposition, or the model itself."""
    return dec_or_model if hasattr(dec_or_model, "blocks") else dec_or_model.model


@torch.no_grad()
def attention_patterns(
    dec,
    tokens: Int[torch.Tensor, "batch pos"],
    masks: Mapping[str, torch.Tensor] | None = None,
    delta_masks: Mapping[str, torch.Tensor] | None = None,
) -> dict[int, Float[torch.Tensor, "batch head q k"]]:
    """Every layer's attention pattern, optionally under masks (``dec.masked``).

    ``dec`` may also be a plain ``HookedTransformer`` (then ``masks`` must be ``None``).
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


def _match_sites(dec, sites: str | Sequence[str]) -> list[str]:
    pats = [sites] if isinstance(sites, str) else list(sites)
    names = [s for s in dec.sites if any(fnmatch.fnmatchcase(s, p) for p in pats)]
    if not names:
        raise ValueError(f"no decomposed site matches {pats}; sites: {dec.sites}")
    return names


def _profiles(patterns: Mapping[int, torch.Tensor], max_offset: int) -> torch.Tensor:
    return torch.stack([offset_profile(patterns[L], max_offset) for L in sorted(patterns)])


def prev_token_scores(dec_or_model, tokens: Int[torch.Tensor, "batch pos"],
                      offset: int = 1) -> Float[torch.Tensor, "layer head"]:
    """Mean attention at ``offset`` (default 1: the previous token) of every head of the target."""
    pats = attention_patterns(_model(dec_or_model), tokens)
    return _profiles(pats, offset)[..., offset]


def ablation_masks(dec, selection, lead: Sequence[int]) -> dict[str, torch.Tensor]:
    """Masks ``{site: [*lead, C]}``: 1 everywhere except the selected subcomponents, which get
    their ``alpha`` (0 unless given; see :func:`~tl_vpd.analysis.inspect.parse_selection`)."""
    sel = parse_selection(selection)
    check_selection(dec, sel)
    comps = dec.components
    masks = {}
    for site, cs in sel.items():
        w = comps[site].W
        m = torch.ones(*lead, comps[site].C, dtype=w.dtype, device=w.device)
        for c, alpha in cs.items():
            m[..., c] = alpha
        masks[site] = m
    return masks


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
            return f"ablating {self.label} removes offset-{offset} attention in {_heads_text(heads)}"
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


def _heads_text(heads: Sequence[tuple[int, int]]) -> str:
    by_layer: dict[int, list[int]] = {}
    for L, H in heads:
        by_layer.setdefault(L, []).append(H)
    parts = [f"head{'s' if len(hs) > 1 else ''} {', '.join(map(str, hs))} of layer {L}"
             for L, hs in sorted(by_layer.items())]
    return "; ".join(parts)


def ablation_effect(dec, tokens: Int[torch.Tensor, "batch pos"], ablate, *,
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
    base = _profiles(attention_patterns(dec, tokens), max_offset)
    after = _profiles(attention_patterns(dec, tokens, ablation_masks(dec, sel, tokens.shape)), max_offset)
    return AblationEffect(sel, base, after)


# ----------------------------------------------------------------------------- prev-token finder
@dataclass
class PrevTokenHit:
    """A subcomponent whose ablation removes recent-token attention in several heads."""

    site: str
    c: int
    heads: list[tuple[int, int]]  # (layer, head) losing the attention
    base: Float[torch.Tensor, "layer head"]  # recent-token attention of the target
    after: Float[torch.Tensor, "layer head"]  # with the subcomponent ablated
    density: float  # fraction of the prompts' tokens where it fires
    offsets: tuple[int, ...] = (1,)

    @property
    def name(self) -> str:
        return f"{self.site}:{self.c}"

    @property
    def score(self) -> float:
        """Total drop of recent-token attention over all heads."""
        return float((self.base - self.after).clamp_min(0).sum())

    def __repr__(self) -> str:
        off = "-".join(map(str, self.offsets))
        drops = ", ".join(f"L{L}H{H} {self.base[L, H]:.2f}→{self.after[L, H]:.2f}" for L, H in self.heads)
        return (f"ablating {self.name} removes offset-{off} attention in {_heads_text(self.heads)} "
                f"({drops}; density {self.density:.3f})")


@torch.no_grad()
def find_prev_token_subcomponents(
    dec,
    tokens: Int[torch.Tensor, "batch pos"],
    *,
    sites: str | Sequence[str] = "blocks.*.attn.W_[QK]",
    offsets: Sequence[int] = (1,),
    min_heads: int = 2,
    min_base: float = 0.3,
    max_ratio: float = 0.5,
    min_density: float | None = 0.0,
    top_n: int = 10,
    chunk: int = 8,
) -> list[PrevTokenHit]:
    """Ablate each candidate subcomponent alone and keep those that remove recent-token attention.

    Arguments:
        dec: the decomposition.
        tokens: prompts ``[batch, pos]``.
        sites: glob pattern(s) of candidate sites (default every query and key matrix).
        offsets: the offsets that count as "recent" (default the previous token).
        min_heads: a hit must remove the attention in at least this many heads.
        min_base, max_ratio: a head loses it when its recent attention was ``≥ min_base`` and
            falls to ``≤ max_ratio`` of that.
        min_density: candidates must fire (CI > 0) on more than this fraction of the prompts'
            tokens; ``None`` tries every subcomponent.
        top_n: hits returned.
        chunk: ablations batched into one forward pass.

    Returns:
        Hits sorted by :attr:`PrevTokenHit.score` (total drop over heads), best first.
    """
    names = _match_sites(dec, sites)
    offs = list(offsets)

    def recent(patterns):
        return _profiles(patterns, max(offs))[..., offs].sum(-1)

    base = recent(attention_patterns(dec, tokens))
    ci = dec.causal_importance(tokens)
    density = {s: (ci[s] > 0).float().mean((0, 1)) for s in names}
    cands = [(s, c) for s in names for c in range(dec.components[s].C)
             if min_density is None or density[s][c] > min_density]
    b = tokens.shape[0]
    hits = []
    for i in range(0, len(cands), chunk):
        part = cands[i: i + chunk]
        k = len(part)
        masks: dict[str, torch.Tensor] = {}
        for j, (s, c) in enumerate(part):  # candidate j ablated in batch rows j*b .. (j+1)*b
            if s not in masks:
                W = dec.components[s].W
                masks[s] = torch.ones(k * b, tokens.shape[1], dec.components[s].C, dtype=W.dtype,
                                      device=W.device)
            masks[s][j * b: (j + 1) * b, :, c] = 0.0
        pats_k = attention_patterns(dec, tokens.repeat(k, 1), masks)
        for j, (s, c) in enumerate(part):
            after = recent({L: p[j * b: (j + 1) * b] for L, p in pats_k.items()})
            heads = [tuple(x) for x in ((base >= min_base) & (after <= max_ratio * base)).nonzero().tolist()]
            if len(heads) >= min_heads:
                hits.append(PrevTokenHit(s, c, heads, base, after, float(density[s][c]), tuple(offs)))
    hits.sort(key=lambda h: h.score, reverse=True)
    return hits[:top_n]


# ----------------------------------------------------------------------------- static QK
@dataclass
class QKInteractions:
    """Static interaction strength ``SIS[c_q, c_k, head, offset]`` of one layer (digest §12).

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
        lines = [f"QKInteractions(layer {self.layer}, {Cq}×{Ck} pairs, {H} heads, offsets "
                 f"{self.offsets[0]}..{self.offsets[-1]}, {rot})",
                 "  top pairs (standardized): c_q c_k head offset value"]
        lines += [f"  {cq:>4} {ck:>3} {h:>4} {t:>6} {v:+.2f}" for cq, ck, h, t, v in self.top(8)]
        return "\n".join(lines)


@torch.no_grad()
def qk_interactions(dec, layer: int, *, offsets: Sequence[int] | None = None, data=None,
                    signs: tuple | None = None) -> QKInteractions:
    """Static Q·K interaction of every (query, key) subcomponent pair of ``layer``.

    Arguments:
        dec: decomposition with ``blocks.{layer}.attn.W_Q`` and ``W_K`` decomposed.
        offsets: query − key offsets (default ``0..min(n_ctx, 32) − 1``).
        data: tokens to estimate each subcomponent's sign from (mean activation where it fires).
        signs: ``(s_q [C_q], s_k [C_k])`` given directly instead.

    The rotation is the model's own ``apply_rotary`` (TransformerLens convention: pairing,
    ``rotary_dim``, base): the query block is rotated to position ``τ``, the key block to 0, so
    ``q̃·k̃ = qᵀ R(t_k − t_q) k`` as in the forward pass. Grouped-query keys are shared by their
    query heads.
    """
    qs, ks = f"blocks.{layer}.attn.W_Q", f"blocks.{layer}.attn.W_K"
    cq, ck = dec.components[dec.site(qs).name], dec.components[dec.site(ks).name]
    model = dec.model
    attn = model.blocks[layer].attn
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
    dtype = attn.W_Q.dtype
    uq = (cq.U * (cq.V.norm(dim=1) * sq.to(cq.U))).to(dtype).view(H, -1, cq.C)  # [H, d_head, C_q]
    uk = (ck.U * (ck.V.norm(dim=1) * sk.to(ck.U))).to(dtype).view(Hk, -1, ck.C)
    uk = uk.repeat_interleave(H // Hk, dim=0)
    rotary = model.cfg.positional_embedding_type == "rotary"
    if rotary:
        T = max(offsets) + 1
        xq = uq.permute(2, 0, 1)[:, None].expand(cq.C, T, H, -1).contiguous()  # [C_q, pos, H, d]
        rq = attn.apply_rotary(xq)[:, offsets]
        rk = attn.apply_rotary(uk.permute(2, 0, 1)[:, None].contiguous())[:, 0]  # position 0
        values = torch.einsum("qthd,khd->qkht", rq, rk)
    else:
        values = torch.einsum("hdq,hdk->qkh", uq, uk)[..., None].expand(-1, -1, -1, len(offsets))
    return QKInteractions(layer, offsets, values.float().cpu(), rotary)


def qk_interaction(dec, layer: int, c_q: int, c_k: int, *, offsets: Sequence[int] | None = None,
                   data=None) -> Float[torch.Tensor, "head offset"]:
    """Static interaction ``[head, offset]`` of query subcomponent ``c_q`` and key ``c_k``."""
    return qk_interactions(dec, layer, offsets=offsets, data=data).pair(c_q, c_k)


# ----------------------------------------------------------------------------- syntax boundaries
def classify_token(s: str) -> str | None:
    """The boundary class of a decoded token: ``newline``, ``bracket``, ``quote``,
    ``punctuation`` (a token of symbols only; brackets before quotes before punctuation), or
    ``None``."""
    if "\n" in s or "\r" in s:
        return "newline"
    t = s.strip()
    if not t or not all(ch in _BRACKETS | _QUOTES | _PUNCT for ch in t):
        return None
    if any(ch in _BRACKETS for ch in t):
        return "bracket"
    if any(ch in _QUOTES for ch in t):
        return "quote"
    return "punctuation"


@dataclass
class BoundaryHit:
    """A key subcomponent whose firing concentrates on syntax-boundary tokens."""

    site: str
    c: int
    n_fired: int
    precision: float  # fraction of its firings on any boundary class
    class_precision: dict[str, float]  # fraction of its firings on each class
    base_rate: dict[str, float]  # fraction of all tokens in each class
    # per head of its layer: attention onto the keys where it fires, lost when it is ablated
    routed: list[float] | None = field(default=None)

    @property
    def name(self) -> str:
        return f"{self.site}:{self.c}"

    def __repr__(self) -> str:
        cls = ", ".join(f"{k} {v:.2f} (base {self.base_rate[k]:.2f})"
                        for k, v in self.class_precision.items() if v > 0)
        s = f"{self.name}: fires on {self.n_fired} tokens, boundary precision {self.precision:.2f} [{cls}]"
        if self.routed is not None:
            s += "; routes attention " + ", ".join(f"H{h} {r:+.2f}" for h, r in enumerate(self.routed))
        return s


@torch.no_grad()
def find_syntax_boundary(
    dec,
    data,
    decode: Callable | None = None,
    *,
    sites: str | Sequence[str] = "blocks.*.attn.W_K",
    threshold: float = 0.0,
    min_fired: int = 5,
    min_precision: float = 0.5,
    top_n: int = 10,
    batch_size: int = 16,
    route: bool = True,
) -> list[BoundaryHit]:
    """Key subcomponents that fire mostly on punctuation, brackets, quotes and newlines.

    Arguments:
        dec: the decomposition.
        data: token ids ``[n, seq]`` or batches.
        decode: ``decode([id]) -> str`` used to classify the vocabulary (default: the model's
            tokenizer; one is required).
        sites: glob pattern(s) of candidate sites.
        threshold: fires where CI exceeds this.
        min_fired, min_precision: a hit fires at least ``min_fired`` times and at least
            ``min_precision`` of its firings are on boundary tokens.
        top_n: hits returned, by precision.
        route: for each hit, measure per head of its layer how much attention queries pay to the
            keys where it fires, minus the same with it ablated (first batch of ``data``).
    """
    model = dec.model
    if decode is None and getattr(model, "tokenizer", None) is None:
        raise ValueError("find_syntax_boundary needs decode=... (the model has no tokenizer) to "
                         "classify tokens")
    to_str = token_decoder(model, decode)
    cls_of = torch.full((model.cfg.d_vocab,), -1, dtype=torch.long)
    for i in range(model.cfg.d_vocab):
        k = classify_token(to_str(i))
        if k is not None:
            cls_of[i] = BOUNDARY_CLASSES.index(k)
    names = _match_sites(dec, sites)
    K = len(BOUNDARY_CLASSES)
    fired = {s: torch.zeros(dec.components[s].C) for s in names}
    per_cls = {s: torch.zeros(K, dec.components[s].C) for s in names}
    cls_tokens = torch.zeros(K)
    n_tokens, first = 0, None
    for batch in iter_token_batches(data, batch_size):
        first = batch if first is None else first
        cls = cls_of[batch.cpu()]
        onehot = torch.stack([(cls == k) for k in range(K)], -1).float()  # [b, T, K]
        cls_tokens += onehot.sum((0, 1))
        n_tokens += batch.numel()
        ci = dec.causal_importance(batch)
        for s in names:
            f = (ci[s] > threshold).float().cpu()
            fired[s] += f.sum((0, 1))
            per_cls[s] += torch.einsum("btk,btc->kc", onehot, f)
    base = {k: float(cls_tokens[i] / max(n_tokens, 1)) for i, k in enumerate(BOUNDARY_CLASSES)}
    hits = []
    for s in names:
        prec = per_cls[s] / fired[s].clamp_min(1)
        total = prec.sum(0)
        for c in range(dec.components[s].C):
            if fired[s][c] >= min_fired and total[c] >= min_precision:
                hits.append(BoundaryHit(s, c, int(fired[s][c]), float(total[c]),
                                        {k: float(prec[i, c]) for i, k in enumerate(BOUNDARY_CLASSES)},
                                        base))
    hits.sort(key=lambda h: (h.precision, h.n_fired), reverse=True)
    hits = hits[:top_n]
    if route and first is not None:
        for h in hits:
            h.routed = _routed_attention(dec, first, h.site, h.c, threshold)
    return hits


def _routed_attention(dec, tokens, site: str, c: int, threshold: float) -> list[float] | None:
    layer = dec.site(site).layer
    if dec.site(site).kind != "W_K" or layer is None:
        return None
    keys = (dec.causal_importance(tokens)[site][..., c] > threshold).float()  # [b, T]

    def mass(masks=None):
        p = attention_patterns(dec, tokens, masks)[layer]  # [b, h, q, k]
        return torch.einsum("bhqk,bk->bhq", p, keys.to(p)).mean((0, 2))

    ablated = mass(ablation_masks(dec, {site: [c]}, tokens.shape))
    return (mass() - ablated).tolist()
