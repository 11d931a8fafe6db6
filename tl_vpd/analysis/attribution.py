"""Attribution graphs between subcomponents for one prompt (as in the VPD paper's attribution
graphs built from causally important subcomponents).

The edge from subcomponent ``c1`` (site ``l1``, position ``t1``) to ``c2`` (``l2``, ``t2``) is

    attr = (∂a2 / ∂a1)* · a1 · g1,        a = v_c · φ (no ‖u‖ factor),

where ``*`` is a stop-gradient on every other subcomponent: only the direct effect counts, through
the residual stream (skipping layers), norms, attention patterns and MLP nonlinearities, but not
through any other decomposed matrix. It is implemented by running the target with every site's
output rebuilt from *leaf* copies of its activations, ``out = Σ_c a_c^leaf u_c + (Δ x)_sg + b``:
the gradient of a site's raw activation ``v_c · φ`` with respect to an earlier site's leaf is
exactly the starred derivative (Δ counts as a subcomponent and is stopped too). Masks are 1, so
the forward pass is the target's.

Nodes are the alive subcomponents (CI > ``ci_threshold``) at each position, the token embeddings
(one node per position, attribution = gradient · embedding summed over ``d_model``) and the
target logit. The graph is a small object with ``nodes``, weighted ``edges``, :meth:`top_edges`,
a text ``repr`` and ``_repr_html_``; no networkx.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from tl_vpd._typing import Float, Int
from tl_vpd.analysis._tokens import token_decoder
from tl_vpd.tables import html_table, text_table

if TYPE_CHECKING:
    from tl_vpd.decomposition import Decomposition

__all__ = ["AttributionGraph", "Node", "attribution_graph", "leaf_forward"]


@dataclass(frozen=True)
class Node:
    """One node: a subcomponent at a position, a token embedding, or the target logit."""

    kind: str  # "component", "embed" or "output"
    pos: int
    site: str | None = None
    c: int | None = None
    ci: float = 1.0
    act: float = 0.0  # v_c · φ (components), the logit (output)
    token: str = ""

    @property
    def label(self) -> str:
        tok = repr(self.token.replace("\n", "\\n"))
        if self.kind == "component":
            return f"{self.site}:{self.c}@{self.pos}"
        if self.kind == "embed":
            return f"embed@{self.pos} {tok}"
        return f"logit {tok}@{self.pos}"


class AttributionGraph:
    """Nodes and weighted edges ``(src, dst, attr)`` of one prompt's attribution graph.

    Attributes:
        nodes: list of :class:`Node`; ``edges``: list of ``(src_index, dst_index, attr)``.
        tokens: the prompt's token strings; ``target``: ``(position, token id)`` of the output node.
    """

    def __init__(self, nodes: list[Node], edges: list[tuple[int, int, float]], tokens: list[str],
                 target: tuple[int, int]):
        self.nodes, self.edges, self.tokens, self.target = nodes, edges, tokens, target

    def top_edges(self, n: int = 20) -> list[tuple[Node, Node, float]]:
        """The ``n`` edges with the largest ``|attr|``."""
        order = sorted(self.edges, key=lambda e: abs(e[2]), reverse=True)[:n]
        return [(self.nodes[s], self.nodes[d], w) for s, d, w in order]

    def node_index(self, site: str, pos: int, c: int) -> int:
        for i, nd in enumerate(self.nodes):
            if nd.kind == "component" and (nd.site, nd.pos, nd.c) == (site, pos, c):
                return i
        raise KeyError(f"no node {site}:{c}@{pos} (not alive at that position?)")

    def edge(self, src: int, dst: int) -> float:
        """The attribution from node ``src`` to node ``dst`` (0 if there is no edge)."""
        return next((w for s, d, w in self.edges if (s, d) == (src, dst)), 0.0)

    def prune(self, min_abs: float) -> AttributionGraph:
        """Edges with ``|attr| ≥ min_abs`` and the nodes they touch (the output node is kept)."""
        keep_e = [e for e in self.edges if abs(e[2]) >= min_abs]
        used = sorted({i for s, d, _ in keep_e for i in (s, d)} | {len(self.nodes) - 1})
        new = {old: i for i, old in enumerate(used)}
        return AttributionGraph([self.nodes[i] for i in used], [(new[s], new[d], w) for s, d, w in keep_e],
                                self.tokens, self.target)

    def plot(self, ax=None, max_edges: int = 300):
        """A static drawing: embeddings at the bottom, one row per site in forward order, the
        output on top, positions left to right; edges drawn with width ∝ ``|attr|`` (blue
        positive, red negative), the ``max_edges`` largest. Returns the matplotlib figure."""
        import matplotlib.pyplot as plt

        sites = list(dict.fromkeys(nd.site for nd in self.nodes if nd.kind == "component"))
        row = {s: i + 1 for i, s in enumerate(sites)}
        slot: dict[tuple, int] = {}
        xy = []
        for nd in self.nodes:
            y = 0 if nd.kind == "embed" else len(sites) + 1 if nd.kind == "output" else row[nd.site]
            k = slot[(y, nd.pos)] = slot.get((y, nd.pos), -1) + 1
            xy.append((nd.pos + 0.12 * k, y))
        if ax is None:
            _, ax = plt.subplots(figsize=(max(6, len(self.tokens)), 1 + 0.8 * (len(sites) + 2)))
        top = sorted(self.edges, key=lambda e: abs(e[2]), reverse=True)[:max_edges]
        w_max = max((abs(w) for _, _, w in top), default=1.0) or 1.0
        for s, d, w in top:
            ax.plot(*zip(xy[s], xy[d]), color="tab:blue" if w > 0 else "tab:red",
                    lw=0.3 + 3 * abs(w) / w_max, alpha=0.6, zorder=1)
        ax.scatter(*zip(*xy), s=25, c="k", zorder=2)
        ax.set_yticks(range(len(sites) + 2), ["embed", *sites, self.nodes[-1].label])
        ax.set_xticks(range(len(self.tokens)), [repr(t) for t in self.tokens], rotation=60, fontsize=7)
        ax.set_title(self._header(), fontsize=8)
        ax.figure.tight_layout()
        return ax.figure

    def to_dict(self) -> dict:
        return {"tokens": self.tokens, "target": list(self.target),
                "nodes": [vars(nd) for nd in self.nodes],
                "edges": [list(e) for e in self.edges]}

    def _header(self) -> str:
        pos, tok = self.target
        n_comp = sum(nd.kind == "component" for nd in self.nodes)
        return (f"AttributionGraph: {len(self.tokens)} tokens, target {self.nodes[-1].label} (id {tok}); "
                f"{n_comp} subcomponent nodes, {len(self.edges)} edges")

    _COLUMNS = [("from", "from"), ("to", "to"), ("attr", "attr")]

    def _rows(self, n: int) -> list[dict]:
        return [{"from": s.label, "to": d.label, "attr": w} for s, d, w in self.top_edges(n)]

    @staticmethod
    def _fmt(key: str, v) -> str:
        return f"{v:+.4f}" if key == "attr" else str(v)

    def __repr__(self) -> str:
        table = text_table(self._COLUMNS, self._rows(15), self._fmt)
        return "\n".join([self._header(), "  top edges (attr = grad × act × CI):"]
                         + ["  " + line for line in table.splitlines()])

    def _repr_html_(self) -> str:
        return (f"<div><b>{html.escape(self._header())}</b>"
                f"{html_table(self._COLUMNS, self._rows(30), self._fmt)}</div>")


def leaf_forward(dec: Decomposition, tokens: Int[torch.Tensor, "batch pos"]):
    """The target's forward with every site's output rebuilt from leaf copies of its
    activations (see the module), with gradients on.

    Returns:
        ``(output, raw, leaves, embeds)``: ``raw[site]`` the activations ``v_c · φ``
        ``[batch, pos, C]`` as computed (with gradient to earlier leaves), ``leaves[site]`` their
        leaf copies, ``embeds`` the leaf copies of the embedding outputs.
    """
    model, comps = dec.model, dec.components
    sites = [dec.site(s) for s in dec.sites]
    if any(s.per_head_input for s in sites):
        raise NotImplementedError("attribution graphs do not support per-head site inputs "
                                  "(use_split_qkv_input / use_attn_in)")
    raw, leaves, embeds = {}, {}, []

    def swap(site, x, out):
        comp = comps[site.name]
        a = comp.inner_acts(x.to(comp.V.dtype))
        leaf = a.detach().requires_grad_(True)
        raw[site.name], leaves[site.name] = a, leaf
        delta = (x.detach().to(comp.V.dtype) @ comp.delta.detach().T)
        bias = 0.0 if comp.bias is None else comp.bias
        return (leaf @ comp.U.detach().T + delta + bias).to(out.dtype)

    def embed_leaf(module, args, e):
        leaf = e.detach().requires_grad_(True)
        embeds.append(leaf)
        return leaf

    handles = [p.register_forward_hook(embed_leaf) for p in dec.backend.embedding_points(model)]
    try:
        with torch.enable_grad(), dec.backend.hooks(model, sites, swap):
            out = model(tokens)
    finally:
        for h in handles:
            h.remove()
    return out, raw, leaves, embeds


def attribution_graph(
    dec: Decomposition,
    tokens: Int[torch.Tensor, "..."],
    target: int | None = None,
    *,
    position: int = -1,
    ci_threshold: float = 0.0,
    min_abs: float = 0.0,
    ci: Mapping[str, Float[torch.Tensor, "pos C"]] | None = None,
    decode: Callable | None = None,
    progress: bool = True,
) -> AttributionGraph:
    """The attribution graph of one prompt towards one target logit.

    Arguments:
        dec: the decomposition (of a ``HookedTransformer`` or a ``TransformerBridge``).
        tokens: the prompt, ``[pos]`` or ``[1, pos]``.
        target: token id whose logit at ``position`` is the output node (default: the target
            model's top prediction there).
        position: the position of the output node.
        ci_threshold: a subcomponent is a node where its CI exceeds this.
        min_abs: edges with ``|attr|`` below this are dropped.
        ci: ``{site: [pos, C]}`` causal importances to use instead of the CI function's, e.g.
            post-hoc optimised ones (:func:`tl_vpd.analysis.pruned_attribution_graph`): they
            choose the nodes and weight the edges.
        decode: ``decode([id]) -> str`` for labels.
        progress: a ``tqdm.auto`` bar over the backward passes (one per node).
    """
    if not dec.backend.supports_attribution:
        raise NotImplementedError(f"attribution graphs need a language-model backend with "
                                  f"embedding points; this decomposition's backend is "
                                  f"{dec.backend.name!r}")
    tokens = tokens[None] if tokens.dim() == 1 else tokens
    if tokens.shape[0] != 1:
        raise ValueError(f"attribution_graph takes one prompt, got a batch of {tokens.shape[0]}")
    model, comps = dec.model, dec.components
    T = tokens.shape[1]
    position = position % T
    with torch.no_grad():
        logits, xs = dec.run_target(tokens)
        if ci is None:
            ci = {k: v[0].float() for k, v in dec.ci(xs).lower.items()}  # [T, C]
        else:
            ci = {k: ci[k].float() if k in ci else torch.zeros(T, comps[k].C) for k in dec.sites}
    target = int(logits[0, position].argmax()) if target is None else int(target)
    to_str = token_decoder(model, decode)
    tok_strs = [to_str(t) for t in tokens[0].tolist()]

    out, raw, leaves, embeds = leaf_forward(dec, tokens)
    alive = {s: (ci[s] > ci_threshold).nonzero().tolist() for s in dec.sites}
    nodes = [Node("embed", t, token=tok_strs[t]) for t in range(T)]
    index = {}
    for s in dec.sites:
        for t, c in alive[s]:
            index[(s, t, c)] = len(nodes)
            nodes.append(Node("component", t, s, c, float(ci[s][t, c]), float(leaves[s][0, t, c].detach()),
                              tok_strs[t]))
    out_node = len(nodes)
    y_out = out[0, position, target]
    nodes.append(Node("output", position, act=float(y_out.detach()), token=to_str(target)))

    order = list(leaves)
    edges: list[tuple[int, int, float]] = []
    dsts = [(index[(s, t, c)], raw[s][0, t, c]) for s in dec.sites for t, c in alive[s]]
    dsts.append((out_node, y_out))
    for dst, y in tqdm(dsts, desc="attribution", disable=not progress, dynamic_ncols=True):
        if not y.requires_grad:
            continue
        grads = torch.autograd.grad(y, [leaves[s] for s in order] + embeds, retain_graph=True,
                                    allow_unused=True)
        for s, g in zip(order, grads[: len(order)]):
            if g is None:
                continue
            attr = (g[0] * leaves[s][0].detach()).float() * ci[s]  # [T, C]
            for t, c in alive[s]:
                w = float(attr[t, c])
                if w != 0.0 and abs(w) >= min_abs:
                    edges.append((index[(s, t, c)], dst, w))
        emb = sum((g[0] * e[0].detach()).sum(-1) for g, e in zip(grads[len(order):], embeds) if g is not None)
        if torch.is_tensor(emb):
            for t in range(T):
                w = float(emb[t])
                if w != 0.0 and abs(w) >= min_abs:
                    edges.append((t, dst, w))
    return AttributionGraph(nodes, edges, tok_strs, (position, target))
