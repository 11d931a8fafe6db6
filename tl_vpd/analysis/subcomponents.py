"""Subcomponent cards and the dataset pass that fills them.

:func:`harvest` makes one pass over a dataset (with a ``tqdm.auto`` bar) and keeps, for every
subcomponent of every site, its firing density (CI > ``threshold``), mean CI and the top-``k``
positions by CI together with a window of tokens around each. :func:`subcomponent` (the engine of
``dec.subcomponent(site, c)``) adds the weight-only facts to that: ``‖u_c‖``, ``‖v_c‖``, the
tokens it reads (``W_E · v_c``) or predicts (``u_c · W_U``) and, for attention sites, the share
of its weight in each head (VPD paper, its analysis of attention subcomponents that span heads):

* ``W_Q``/``W_K``/``W_V``: ``‖U^h_c‖ · ‖V_c‖`` (the head-``h`` rows of ``u_c``);
* ``W_O``: ``‖U_c‖ · ‖V^h_c‖`` (the head-``h`` columns of ``v_c``).

A subcomponent *spans heads* when its top head holds less than :data:`SPANS_HEADS_BELOW` of it.

Activations are the VPD paper's interpretable ones, ``a_c = ‖u_c‖ (v_c · x)``: the size of the
subcomponent's output, signed by its input. For sites whose input arrives per head (split-QKV
models) ``x`` is averaged over heads, as the CI function sees it.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from tl_vpd._typing import Float
from tl_vpd.analysis._site_stats import SiteStats
from tl_vpd.analysis._tokens import fmt_token, iter_token_batches, looks_like_text, token_decoder
from tl_vpd.tables import format_cell, html_table, text_table

if TYPE_CHECKING:
    from tl_vpd.decomposition import Decomposition

__all__ = [
    "Context",
    "Harvest",
    "SPANS_HEADS_BELOW",
    "SubcomponentInfo",
    "harvest",
    "head_fractions",
    "subcomponent",
]

# Below this share of its weight in its top head a subcomponent counts as spanning heads: a
# head-by-head analysis would see it as several pieces.
SPANS_HEADS_BELOW = 0.8
_RESIDUAL_READERS = ("W_Q", "W_K", "W_V", "W_in", "W_gate")
_RESIDUAL_WRITERS = ("W_O", "W_out")


def head_fractions(dec: Decomposition, site: str, c: int) -> Float[torch.Tensor, " n_heads"] | None:
    """Share of subcomponent ``c``'s weight in each head (see the module); ``None`` for MLP sites."""
    s = dec.site(site)
    if s.n_heads is None or s.kind not in ("W_Q", "W_K", "W_V", "W_O"):
        return None
    comp = dec.components[site]
    with torch.no_grad():
        if s.kind == "W_O":  # heads split the input: V_c
            per_head = comp.V[c].view(s.n_heads, -1).norm(dim=-1) * comp.U[:, c].norm()
        else:  # heads split the output: U_c
            per_head = comp.U[:, c].view(s.n_heads, -1).norm(dim=-1) * comp.V[c].norm()
    return (per_head / per_head.sum().clamp_min(1e-30)).float().cpu()


def _site_activation(comp, site, x: torch.Tensor) -> torch.Tensor:
    """``‖u_c‖ (v_c · x)`` for every ``c`` (per-head inputs averaged over heads)."""
    x = x.mean(-2) if site.per_head_input else x
    return comp.inner_acts(x.to(comp.V.dtype)) * comp.U.norm(dim=0)


# ----------------------------------------------------------------------------- results
@dataclass
class Context:
    """A window of tokens around one top-CI position of a subcomponent."""

    tokens: list[str]
    ci: list[float]  # the subcomponent's CI at each token of the window
    center: int  # index of the top position within the window
    seq: int  # sequence index in the harvested data
    pos: int  # position in that sequence
    act: float  # ‖u_c‖ (v_c · x) at the top position

    def __str__(self) -> str:
        toks = [fmt_token(t) for t in self.tokens]
        toks[self.center] = f"[[{toks[self.center]}]]"
        return "".join(toks) if looks_like_text(self.tokens) else " ".join(toks)

    def _html(self) -> str:
        spans = []
        for i, (t, g) in enumerate(zip(self.tokens, self.ci)):
            style = f"background: rgba(255,120,0,{min(max(g, 0.0), 1.0):.2f});"
            if i == self.center:
                style += " outline: 1px solid #333;"
            spans.append(f'<span style="{style}" title="CI {g:.2f}">'
                         f"{html.escape(fmt_token(t))}</span>")
        return "".join(spans)


@dataclass
class SubcomponentInfo:
    """Everything known about one subcomponent (``dec.subcomponent(site, c)``).

    Attributes:
        site, c: which subcomponent.
        u_norm, v_norm: ``‖u_c‖`` (write) and ``‖v_c‖`` (read).
        density: fraction of harvested tokens with CI > ``threshold`` (``None`` without data).
        mean_ci: mean CI over harvested tokens.
        n_tokens: tokens harvested.
        contexts: top-CI contexts, best first.
        reads: ``(token, score)`` of the tokens whose embeddings most activate it (``W_E · v_c``,
            signed so that positive means its usual firing direction); residual-reading sites.
        predicts: ``(token, score)`` it most promotes (``u_c · W_U``, same sign); W_O/W_out.
        reads_note: how exact ``reads``/``predicts`` are (direct path only beyond layer 0 or
            through a norm).
        head_fractions: share of its weight per head (attention sites).
    """

    site: str
    c: int
    u_norm: float
    v_norm: float
    density: float | None = None
    mean_ci: float | None = None
    n_tokens: int = 0
    threshold: float = 0.0
    contexts: list[Context] = field(default_factory=list)
    reads: list[tuple[str, float]] = field(default_factory=list)
    predicts: list[tuple[str, float]] = field(default_factory=list)
    reads_note: str = ""
    head_fractions: list[float] | None = None

    @property
    def name(self) -> str:
        return f"{self.site}:{self.c}"

    @property
    def top_head(self) -> int | None:
        hf = self.head_fractions
        return None if hf is None else max(range(len(hf)), key=hf.__getitem__)

    @property
    def spans_heads(self) -> bool | None:
        """Whether no single head holds :data:`SPANS_HEADS_BELOW` of its weight."""
        return None if self.head_fractions is None else max(self.head_fractions) < SPANS_HEADS_BELOW

    def _lines(self) -> list[tuple[str, str]]:
        rows = [("weights", f"‖u‖ = {self.u_norm:.3g}, ‖v‖ = {self.v_norm:.3g}")]
        if self.density is not None:
            rows.append(("firing", f"density {self.density:.4f} (CI > {self.threshold:g}), "
                                   f"mean CI {self.mean_ci:.4f}, over {self.n_tokens:,} tokens"))
        if self.head_fractions is not None:
            hf = "  ".join(f"{h}: {f:.2f}" for h, f in enumerate(self.head_fractions))
            verdict = "spans heads" if self.spans_heads else f"mostly head {self.top_head}"
            rows.append(("heads", f"{hf}  ({verdict})"))
        if self.reads:
            rows.append((f"reads {self.reads_note}",
                         ", ".join(f"{fmt_token(t)!r} {s:+.2f}" for t, s in self.reads)))
        if self.predicts:
            rows.append((f"predicts {self.reads_note}",
                         ", ".join(f"{fmt_token(t)!r} {s:+.2f}" for t, s in self.predicts)))
        return rows

    def __repr__(self) -> str:
        lines = [f"Subcomponent {self.name}"]
        lines += [f"  {k}: {v}" for k, v in self._lines()]
        if self.contexts:
            lines.append("  top contexts (CI, activation):")
            lines += [f"    {x.ci[x.center]:.2f} {x.act:+8.3f}  {x}" for x in self.contexts]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = html_table([("key", ""), ("value", "")],
                          [{"key": k, "value": v} for k, v in self._lines()])
        # The contexts' cells are coloured token spans (markup), which html_table would escape.
        ctx = "".join(f"<tr><td>{x.ci[x.center]:.2f}</td><td>{x.act:+.3f}</td>"
                      f"<td style='font-family:monospace'>{x._html()}</td></tr>"
                      for x in self.contexts)
        ctx = (f"<p><i>top contexts</i></p><table><tr><th>CI</th><th>act</th><th>context</th>"
               f"</tr>{ctx}</table>") if ctx else ""
        return f"<div><b>Subcomponent {html.escape(self.name)}</b>{rows}{ctx}</div>"


class Harvest:
    """Dataset-level statistics of every subcomponent of the harvested sites (see :func:`harvest`).

    Attributes:
        sites: harvested site names.
        n_tokens: tokens seen.
        density: ``{site: [C]}`` fraction of tokens with CI > ``threshold``.
        mean_ci: ``{site: [C]}``.
        sign: ``{site: [C]}`` sign of the mean activation where the subcomponent fires (+1 where
            it never fires).
    """

    def __init__(self, dec: Decomposition, stats: Mapping[str, SiteStats], threshold: float, before: int,
                 decode: Callable | None):
        self.dec = dec
        self._stats = dict(stats)
        self.sites = list(stats)
        self.threshold = threshold
        self.before = before
        self.decode = decode
        st0 = next(iter(stats.values()))
        self.n_tokens = st0.n_tokens
        self.density = {s: (st.fired / max(st.n_tokens, 1)).float() for s, st in stats.items()}
        self.mean_ci = {s: (st.sum_ci / max(st.n_tokens, 1)).float() for s, st in stats.items()}
        self.sign = {s: torch.where(st.sum_act_fired < 0, -1.0, 1.0) for s, st in stats.items()}

    def contexts(self, site: str, c: int, n: int | None = None) -> list[Context]:
        """Top-CI contexts of ``site:c``, best first (only positions where it fired)."""
        st = self._stats[self._check(site)]
        to_str = token_decoder(self.dec.model, self.decode)
        out = []
        order = st.key[:, c].argsort(descending=True)
        for i in order[: n or st.k].tolist():
            if st.ci[i, c] <= self.threshold:
                break
            toks, cis = st.win_tok[i, c], st.win_ci[i, c]
            keep = toks >= 0
            center = self.before - int((~keep[: self.before]).sum())  # padding before it
            out.append(Context([to_str(t) for t in toks[keep].tolist()], cis[keep].tolist(),
                               center, int(st.seq[i, c]), int(st.pos[i, c]), float(st.act[i, c])))
        return out

    def subcomponent(self, site: str, c: int, n_contexts: int | None = None,
                     n_tokens: int = 8) -> SubcomponentInfo:
        """The :class:`SubcomponentInfo` of ``site:c`` with this harvest's statistics."""
        site = self._check(site)
        info = _weight_info(self.dec, site, c, float(self.sign[site][c]), n_tokens, self.decode)
        info.density = float(self.density[site][c])
        info.mean_ci = float(self.mean_ci[site][c])
        info.n_tokens = self.n_tokens
        info.threshold = self.threshold
        info.contexts = self.contexts(site, c, n_contexts)
        return info

    def top(self, site: str, n: int = 10, by: str = "density") -> list[int]:
        """Indices of the ``n`` subcomponents of ``site`` with the highest ``density``/``mean_ci``."""
        if by not in ("density", "mean_ci"):
            raise ValueError(f"by must be 'density' or 'mean_ci', got {by!r}")
        vals = getattr(self, by)[self._check(site)]
        return vals.argsort(descending=True)[:n].tolist()

    def _check(self, site: str) -> str:
        if site not in self._stats:
            raise KeyError(f"{site!r} was not harvested; harvested sites: {self.sites}")
        return site

    _COLUMNS = [("site", "site"), ("C", "C"), ("fired", "fired"), ("L0", "L0"),
                ("densest", "densest (density)")]

    def _rows(self) -> list[dict]:
        rows = []
        for s in self.sites:
            d = self.density[s]
            top = ", ".join(f"{c} ({d[c]:.3f})" for c in self.top(s, 5) if d[c] > 0)
            rows.append({"site": s, "C": d.numel(), "fired": int((d > 0).sum()),
                         "L0": float(d.sum()), "densest": top})
        return rows

    @staticmethod
    def _fmt(key: str, v) -> str:
        return f"{v:.2f}" if key == "L0" else format_cell(key, v)

    def __repr__(self) -> str:
        table = text_table(self._COLUMNS, self._rows(), self._fmt)
        return "\n".join([f"Harvest over {self.n_tokens:,} tokens (fires = CI > {self.threshold:g})"]
                         + ["  " + line for line in table.splitlines()])

    def _repr_html_(self) -> str:
        return (f"<div><b>Harvest over {self.n_tokens:,} tokens</b> (fires = CI &gt; "
                f"{self.threshold:g}){html_table(self._COLUMNS, self._rows(), self._fmt)}</div>")


# ----------------------------------------------------------------------------- entry points
@torch.no_grad()
def harvest(
    dec: Decomposition,
    data,
    *,
    sites: Sequence[str] | None = None,
    batch_size: int = 16,
    top_k: int = 20,
    window: tuple[int, int] = (8, 4),
    threshold: float = 0.0,
    decode: Callable | None = None,
    progress: bool = True,
) -> Harvest:
    """One pass over ``data`` collecting every subcomponent's firing statistics and top contexts.

    Arguments:
        dec: a :class:`~tl_vpd.Decomposition` of a language model.
        data: token ids ``[n, seq]``, an iterable of batches, or a dataset.
        sites: sites to keep statistics for (default all; the CI function still sees every site).
        batch_size: sequences per forward pass (tensor data).
        top_k: contexts kept per subcomponent.
        window: tokens kept ``(before, after)`` each top position.
        threshold: a subcomponent fires where its CI exceeds this.
        decode: ``decode([id]) -> str`` (default: the model's tokenizer, else the id).
        progress: show a ``tqdm.auto`` bar.

    Returns:
        A :class:`Harvest`; ``harvest.subcomponent(site, c)`` gives a :class:`SubcomponentInfo`.
    """
    names = dec.sites if sites is None else [dec.site(s).name for s in sites]
    before, after = window
    comps = dec.components
    stats = {s: SiteStats(comps[s].C, top_k, before + after + 1) for s in names}
    total = None
    if torch.is_tensor(data):
        total = -(-(data.shape[0] if data.dim() == 2 else 1) // batch_size)
    seq0 = 0
    for batch in tqdm(iter_token_batches(data, batch_size), total=total, desc="harvest",
                      disable=not progress, dynamic_ncols=True):
        _, xs = dec.run_target(batch)
        ci = dec.ci(xs).lower
        tokens = batch.cpu()
        for s in names:
            g = ci[s].float().cpu()
            act = _site_activation(comps[s], dec.site(s), xs[s]).float().cpu()
            stats[s].update(tokens, g, act, seq0, threshold, before)
        seq0 += batch.shape[0]
    if seq0 == 0:
        raise ValueError("harvest got no data")
    return Harvest(dec, stats, threshold, before, decode)


def subcomponent(dec: Decomposition, site: str, c: int, data=None, *, n_contexts: int = 10, n_tokens: int = 8,
                 decode: Callable | None = None, **harvest_kwargs) -> SubcomponentInfo:
    """Inspect subcomponent ``c`` of ``site``.

    Without ``data`` only the weight facts are filled (norms, reads/predicts, head fractions);
    with ``data`` also the firing density, mean CI and top contexts (one :func:`harvest` pass
    restricted to ``site``).

    Arguments:
        dec: the decomposition.
        site: site name, e.g. ``"blocks.1.attn.W_Q"``.
        c: subcomponent index.
        data: token ids or batches to harvest contexts from.
        n_contexts: top contexts to show.
        n_tokens: tokens listed in ``reads``/``predicts``.
        decode: ``decode([id]) -> str``.
        harvest_kwargs: passed to :func:`harvest` (``batch_size``, ``window``, ``threshold``,
            ``progress``).
    """
    site = dec.site(site).name
    C = dec.components[site].C
    if not 0 <= c < C:
        raise IndexError(f"{site} has C={C} subcomponents, got c={c}")
    if data is None:
        return _weight_info(dec, site, c, 1.0, n_tokens, decode)
    h = harvest(dec, data, sites=[site], top_k=max(n_contexts, 1), decode=decode, **harvest_kwargs)
    return h.subcomponent(site, c, n_contexts, n_tokens)


@torch.no_grad()
def _weight_info(dec: Decomposition, site: str, c: int, sign: float, n_tokens: int,
                 decode: Callable | None) -> SubcomponentInfo:
    comp, s = dec.components[site], dec.site(site)
    u, v = comp.U[:, c].detach().float(), comp.V[c].detach().float()
    hf = head_fractions(dec, site, c)
    info = SubcomponentInfo(site, c, float(u.norm()), float(v.norm()),
                            head_fractions=None if hf is None else hf.tolist())
    model = dec.model
    if not (hasattr(model, "W_E") and hasattr(model, "W_U")):
        return info
    to_str = token_decoder(model, decode)
    normed = getattr(model.cfg, "normalization_type", None) is not None

    def top(scores):
        return [(to_str(i), float(scores[i])) for i in scores.topk(min(n_tokens, scores.numel())).indices]

    if s.kind in _RESIDUAL_READERS and not s.per_head_input:
        info.reads = top(sign * (model.W_E.detach().float() @ v))
        exact = s.layer == 0 and not normed
        info.reads_note = "(W_E·v)" if exact else "(W_E·v, direct path: approximate)"
    elif s.kind in _RESIDUAL_WRITERS:
        info.predicts = top(sign * (u @ model.W_U.detach().float()))
        exact = s.layer == model.cfg.n_layers - 1 and not normed
        info.reads_note = "(u·W_U)" if exact else "(u·W_U, direct path: approximate)"
    return info
