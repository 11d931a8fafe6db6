"""tl_vpd.analysis.pruning: post-hoc CI on the planted copying head keeps exactly its mechanism,
stays faithful under stochastic and adversarial masks, and CI-only pruning does not."""

import pytest
import torch

from tl_vpd import analysis as A
from planted_copy import KS, OS, QS, VS, copy_target  # noqa: F401  (fixture)

PROMPT = torch.tensor([3, 1, 4, 0, 5, 2, 4, 1])
FAST = dict(steps=60, lr=0.1, n_eval=8, eval_pgd_steps=10, progress=False)  # the paper's 2000 steps are not needed here


def _mechanism(prompt):
    T, i = len(prompt), int(prompt[-2])
    return {(QS, T - 1, 0), (KS, T - 2, 0), (VS, T - 2, i), (OS, T - 1, i)}


def test_pruned_graph_keeps_the_mechanism(copy_target):
    model, dec = copy_target
    g = A.pruned_attribution_graph(dec, PROMPT, **FAST)
    pr = g.pruning
    assert pr.target == int(PROMPT[-2]) == int(model(PROMPT[None])[0, -1].argmax())
    assert pr.n_alive >= 80  # the base CI keeps head 1 everywhere, and every token's pieces
    assert set(pr.kept()) == _mechanism(PROMPT)
    m = pr.metrics
    assert m["kl_stochastic"] < 0.01 and m["kl_adversarial"] < 0.01
    assert m["p_adversarial"] == pytest.approx(m["p_target"], abs=0.01)
    # The graph's nodes are the survivors; the copy runs V@T-2 -> O@T-1 -> logit.
    comp = {(nd.site, nd.pos, nd.c) for nd in g.nodes if nd.kind == "component"}
    assert comp == _mechanism(PROMPT)
    o = g.node_index(OS, 7, int(PROMPT[-2]))
    assert g.edge(o, len(g.nodes) - 1) == pytest.approx(5.0, abs=0.05)
    assert g.edge(g.node_index(VS, 6, int(PROMPT[-2])), o) == pytest.approx(1.0, abs=0.01)
    assert not any(p.grad is not None for p in dec.parameters())  # U, V, CI untouched
    assert "adversarial" in repr(pr)
    import matplotlib.pyplot as plt
    plt.close(g.plot())


def test_faithfulness_bounds_can_fail(copy_target):
    _, dec = copy_target
    # CI-only pruning (the paper's type-2 graph, with its minimality coefficient 1) finds the same
    # nodes at CI < 1: the adversary breaks it.
    ci_only = A.optimize_ci(dec, PROMPT, mode="ci", coeff_minimality=1.0, **FAST)
    assert set(ci_only.kept()) == _mechanism(PROMPT)
    assert ci_only.metrics["kl_ci"] < 0.01 and ci_only.metrics["kl_adversarial"] > 0.5
    # Too much minimality prunes the mechanism away, and the KLs say so.
    starved = A.optimize_ci(dec, PROMPT, coeff_minimality=20.0, **FAST)
    assert not _mechanism(PROMPT) <= set(starved.kept())
    assert starved.metrics["kl_stochastic"] > 0.5 and starved.metrics["kl_adversarial"] > 0.5
