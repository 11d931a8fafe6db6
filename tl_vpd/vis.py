"""circuitsvis views of a decomposition that render without network access.

circuitsvis's default HTML (``str(obj)``, and ``_repr_html_`` whenever ``google.com`` answers)
imports its JavaScript from the unpkg CDN and renders blank offline. Every view here is built
from ``RenderedHTML.local_src`` instead, which inlines the packaged bundle; a :class:`View`
holding several widgets inlines that 1.3 MB bundle once (a classic ``<script>`` defining the
global ``CircuitsVis``) and keeps each widget's own ``CircuitsVis.render`` call. No CDN URL is
ever emitted.

* :func:`attention_view` — a layer's attention patterns with and without an ablation, side by
  side;
* :func:`ci_view` — a prompt's tokens coloured by subcomponents' CI;
* :func:`top_samples_view` — top-k contexts of a site's subcomponents from a
  :class:`~tl_vpd.analysis.Harvest`.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from tl_vpd._typing import Int
from tl_vpd.analysis._tokens import token_decoder
from tl_vpd.analysis.attention import ablation_masks, attention_patterns
from tl_vpd.analysis.selection import parse_selection, selection_label
from tl_vpd.analysis.subcomponents import Harvest

if TYPE_CHECKING:
    from tl_vpd.decomposition import Decomposition

__all__ = ["View", "attention_view", "ci_view", "top_samples_view"]


@lru_cache(maxsize=1)
def _bundle() -> str:
    """The JavaScript circuitsvis inlines into ``local_src`` (its ``</script>`` tags removed)."""
    import circuitsvis

    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    return path.read_text(encoding="utf-8").replace("</script>", "")


def _safe_render_call(src: str) -> str:
    """Escape ``</`` inside a widget's script (a token ``"</script>"`` would end it early)."""
    body, tag, tail = src.rpartition("</script>")
    return body.replace("</", "<\\/") + tag + tail


class View:
    """One or more circuitsvis widgets as a single offline HTML fragment.

    Arguments:
        widgets: ``(title, RenderedHTML)`` pairs.
        title: heading of the view.
        row: lay the widgets out side by side (else stacked).
    """

    def __init__(self, widgets: Sequence[tuple[str, object]], title: str = "", row: bool = True):
        self.widgets = list(widgets)
        self.title = title
        self.row = row

    def fragment(self) -> str:
        """HTML for embedding (what ``_repr_html_`` returns): bundle once, then the widgets."""
        bundle = _bundle()
        # If circuitsvis changed its local_src format, each widget keeps its own inline bundle.
        shared = all(bundle in r.local_src for _, r in self.widgets)
        parts = []
        for _, r in self.widgets:
            pre, _, post = r.local_src.partition(bundle)
            parts.append(pre + _safe_render_call(post) if shared else r.local_src)
        flex = "display:flex; flex-wrap:wrap; gap:24px;" if self.row else ""
        cells = "".join(f'<div style="min-width:320px"><div style="font:bold 13px sans-serif">'
                        f"{html.escape(t)}</div>{p}</div>"
                        for (t, _), p in zip(self.widgets, parts))
        head = f'<div style="font:bold 15px sans-serif">{html.escape(self.title)}</div>' if self.title else ""
        lib = f"<script>{bundle}</script>" if shared else ""
        return f'<div class="tl-vpd-view">{lib}{head}<div style="{flex}">{cells}</div></div>'

    def html(self) -> str:
        """A standalone page."""
        return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(self.title)}"
                f"</title></head><body>{self.fragment()}</body></html>")

    def save(self, path: str | Path) -> Path:
        """Write :meth:`html` to ``path``; open it in any browser, offline."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.html(), encoding="utf-8")
        return path

    def _repr_html_(self) -> str:
        return self.fragment()

    def __repr__(self) -> str:
        return f"View({self.title!r}: {', '.join(t for t, _ in self.widgets)})"


def _prompt(tokens: torch.Tensor) -> torch.Tensor:
    tokens = tokens[None] if tokens.dim() == 1 else tokens
    if tokens.shape[0] != 1:
        raise ValueError(f"a view shows one prompt; got a batch of {tokens.shape[0]}")
    return tokens


def _strs(model, tokens: torch.Tensor, decode: Callable | None) -> list[str]:
    to_str = token_decoder(model, decode)
    return [to_str(t) for t in tokens.reshape(-1).tolist()]


def attention_view(dec: Decomposition, tokens: Int[torch.Tensor, "..."], layer: int, ablate=None, *,
                   decode: Callable | None = None) -> View:
    """Attention patterns of ``layer`` for one prompt: the target, and with ``ablate`` removed
    (mask 0, others 1, Δ on), side by side."""
    import circuitsvis as cv

    tokens = _prompt(tokens)
    strs = _strs(dec.model, tokens, decode)
    base = attention_patterns(dec, tokens)[layer][0]
    # AttentionPatterns (not AttentionHeads) lists the tokens as text, hoverable per token.
    widgets = [(f"layer {layer}: target", cv.attention.attention_patterns(strs, base))]
    title = f"Attention of layer {layer}"
    if ablate is not None:
        sel = parse_selection(ablate)
        after = attention_patterns(dec, tokens, ablation_masks(dec, sel, tokens.shape))[layer][0]
        widgets.append((f"ablating {selection_label(sel)}", cv.attention.attention_patterns(strs, after)))
        title += f", ablating {selection_label(sel)}"
    return View(widgets, title)


def ci_view(dec: Decomposition, tokens: Int[torch.Tensor, "..."], site: str, cs: int | Sequence[int], *,
            decode: Callable | None = None) -> View:
    """A prompt's tokens coloured by the CI of subcomponent(s) ``cs`` of ``site``."""
    import circuitsvis as cv

    tokens = _prompt(tokens)
    strs = _strs(dec.model, tokens, decode)
    g = dec.causal_importance(tokens)[dec.site(site).name][0].float()  # [pos, C]
    cs = [cs] if isinstance(cs, int) else list(cs)
    if len(cs) == 1:
        w = cv.tokens.colored_tokens(strs, g[:, cs[0]], min_value=0.0, max_value=1.0)
    else:
        w = cv.tokens.colored_tokens_multi(strs, g[:, cs], [f"{site}:{c}" for c in cs])
    return View([(f"CI of {site}:{','.join(map(str, cs))}", w)], f"CI of {site}")


def top_samples_view(harvest: Harvest, site: str, cs: Sequence[int] | None = None, *, n: int = 8,
                     k: int = 5) -> View:
    """Top-``k`` contexts (coloured by CI) of subcomponents of ``site`` from a harvest.

    Arguments:
        harvest: a :class:`~tl_vpd.analysis.Harvest` that includes ``site``.
        cs: subcomponents to show (default: the ``n`` densest that fired).
    """
    import circuitsvis as cv

    if cs is None:
        cs = [c for c in harvest.top(site, n) if harvest.density[site][c] > 0]
    toks, acts, labels = [], [], []
    for c in cs:
        ctx = harvest.contexts(site, c, k)
        if ctx:
            toks.append([x.tokens for x in ctx])
            acts.append([x.ci for x in ctx])
            labels.append(str(c))
    if not toks:
        raise ValueError(f"no subcomponent of {site} fired in the harvest")
    w = cv.topk_samples.topk_samples([toks], [acts], "Site", "Subcomponent", [site], labels)
    return View([(f"top-{k} contexts by CI: {site}", w)], f"Top samples of {site}")
