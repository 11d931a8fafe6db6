"""Clustering subcomponents into parameter components by minimum description length (VPD paper,
appendix "Clustering Subcomponents into Components").

A subcomponent spans one weight matrix; a *component* is a group of subcomponents, possibly from
many matrices, that are causally important together. On every token each subcomponent is binary
active (CI > ``threshold``, the paper's τ = 0.01) and a group is active where any member is (the
OR). For a partition into ``k`` groups with activation counts ``s_i`` and ranks ``r_i`` (the
number of rank-1 subcomponents in the group) the description length is

    L_MDL = Σ_i s_i (log2 k + α r_i).

Merging groups ``i`` and ``j`` changes it by (the paper's merge cost)

    ΔL = (s_Σ − s_i − s_j) log2((k − 1)/k) + s_ij log2(k − 1) − (s_i + s_j) log2 k
         + α (s_ij (r_i + r_j) − s_i r_i − s_j r_j),

where ``s_ij`` is the merged group's count. The paper's symbol ``s_{i,j}`` also names the
coactivation (AND) count; the merged group's count is the OR, ``s_i + s_j − coact_ij``, which is
what differencing ``L_MDL`` gives and what reproduces the paper's rule for choosing α
(:func:`alpha_for_coactivation`), so that is what is used here.

Merging is stochastic (the paper's stochastic hierarchical merging): each step ranks every pair by
ΔL and picks rank ``J`` with probability ``∝ exp(−γ J)`` (γ = 0.2 in the paper; ``gamma=None``
is greedy), down to one group. The result is the partition where the run's ΔL crosses 0; with
stochastic picks ΔL is not monotone, so the crossing used is the one at the run's lowest
description length (for a greedy run the two coincide). ``n_runs`` restarts keep the run whose
partition describes the data shortest.

Subcomponents that never fire cost nothing to describe and are left out (``Clustering.dead``).
"""

from __future__ import annotations

import html
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
from tqdm.auto import tqdm

from tl_vpd._typing import Bool, Float
from tl_vpd.analysis._tokens import iter_token_batches
from tl_vpd.tables import html_table, text_table

if TYPE_CHECKING:
    from tl_vpd.decomposition import Decomposition

__all__ = ["Clustering", "alpha_for_coactivation", "cluster_activations", "cluster_subcomponents",
           "mdl_loss", "mdl_merge_costs"]

Label = tuple[str, int]


def mdl_loss(counts: Float[torch.Tensor, " k"], ranks: Float[torch.Tensor, " k"], alpha: float) -> float:
    """``L_MDL = Σ_i s_i (log2 k + α r_i)`` of a partition into ``k`` groups."""
    k = counts.numel()
    return float((counts.double() * (math.log2(k) + alpha * ranks.double())).sum())


def mdl_merge_costs(coact: Float[torch.Tensor, "k k"], ranks: Float[torch.Tensor, " k"],
                    alpha: float) -> Float[torch.Tensor, "k k"]:
    """ΔL of merging every pair of groups (the module's formula; the diagonal is meaningless).

    Arguments:
        coact: coactivation counts of the groups, ``coact[i, j] = Σ_{b,t} g_i g_j`` (diagonal
            ``s_i``).
        ranks: rank ``r_i`` of each group.
        alpha: weight of the rank term.
    """
    coact, ranks = coact.double(), ranks.double()
    k = coact.shape[0]
    s = coact.diagonal()
    si, sj = s[:, None], s[None, :]
    s_or = si + sj - coact
    log_k = math.log2(k)
    log_k1 = math.log2(k - 1) if k > 1 else 0.0
    dictionary = (s.sum() - si - sj) * (log_k1 - log_k)
    index = s_or * log_k1 - (si + sj) * log_k
    rank = alpha * (s_or * (ranks[:, None] + ranks[None, :]) - si * ranks[:, None] - sj * ranks[None, :])
    return dictionary + index + rank


def alpha_for_coactivation(co: float, k: int) -> float:
    """The α below which two equally frequent rank-1 subcomponents with
    ``Pr(θ2 active | θ1 active) = co`` are merged, in a dictionary of ``k`` (the paper's rule,
    ``α < co/(1 − co) · log2(k)/2``): a way to choose α from a coactivation threshold."""
    if not 0 < co < 1:
        raise ValueError(f"co must be in (0, 1), got {co}")
    return co / (1 - co) * math.log2(k) / 2


class Clustering:
    """A partition of subcomponents into components (see the module).

    Attributes:
        groups: the components, each a list of ``(site, c)``; largest first.
        dead: subcomponents that never fired (not clustered).
        delta_l: ΔL of every merge of the run, down to one group.
        best_delta_l: the lowest ΔL on offer at each merge (what greedy would have taken).
        mdl: ``L_MDL`` before the first merge and after each one.
        n_merges: merges applied to reach ``groups``.
        counts: activation count of each group; ``n_tokens``: tokens seen.
        alpha, gamma, threshold: the settings.
    """

    def __init__(self, groups: list[list[Label]], dead: list[Label], delta_l: list[float],
                 best_delta_l: list[float], mdl: list[float], n_merges: int, counts: list[int],
                 n_tokens: int, alpha: float, gamma: float | None, threshold: float | None):
        order = sorted(range(len(groups)), key=lambda i: (-len(groups[i]), -counts[i]))
        self.groups = [groups[i] for i in order]
        self.counts = [counts[i] for i in order]
        self.dead, self.delta_l, self.best_delta_l, self.mdl = dead, delta_l, best_delta_l, mdl
        self.n_merges, self.n_tokens = n_merges, n_tokens
        self.alpha, self.gamma, self.threshold = alpha, gamma, threshold

    def group_of(self, site: str, c: int) -> int:
        """Index in :attr:`groups` of the component holding ``site:c``."""
        for i, g in enumerate(self.groups):
            if (site, c) in g:
                return i
        why = "it never fired" if (site, c) in self.dead else "it was not clustered"
        raise KeyError(f"{site}:{c} is in no group ({why})")

    def together(self, *members: Label) -> bool:
        """Whether all ``(site, c)`` are in one component."""
        return len({self.group_of(s, c) for s, c in members}) == 1

    def plot(self, ax=None):
        """The merge-cost curve: ΔL of each merge (and the best on offer), the cut where ΔL
        crosses 0, and ``L_MDL`` on a second axis. Returns the matplotlib figure."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(7, 3.5))
        it = range(1, len(self.delta_l) + 1)
        ax.plot(it, self.delta_l, lw=1, label="ΔL of the merge taken")
        ax.plot(it, self.best_delta_l, lw=1, ls="--", label="lowest ΔL on offer")
        ax.axhline(0, color="k", lw=0.6)
        ax.axvline(self.n_merges + 0.5, color="r", lw=0.8, label=f"cut: {len(self.groups)} groups")
        ax.set_xlabel("merge")
        ax.set_ylabel("ΔL (bits)")
        ax2 = ax.twinx()
        ax2.plot(range(len(self.mdl)), self.mdl, color="gray", lw=0.8)
        ax2.set_ylabel("L_MDL (bits)", color="gray")
        ax.legend(loc="upper left", fontsize=8)
        return ax.figure

    @staticmethod
    def _name(members: list[Label], n: int = 6) -> str:
        names = [f"{s}:{c}" for s, c in members[:n]]
        return ", ".join(names) + (f", … (+{len(members) - n})" if len(members) > n else "")

    _COLUMNS = [("i", "#"), ("size", "size"), ("count", "active"), ("members", "members")]

    def _rows(self, n: int) -> list[dict]:
        return [{"i": i, "size": len(g), "count": s, "members": self._name(g)}
                for i, (g, s) in enumerate(zip(self.groups[:n], self.counts))]

    def _header(self) -> str:
        n_sub = sum(map(len, self.groups))
        g = "greedy" if self.gamma is None else f"γ={self.gamma:g}"
        return (f"Clustering: {n_sub} subcomponents -> {len(self.groups)} components "
                f"({len(self.dead)} never fired) over {self.n_tokens:,} tokens; α={self.alpha:g}, {g}, "
                f"cut after {self.n_merges} merges, L_MDL {self.mdl[0]:.4g} -> {self.mdl[self.n_merges]:.4g} bits")

    def __repr__(self) -> str:
        table = text_table(self._COLUMNS, self._rows(15), lambda k, v: str(v))
        return "\n".join([self._header()] + ["  " + line for line in table.splitlines()])

    def _repr_html_(self) -> str:
        return (f"<div><b>{html.escape(self._header())}</b>"
                f"{html_table(self._COLUMNS, self._rows(50), lambda k, v: str(v))}</div>")


def _sample_rank(n_pairs: int, gamma: float | None, gen: torch.Generator) -> int:
    """Rank ``J ∝ exp(−γ J)`` over ``n_pairs`` pairs by the paper's inverse CDF (0 if greedy)."""
    if gamma is None or n_pairs == 1:
        return 0
    u = float(torch.rand((), generator=gen, dtype=torch.float64))
    j = math.floor(-math.log(1 - u * (1 - math.exp(-gamma * n_pairs))) / gamma)
    return min(j, n_pairs - 1)


def _run(act: torch.Tensor, alpha: float, gamma: float | None, gen: torch.Generator):
    """One stochastic merging run down to one group: the merges, ΔL per merge, best ΔL on offer."""
    act = act.clone()
    n = act.shape[1]
    coact = act.T @ act
    ranks = torch.ones(n, dtype=torch.float64)
    alive = torch.ones(n, dtype=torch.bool)
    merges, taken, best = [], [], []
    for _ in range(n - 1):
        idx = alive.nonzero().squeeze(1)
        cost = mdl_merge_costs(coact[idx][:, idx], ranks[idx], alpha)
        pair = torch.triu_indices(len(idx), len(idx), 1)
        flat = cost[pair[0], pair[1]]
        order = flat.argsort(stable=True)
        pick = order[_sample_rank(len(flat), gamma, gen)]
        i, j = int(idx[pair[0, pick]]), int(idx[pair[1, pick]])
        merges.append((i, j))
        taken.append(float(flat[pick]))
        best.append(float(flat[order[0]]))
        act[:, i] = torch.maximum(act[:, i], act[:, j])  # the OR of the two groups
        alive[j] = False
        row = act.T @ act[:, i]
        coact[i, :], coact[:, i] = row, row
        ranks[i] += ranks[j]
    return merges, taken, best


def _partition(n: int, merges: Sequence[tuple[int, int]]) -> list[list[int]]:
    members = {i: [i] for i in range(n)}
    for i, j in merges:
        members[i] += members.pop(j)
    return list(members.values())


def cluster_activations(
    active: Bool[torch.Tensor, "n_tokens n"],
    labels: Sequence[Label],
    *,
    alpha: float = 1.0,
    gamma: float | None = 0.2,
    n_runs: int = 1,
    seed: int = 0,
    threshold: float | None = None,
    progress: bool = False,
) -> Clustering:
    """MDL clustering of a binary activation matrix (see the module).

    Arguments:
        active: ``active[token, i]``: subcomponent ``i`` is causally important on that token.
        labels: ``(site, c)`` of each column.
        alpha: weight of the rank term (the paper leaves its value to the user; see
            :func:`alpha_for_coactivation`).
        gamma: decay of the pick's rank distribution (paper: 0.2); ``None`` merges greedily.
        n_runs: stochastic restarts; the run whose partition has the lowest ``L_MDL`` is kept.
        seed: seeds the picks.
        threshold: the CI threshold that made ``active`` (recorded only).
        progress: a ``tqdm.auto`` bar over the runs.
    """
    if active.dim() != 2 or active.shape[1] != len(labels):
        raise ValueError(f"active must be [n_tokens, {len(labels)}] (one column per label), got "
                         f"{tuple(active.shape)}")
    if gamma is not None and gamma <= 0:
        raise ValueError(f"gamma must be > 0 (or None for greedy merging), got {gamma}")
    act = active.bool()
    fired = act.any(0)
    dead = [lab for lab, f in zip(labels, fired.tolist()) if not f]
    live = [lab for lab, f in zip(labels, fired.tolist()) if f]
    if not live:
        raise ValueError("no subcomponent is active on any token: nothing to cluster")
    act = act[:, fired].double()
    n = act.shape[1]
    counts = act.sum(0)
    gen = torch.Generator().manual_seed(seed)
    best_run = None
    for _ in tqdm(range(n_runs), desc="clustering", disable=not progress, dynamic_ncols=True):
        merges, taken, best = _run(act, alpha, gamma, gen)
        mdl = [mdl_loss(counts, torch.ones(n), alpha)]
        for d in taken:
            mdl.append(mdl[-1] + d)
        cut = min(range(len(mdl)), key=mdl.__getitem__)
        if best_run is None or mdl[cut] < best_run[3][best_run[4]]:
            best_run = (merges, taken, best, mdl, cut)
    merges, taken, best, mdl, cut = best_run
    parts = _partition(n, merges[:cut])
    groups = [[live[i] for i in p] for p in parts]
    group_counts = [int(act[:, p].amax(1).sum()) for p in parts]
    return Clustering(groups, dead, taken, best, mdl, cut, group_counts, act.shape[0], alpha, gamma,
                      threshold)


@torch.no_grad()
def cluster_subcomponents(
    dec: Decomposition,
    data,
    *,
    threshold: float = 0.01,
    sites: Sequence[str] | None = None,
    batch_size: int = 16,
    max_tokens: int | None = None,
    progress: bool = True,
    **kwargs,
) -> Clustering:
    """Cluster the subcomponents of ``dec`` into components by their coactivation on ``data``.

    Arguments:
        dec: the decomposition.
        data: token ids ``[n, seq]``, an iterable of batches, or a dataset.
        threshold: a subcomponent is active where its CI exceeds this (paper: τ = 0.01).
        sites: sites to cluster (default all).
        batch_size: sequences per forward pass (tensor data).
        max_tokens: stop reading data after this many tokens.
        progress: ``tqdm.auto`` bars.
        kwargs: :func:`cluster_activations`' ``alpha``, ``gamma``, ``n_runs``, ``seed``.

    Returns:
        A :class:`Clustering`.
    """
    names = dec.sites if sites is None else [dec.site(s).name for s in sites]
    labels = [(s, c) for s in names for c in range(dec.components[s].C)]
    rows, n_tok = [], 0
    for batch in tqdm(iter_token_batches(data, batch_size), desc="coactivation", disable=not progress,
                      dynamic_ncols=True):
        _, xs = dec.run_target(batch)
        ci = dec.ci(xs).lower
        rows.append(torch.cat([(ci[s] > threshold).flatten(0, -2).cpu() for s in names], -1))
        n_tok += rows[-1].shape[0]
        if max_tokens is not None and n_tok >= max_tokens:
            break
    if not rows:
        raise ValueError("cluster_subcomponents got no data")
    active = torch.cat(rows)[:max_tokens]
    return cluster_activations(active, labels, threshold=threshold, progress=progress, **kwargs)
