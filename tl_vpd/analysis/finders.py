"""Finders: search a decomposition for two attention mechanisms the VPD paper reports.

* :func:`find_prev_token_subcomponents` — the subcomponents whose ablation removes recent-token
  attention in several heads (the VPD paper's previous-token Q/K pair, one subcomponent spanning
  heads);
* :func:`find_syntax_boundary` — key subcomponents whose CI concentrates on punctuation,
  brackets, quotes and newlines, with precision per token class and the attention they route.
"""

from __future__ import annotations

import fnmatch
import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from tl_vpd._typing import Float, Int
from tl_vpd.analysis._tokens import iter_token_batches, token_decoder
from tl_vpd.analysis.attention import ablation_masks, attention_patterns, heads_text, profiles

if TYPE_CHECKING:
    from tl_vpd.decomposition import Decomposition

__all__ = [
    "BOUNDARY_CLASSES",
    "BoundaryHit",
    "PrevTokenHit",
    "classify_token",
    "find_prev_token_subcomponents",
    "find_syntax_boundary",
]

BOUNDARY_CLASSES = ("newline", "bracket", "quote", "punctuation")
_BRACKETS = set("()[]{}<>")
_QUOTES = set("\"'`“”‘’«»")
_PUNCT = set(string.punctuation) - _BRACKETS - _QUOTES | set("…–—")


# ----------------------------------------------------------------------------- helpers
def _match_sites(dec: Decomposition, sites: str | Sequence[str]) -> list[str]:
    pats = [sites] if isinstance(sites, str) else list(sites)
    names = [s for s in dec.sites if any(fnmatch.fnmatchcase(s, p) for p in pats)]
    if not names:
        raise ValueError(f"no decomposed site matches {pats}; sites: {dec.sites}")
    return names


# ----------------------------------------------------------------------------- previous token
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
        return (f"ablating {self.name} removes offset-{off} attention in {heads_text(self.heads)} "
                f"({drops}; density {self.density:.3f})")


@torch.no_grad()
def find_prev_token_subcomponents(
    dec: Decomposition,
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
        return profiles(patterns, max(offs))[..., offs].sum(-1)

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
        # Candidate j is ablated in batch rows j*b .. (j+1)*b: one forward pass for the chunk.
        chunk_sites = list(dict.fromkeys(s for s, _ in part))
        each = [ablation_masks(dec, {s: [c]}, tokens.shape, include=chunk_sites) for s, c in part]
        masks = {s: torch.cat([m[s] for m in each]) for s in chunk_sites}
        pats_k = attention_patterns(dec, tokens.repeat(k, 1), masks)
        for j, (s, c) in enumerate(part):
            after = recent({L: p[j * b: (j + 1) * b] for L, p in pats_k.items()})
            heads = [tuple(x) for x in ((base >= min_base) & (after <= max_ratio * base)).nonzero().tolist()]
            if len(heads) >= min_heads:
                hits.append(PrevTokenHit(s, c, heads, base, after, float(density[s][c]), tuple(offs)))
    hits.sort(key=lambda h: h.score, reverse=True)
    return hits[:top_n]


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
    dec: Decomposition,
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


def _routed_attention(dec: Decomposition, tokens: Int[torch.Tensor, "batch pos"], site: str, c: int,
                      threshold: float) -> list[float] | None:
    layer = dec.site(site).layer
    if dec.site(site).kind != "W_K" or layer is None:
        return None
    keys = (dec.causal_importance(tokens)[site][..., c] > threshold).float()  # [b, T]

    def mass(masks=None):
        p = attention_patterns(dec, tokens, masks)[layer]  # [b, h, q, k]
        return torch.einsum("bhqk,bk->bhq", p, keys.to(p)).mean((0, 2))

    ablated = mass(ablation_masks(dec, {site: [c]}, tokens.shape))
    return (mass() - ablated).tolist()
