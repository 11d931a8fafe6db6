"""tl_vpd.toy_models.metrics: the ground-truth metrics (SPD paper §3) on hand-built
decompositions."""

import math

import pytest
import torch

from tl_vpd.toy_models import metrics as M
from tl_vpd.toy_models._runtime import single_threaded


@pytest.fixture(autouse=True)
def _one_thread():
    # Toy tensors are tiny; on a shared 2-core machine one thread is many times faster.
    with single_threaded():
        yield


# --------------------------------------------------------------------------- MMCS / ML2R
def _column_decomposition(W):
    """One subcomponent per column: U[:, j] = W[:, j], V = I."""
    return W.clone(), torch.eye(W.shape[1])


def test_mmcs_ml2r_perfect_decomposition_is_one():
    W = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    U, V = _column_decomposition(W)
    assert M.mmcs(W, U, V) == pytest.approx(1.0, abs=1e-6)
    assert M.ml2r(W, U, V) == pytest.approx(1.0, abs=1e-6)
    # Extra subcomponents elsewhere, a permutation, and a sign flip split between U and V
    # change nothing.
    perm = torch.tensor([2, 0, 3, 1])
    U2 = torch.cat([U[:, perm] * torch.tensor([1.0, -1.0, 1.0, 1.0]), torch.randn(3, 2)], 1)
    V2 = torch.cat([V[perm] * torch.tensor([1.0, -1.0, 1.0, 1.0])[:, None], torch.zeros(2, 4)], 0)
    cos, best, ratio = M.best_matching_subcomponents(W, U2, V2)
    assert torch.allclose(cos, torch.ones(4), atol=1e-6)
    assert best.tolist() == [1, 3, 0, 2]
    assert torch.allclose(ratio, torch.ones(4), atol=1e-6)


@pytest.mark.parametrize("scale", [0.5, 2.0])
def test_ml2r_of_scaled_decomposition_is_the_scale(scale):
    W = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
    U, V = _column_decomposition(W)
    assert M.mmcs(W, scale * U, V) == pytest.approx(1.0, abs=1e-6)
    assert M.ml2r(W, scale * U, V) == pytest.approx(scale, rel=1e-6)
    assert M.ml2r(W, U, scale * V) == pytest.approx(scale, rel=1e-6)


def test_mmcs_ml2r_hand_computed_mismatch():
    # W = I₂ decomposed by one subcomponent (1, 1)ᵀ(1, 1): both columns are (1, 1).
    W = torch.eye(2)
    U, V = torch.ones(2, 1), torch.ones(1, 2)
    assert M.mmcs(W, U, V) == pytest.approx(1 / math.sqrt(2), rel=1e-6)
    assert M.ml2r(W, U, V) == pytest.approx(math.sqrt(2), rel=1e-6)
    # A subcomponent pointing the opposite way has cosine −1, not +1.
    w = torch.tensor([[1.0], [2.0]])
    assert M.mmcs(w, -w, torch.ones(1, 1)) == pytest.approx(-1.0, abs=1e-6)


def test_alive_restriction_skips_dead_subcomponents():
    W = torch.eye(2)
    # Column 0 is best matched by a tiny dead subcomponent (exact direction, norm 1e-3).
    U = torch.tensor([[0.9, 1e-3], [0.1, 0.0]])
    V = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    U = torch.cat([U, torch.tensor([[0.0], [1.0]])], 1)
    V = torch.cat([V, torch.tensor([[0.0, 1.0]])], 0)
    assert M.ml2r(W, U, V) == pytest.approx((1e-3 + 1.0) / 2, rel=1e-6)
    alive = torch.tensor([True, False, True])
    assert M.ml2r(W, U, V, alive) == pytest.approx((math.hypot(0.9, 0.1) + 1.0) / 2, rel=1e-6)
    with pytest.raises(ValueError, match="alive"):
        M.mmcs(W, U, V, torch.zeros(3, dtype=torch.bool))


# --------------------------------------------------------------------------- CI patterns
def test_permute_to_identity_and_identity_error():
    ci = torch.zeros(3, 5)
    ci[0, 4], ci[1, 0], ci[2, 2] = 1.0, 1.0, 0.95
    permuted, perm = M.permute_to_identity(ci)
    assert perm[:3].tolist() == [4, 0, 2] and sorted(perm.tolist()) == list(range(5))
    assert torch.equal(permuted[:, :3], torch.diag(torch.tensor([1.0, 1.0, 0.95])))
    assert M.identity_ci_error(ci) == 0
    ci[1, 3] = 0.5  # a second subcomponent fires for feature 1
    ci[2, 2] = 0.6  # and feature 2's own subcomponent is only partly important
    assert M.identity_ci_error(ci) == 2
    with pytest.raises(ValueError, match="at least as many"):
        M.identity_ci_error(torch.zeros(4, 3))


def test_dense_error_counts_missing_and_extra_columns():
    ci = torch.zeros(4, 6)
    ci[:, 1] = ci[:, 3] = 1.0  # two subcomponents on every input: the k = 2 dense pattern
    assert M.dense_ci_error(ci, k=2) == 0
    assert M.dense_ci_error(ci, k=3) == 1  # a third expected column is missing
    ci[2, 5] = 0.4
    assert M.dense_ci_error(ci, k=2) == 1
    assert M.permute_to_dense(ci)[1][:2].tolist() == [1, 3]


def test_neuron_contributions_match_definitions():
    g = torch.Generator().manual_seed(2)
    W_E = torch.eye(6)[:4]  # orthonormal embeddings: a column-wise W_in decomposition is exact
    W_in, W_out = torch.randn(3, 6, generator=g), torch.randn(6, 3, generator=g)
    nc = M.neuron_contributions(W_E, W_in, W_out)
    for i in range(4):  # eq. 11 written out
        assert torch.allclose(nc[i], (W_E[i] @ W_out) * (W_in @ W_E[i]))
    # W_out = W_inᵀ makes every contribution W_in[n, i]² ≥ 0, so feature i's best subcomponent
    # is the one reading its embedding, c = i, and eq. 12 reproduces eq. 11 exactly.
    W_out = W_in.T.clone()
    U_in, V_in = W_in.clone(), torch.eye(6)  # subcomponent c reads embedding direction c
    nc_sub, best = M.subcomponent_neuron_contributions(W_E, U_in, V_in, W_out)
    assert best.tolist() == [0, 1, 2, 3]
    assert torch.allclose(nc_sub, M.neuron_contributions(W_E, W_in, W_out), atol=1e-6)
    assert (nc_sub >= 0).all()
