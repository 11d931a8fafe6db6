"""Ground-truth metrics for toy models (SPD paper §3, eqs. 9–12).

Pure functions of tensors, except :func:`one_hot_causal_importance`, which runs a decomposition
on one-hot inputs. Conventions: a site's target matrix is ``W [d_out, d_in]`` and its
subcomponents are ``U [d_out, C]`` (columns write) and ``V [C, d_in]`` (rows read), so the
``j``-th column of subcomponent ``c`` is ``U[:, c] · V[c, j]``.

* :func:`mmcs` / :func:`ml2r` — how well the subcomponents' columns match the target's columns
  in direction (mean max cosine similarity) and size (mean L2 ratio at the best match).
* :func:`one_hot_causal_importance`, :func:`permute_to_identity`, :func:`permute_to_dense` — the
  SPD paper's permuted causal-importance matrices (Fig. 8, 12, 13).
* :func:`identity_ci_error`, :func:`dense_ci_error` — how far such a matrix is from the expected
  pattern (one subcomponent per feature; or ``k`` subcomponents active on every input).
* :func:`neuron_contributions`, :func:`subcomponent_neuron_contributions` — eqs. 11–12 for the
  residual-MLP models.
* :func:`subcomponent_norms`, :func:`axis_alignment` (:func:`axis_cosines`) — the size of each
  subcomponent (the SPD paper counts "subcomponents with non-negligible norm", §4.1) and whether
  it reads one input axis (one neuron, for a residual MLP's ``W_out``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from tl_vpd._typing import Bool, Float, Int
from tl_vpd.masking import ablation_masks

if TYPE_CHECKING:
    from tl_vpd.decomposition import Decomposition

__all__ = [
    "alive_subcomponents",
    "axis_alignment",
    "axis_cosines",
    "best_matching_subcomponents",
    "dense_ci_error",
    "identity_ci_error",
    "ml2r",
    "mmcs",
    "neuron_contributions",
    "one_hot_causal_importance",
    "permute_to_dense",
    "permute_to_identity",
    "single_ablation_errors",
    "subcomponent_neuron_contributions",
    "subcomponent_norms",
]

_EPS = 1e-12


def best_matching_subcomponents(
    W: Float[torch.Tensor, "d_out d_in"],
    U: Float[torch.Tensor, "d_out C"],
    V: Float[torch.Tensor, "C d_in"],
    alive: Bool[torch.Tensor, " C"] | None = None,
) -> tuple[Float[torch.Tensor, " d_in"], Int[torch.Tensor, " d_in"], Float[torch.Tensor, " d_in"]]:
    """For every column ``j`` of ``W``, the subcomponent whose ``j``-th column points most nearly
    the same way.

    Arguments:
        W: the target matrix.
        U, V: the subcomponents.
        alive: optionally restrict the search to these subcomponents (the paper's formula
            searches all of them).

    Returns:
        ``(cos, best, ratio)``: the maximal cosine similarity ``cos(U[:,c] V[c,j], W[:,j])``,
        the maximising ``c``, and the L2 ratio ``‖U[:,c] V[c,j]‖ / ‖W[:,j]‖`` at that ``c``.
    """
    W, U, V = W.detach().double(), U.detach().double(), V.detach().double()
    u_norm = U.norm(dim=0)  # [C]
    w_norm = W.norm(dim=0)  # [d_in]
    # cos(U_c V_cj, W_j) = sign(V_cj) · cos(U_c, W_j); a zero column has cosine 0.
    cos_u = (U.T @ W) / (u_norm[:, None] * w_norm[None, :]).clamp_min(_EPS)  # [C, d_in]
    cos = cos_u * torch.sign(V)
    if alive is not None:
        if not alive.any():
            raise ValueError("no subcomponent is alive; nothing to match the target's columns to")
        cos = torch.where(alive[:, None], cos, torch.full_like(cos, -torch.inf))
    best_cos, best = cos.max(dim=0)
    col_norm = u_norm[best] * V[best, torch.arange(V.shape[1])].abs()
    return best_cos.float(), best, (col_norm / w_norm.clamp_min(_EPS)).float()


def mmcs(
    W: Float[torch.Tensor, "d_out d_in"],
    U: Float[torch.Tensor, "d_out C"],
    V: Float[torch.Tensor, "C d_in"],
    alive: Bool[torch.Tensor, " C"] | None = None,
) -> float:
    """Mean max cosine similarity (SPD paper eq. 9): ``mean_j max_c cos(U_c V_cj, W_j)``.

    1.0 means every column of ``W`` is matched in direction by some subcomponent's column.
    """
    return best_matching_subcomponents(W, U, V, alive)[0].mean().item()


def ml2r(
    W: Float[torch.Tensor, "d_out d_in"],
    U: Float[torch.Tensor, "d_out C"],
    V: Float[torch.Tensor, "C d_in"],
    alive: Bool[torch.Tensor, " C"] | None = None,
) -> float:
    """Mean L2 ratio (SPD paper eq. 10): ``mean_j ‖U_c* V_c*j‖ / ‖W_j‖`` at the best-matching
    ``c*`` of :func:`mmcs`. 1.0 means no shrinkage (< 1) or growth (> 1)."""
    return best_matching_subcomponents(W, U, V, alive)[2].mean().item()


@torch.no_grad()
def one_hot_causal_importance(dec: Decomposition, n_features: int, magnitude: float = 0.75
                              ) -> dict[str, Float[torch.Tensor, "n_features C"]]:
    """Causal importances of every site on the one-hot inputs ``magnitude · e_i`` (SPD paper
    Fig. 8: magnitude 0.75). Row ``i`` is feature ``i``.

    Arguments:
        dec: a :class:`~tl_vpd.Decomposition` of a toy model whose input is ``[batch, n_features]``.
        n_features: the model's input width.
        magnitude: the value of the active feature.
    """
    return dec.causal_importance(magnitude * torch.eye(n_features))


def permute_to_identity(ci: Float[torch.Tensor, "n C"]
                        ) -> tuple[Float[torch.Tensor, "n C"], Int[torch.Tensor, " C"]]:
    """Reorder columns so the matrix is as close to the identity as a greedy match gets.

    Repeatedly takes the largest remaining entry, assigns its column to its row and removes both
    (a greedy stand-in for the Hungarian algorithm; exact when each row has one clear maximum).
    Unassigned columns follow in index order.

    Returns:
        ``(ci[:, perm], perm)``.
    """
    n, C = ci.shape
    work = ci.detach().double().clone()
    cols = torch.full((n,), -1, dtype=torch.long)
    for _ in range(min(n, C)):
        flat = int(work.argmax())
        r, c = divmod(flat, C)
        cols[r] = c
        work[r, :] = -torch.inf
        work[:, c] = -torch.inf
    assigned = [int(c) for c in cols if c >= 0]  # in row order: column i matches row i
    taken = set(assigned)
    perm = torch.tensor(assigned + [c for c in range(C) if c not in taken], dtype=torch.long)
    return ci[:, perm], perm


def permute_to_dense(ci: Float[torch.Tensor, "n C"]
                     ) -> tuple[Float[torch.Tensor, "n C"], Int[torch.Tensor, " C"]]:
    """Reorder columns by their total causal importance, largest first."""
    perm = torch.argsort(ci.sum(0), descending=True, stable=True)
    return ci[:, perm], perm


def identity_ci_error(ci: Float[torch.Tensor, "n C"], tolerance: float = 0.1) -> int:
    """Entries that break the one-subcomponent-per-feature pattern, after
    :func:`permute_to_identity`: diagonal entries below ``1 − tolerance`` plus off-diagonal
    entries above ``tolerance``. 0 is a perfect identity pattern."""
    n, C = ci.shape
    if C < n:
        raise ValueError(f"an identity pattern needs at least as many subcomponents as features "
                         f"(got {C} < {n})")
    permuted, _ = permute_to_identity(ci)
    diag = torch.zeros_like(permuted, dtype=torch.bool)
    diag[torch.arange(n), torch.arange(n)] = True
    return int((permuted[~diag] > tolerance).sum() + (permuted[diag] < 1 - tolerance).sum())


def dense_ci_error(ci: Float[torch.Tensor, "n C"], k: int, tolerance: float = 0.1) -> int:
    """Distance from the pattern "exactly ``k`` subcomponents carry the matrix" (the residual
    MLP's ``W_out``, SPD paper Fig. 8: "the correct number of subcomponents in W_out (50)"):
    after :func:`permute_to_dense`, the first ``k`` columns each lacking any entry
    ``≥ 1 − tolerance`` count 1, and every entry above ``tolerance`` in the remaining columns
    counts 1 (the reference implementation's metric). It does not ask the ``k`` to be active
    on every input."""
    if ci.shape[1] < k:
        raise ValueError(f"need at least k={k} subcomponents, got {ci.shape[1]}")
    permuted, _ = permute_to_dense(ci)
    missing = ((permuted[:, :k] >= 1 - tolerance).sum(0) == 0).sum()
    extra = (permuted[:, k:] > tolerance).sum()
    return int(missing + extra)


@torch.no_grad()
def single_ablation_errors(dec: Decomposition, inputs: Float[torch.Tensor, "batch ..."]) -> dict[str, Float[torch.Tensor, " C"]]:
    """Worst output change from ablating one subcomponent alone as far as its CI allows.

    For each site and subcomponent ``c``: masks 1 everywhere except ``m_c = g_c`` (the most a
    stochastic or adversarial mask may ablate it), Δ on; the maximum absolute change of any
    output over ``inputs``. A correct decomposition keeps this small for every ``c``; a pair of
    cancelling subcomponents both marked unimportant shows up as a large error for each.

    Arguments:
        dec: a :class:`~tl_vpd.Decomposition` of a toy model.
        inputs: a batch of inputs for the model.

    Returns:
        ``{site: [C]}``.
    """
    target, xs = dec.run_target(inputs)
    ci = dec.ci(xs).lower
    out = {}
    for site, g in ci.items():
        errs = torch.zeros(g.shape[-1])
        for c in range(g.shape[-1]):
            m = ablation_masks(dec.components, {site: {c: g[..., c]}}, g.shape[:-1])
            errs[c] = (dec.run_masked(inputs, m) - target).abs().max()
        out[site] = errs
    return out


def alive_subcomponents(ci: Float[torch.Tensor, "batch C"], threshold: float = 0.1
                        ) -> Bool[torch.Tensor, " C"]:
    """Subcomponents whose causal importance exceeds ``threshold`` on at least one input."""
    return (ci > threshold).any(0)


def neuron_contributions(
    W_E: Float[torch.Tensor, "n_features d_embed"],
    W_in: Float[torch.Tensor, "d_mlp d_embed"],
    W_out: Float[torch.Tensor, "d_embed d_mlp"],
) -> Float[torch.Tensor, "n_features d_mlp"]:
    """SPD paper eq. 11: ``(W_U[i,:] W_out) ⊙ (W_in W_E[:,i])`` for every feature ``i``, with
    ``W_U = W_Eᵀ`` (rows of ``W_E`` are the feature embeddings).

    For several layers pass the layers' ``W_in`` stacked along ``d_mlp`` and their ``W_out``
    concatenated along ``d_mlp`` (the paper's Figs. 14–15).
    """
    return (W_E @ W_out) * (W_E @ W_in.T)


def subcomponent_neuron_contributions(
    W_E: Float[torch.Tensor, "n_features d_embed"],
    U_in: Float[torch.Tensor, "d_mlp C"],
    V_in: Float[torch.Tensor, "C d_embed"],
    W_out: Float[torch.Tensor, "d_embed d_mlp"],
) -> tuple[Float[torch.Tensor, "n_features d_mlp"], Int[torch.Tensor, " n_features"]]:
    """SPD paper eq. 12: per feature ``i``, the neuron contributions of the single ``W_in``
    subcomponent ``c`` that contributes most, ``(W_U[i,:] W_out) ⊙ (U_in[:,c] V_in[c,:] W_E[:,i])``.

    ``c`` is the subcomponent with the largest contribution to any neuron (the reference
    implementation's choice). ``W_out`` is the full output matrix (the sum of its subcomponents).

    Returns:
        ``(contributions, c)``.
    """
    out_conn = W_E @ W_out  # [n_features, d_mlp]
    in_conn = (W_E @ V_in.T)[:, :, None] * U_in.T[None]  # [n_features, C, d_mlp]
    per_c = in_conn * out_conn[:, None, :]
    best = per_c.max(dim=-1).values.argmax(dim=-1)
    return per_c[torch.arange(W_E.shape[0]), best], best


def subcomponent_norms(U: Float[torch.Tensor, "d_out C"], V: Float[torch.Tensor, "C d_in"]
                       ) -> Float[torch.Tensor, " C"]:
    """Frobenius norm of each rank-1 subcomponent, ``‖u_c v_cᵀ‖ = ‖u_c‖ ‖v_c‖``."""
    return U.detach().norm(dim=0) * V.detach().norm(dim=1)


def axis_cosines(V: Float[torch.Tensor, "C d_in"]) -> Float[torch.Tensor, "C d_in"]:
    """``|cos|`` between each subcomponent's read direction ``v_c`` and every input axis."""
    V = V.detach()
    return V.abs() / V.norm(dim=1, keepdim=True).clamp_min(_EPS)


def axis_alignment(V: Float[torch.Tensor, "C d_in"]
                   ) -> tuple[Float[torch.Tensor, " C"], Int[torch.Tensor, " C"]]:
    """How close each subcomponent's read direction ``v_c`` is to one input axis.

    For a residual MLP's ``W_out`` the input axes are the neurons: a value near 1 means
    subcomponent ``c`` reads a single neuron.

    Returns:
        ``(|cos|, axis)``: the largest absolute cosine between ``v_c`` and a standard basis
        vector, and that vector's index.
    """
    return axis_cosines(V).max(dim=1)
