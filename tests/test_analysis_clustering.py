"""tl_vpd.analysis.clustering: the MDL merge cost by hand, planted groups recovered, and the
planted target's previous-token mechanism (W_Q:0 and W_K:0 of layer 1) in one component."""

import math

import pytest
import torch

from tl_vpd import analysis as A
from tl_vpd.analysis.clustering import mdl_loss, mdl_merge_costs
from planted import KS, QS, planted, toks  # noqa: F401  (fixtures)


def _planted_groups(sizes, n_tokens=3000, p=0.15, dropout=0.03, seed=0):
    """Columns in groups that fire together (each member misses a few of its group's tokens)."""
    g = torch.Generator().manual_seed(seed)
    cols, truth = [], []
    for gi, size in enumerate(sizes):
        on = torch.rand(n_tokens, generator=g) < p
        for _ in range(size):
            cols.append(on & (torch.rand(n_tokens, generator=g) > dropout))
            truth.append(gi)
    perm = torch.randperm(len(cols), generator=g).tolist()  # members not adjacent
    act = torch.stack([cols[i] for i in perm], 1)
    labels = [(f"blocks.{i % 2}.mlp.W_in", i) for i in range(len(perm))]
    want = sorted(sorted(j for j, i in enumerate(perm) if truth[i] == gi) for gi in range(len(sizes)))
    return act, labels, want


def _got(cl):
    return sorted(sorted(c for _, c in grp) for grp in cl.groups)


def test_merge_cost_is_the_change_in_description_length():
    act = (torch.rand(500, 5, generator=torch.Generator().manual_seed(1)) < 0.3).double()
    ranks = torch.tensor([1.0, 2.0, 1.0, 3.0, 1.0], dtype=torch.float64)
    alpha = 0.7
    cost = mdl_merge_costs(act.T @ act, ranks, alpha)
    before = mdl_loss(act.sum(0), ranks, alpha)
    for i in range(5):
        for j in range(i + 1, 5):
            keep = [m for m in range(5) if m not in (i, j)]
            merged = torch.maximum(act[:, i], act[:, j])  # the OR
            counts = torch.cat([act[:, keep].sum(0), merged.sum()[None]])
            r = torch.cat([ranks[keep], (ranks[i] + ranks[j])[None]])
            k = 4
            by_hand = float((counts * (math.log2(k) + alpha * r)).sum()) - before
            assert float(cost[i, j]) == pytest.approx(by_hand, rel=1e-9, abs=1e-9)
            assert float(cost[j, i]) == pytest.approx(by_hand, rel=1e-9, abs=1e-9)


def test_alpha_rule_decides_a_merge():
    # Two rank-1 subcomponents, s1 = s2, Pr(2 | 1) = co; many others keep log2(k-1) ≈ log2(k).
    n, k, co = 1000, 2**8, 0.5
    alpha0 = A.alpha_for_coactivation(co, k)
    assert alpha0 == pytest.approx(co / (1 - co) * 4)
    s = torch.tensor([[n, co * n], [co * n, n]])
    coact = torch.zeros(k, k)
    coact[:2, :2] = s
    for alpha, sign in ((0.9 * alpha0, -1), (1.1 * alpha0, 1)):
        d = float(mdl_merge_costs(coact, torch.ones(k), alpha)[0, 1])
        assert math.copysign(1, d) == sign


def test_planted_groups_recovered_exactly():
    act, labels, want = _planted_groups([4, 3, 5, 2, 3, 1])
    greedy = A.cluster_activations(act, labels, gamma=None)
    assert _got(greedy) == want
    assert greedy.best_delta_l[greedy.n_merges] > 0 > greedy.delta_l[greedy.n_merges - 1]
    for seed in range(3):  # stochastic picks, restarts keep the shortest description
        assert _got(A.cluster_activations(act, labels, gamma=1.0, n_runs=10, seed=seed)) == want
    # A dead column is set aside, not lumped in.
    dead = torch.cat([act, torch.zeros(act.shape[0], 1, dtype=torch.bool)], 1)
    cl = A.cluster_activations(dead, labels + [("x", 99)], gamma=None)
    assert cl.dead == [("x", 99)] and _got(cl) == want
    with pytest.raises(KeyError, match="never fired"):
        cl.group_of("x", 99)
    assert "components" in repr(cl) and "<table>" in cl._repr_html_()
    fig = cl.plot()
    assert len(fig.axes) == 2
    import matplotlib.pyplot as plt
    plt.close(fig)


def test_planted_target_mechanism_in_one_component(planted, toks):
    _, dec = planted
    # Merge pairs that are important together at least half the time (the paper's rule).
    alpha = A.alpha_for_coactivation(0.5, 4 * len(dec.sites))
    cl = A.cluster_subcomponents(dec, toks, alpha=alpha, gamma=None, progress=False)
    assert cl.n_tokens == toks.numel()
    # The previous-token query and key pieces are important on every token, together.
    assert cl.together((QS, 0), (KS, 0))
    # Head 1's pieces fire on words (query) and boundaries (keys): never together, never merged
    # (a merge cost built on the AND of the two instead of the OR would merge them first).
    assert not cl.together((QS, 1), (KS, 1))
    assert (QS, 2) in cl.dead and (KS, 3) in cl.dead
    stoch = A.cluster_subcomponents(dec, toks, alpha=alpha, gamma=1.0, n_runs=5, progress=False)
    assert stoch.together((QS, 0), (KS, 0)) and not stoch.together((QS, 1), (KS, 1))
