"""The cancellation toy: mechanisms that cancel on every input, which a stochastic-only loss can
mark unimportant while an adversarial one keeps them (derivation below).

One linear site ``linear`` computes ``out = W x`` with inputs ``x = [a_1..a_P, f_1..f_F]`` and
outputs ``out = [y, o_1..o_F]``:

* ``a_k = 1`` on every input (``P = n_pairs`` always-on directions);
* ``f_i ∈ {0, 1}`` sparse features, each on with probability ``p``;
* feature mechanisms ``F_i = 3 e_{o_i} e_{f_i}ᵀ`` (ordinary sparse mechanisms, the control);
* cancelling pairs ``A_k = +3 e_y e_{a_k}ᵀ`` and ``B_k = −3 e_y e_{a_k}ᵀ``: both read the same
  always-on direction and write to ``y`` with opposite signs, so ``y = 0`` on every input, yet
  ablating either one alone moves ``y`` by 3.

``W`` is the sum of all of them (each pair contributes 0). A pair summing to zero is never
*needed* to reconstruct ``W`` — a decomposition trained from scratch would simply not contain it
— so this toy tests the masking criterion, not the optimiser's search: the decomposition is
**given** (``U``, ``V`` frozen at the mechanisms above, :func:`ground_truth_components`) and only
the causal-importance function is trained, as in the VPD paper's post-hoc pruning of attribution
graphs. The correct answer is ``g = 1`` for every ``A_k``, ``B_k`` on every input.

Why a stochastic-only loss can settle on ``g = 0`` for the pairs (MSE over ``n_out = F + 1``
outputs, importance penalty ``β·g`` with ``p = 1``, masks ``m = g + (1 − g) r``): with both
``g = γ`` a pair costs ``E[9(m_A − m_B)²] = 1.5 (1 − γ)²`` under uniform masks, but the worst
mask (``m_A = 1``, ``m_B = γ``) costs ``9 (1 − γ)²`` — six times more — and ``n_pairs`` pairs
writing the same ``y`` cost ``1.5 n_pairs`` stochastically against ``9 n_pairs²`` adversarially.
So with SPD's losses (stochastic + layerwise, weight 1 each) ``g = 0`` is optimal for the pairs
once ``β·n_out > 3``, while VPD's (adversarial + stochastic, weight 1 each) keeps ``g > 0`` up
to ``β·n_out < 9·n_pairs + 1.5``. A sparse feature mechanism, by contrast, is kept by both up to
``β·n_out ≈ 12`` (stochastic) / 24 (adversarial).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from tl_vpd._typing import Float
from tl_vpd.backends.hookpoints import HookPointSiteSpec
from tl_vpd.config import VPDConfig
from tl_vpd.decompose import Trainer
from tl_vpd.decomposition import Decomposition

__all__ = ["CancellationData", "CancellationToy", "decompose_cancellation", "ground_truth_components",
           "pair_indices"]

MECHANISM_SCALE = 3.0  # the pair writes +3 and −3: big enough that ablating one is obvious


class CancellationToy(HookedRootModule):
    """The target: ``out = W x`` through the hook points ``linear.hook_in`` → ``linear.hook_out``.

    Arguments:
        n_pairs: number of cancelling pairs (the minimal example has 1).
        n_features: number of ordinary sparse feature mechanisms (the control).
    """

    def __init__(self, n_pairs: int = 1, n_features: int = 4):
        super().__init__()
        self.n_pairs, self.n_features = n_pairs, n_features
        U, V = _mechanisms(n_pairs, n_features)
        self.register_buffer("W", U @ V)  # [1 + n_features, n_pairs + n_features]
        self.linear = _HookedMatmul()
        self.setup()

    @property
    def d_in(self) -> int:
        return self.n_pairs + self.n_features

    def forward(self, x: Float[torch.Tensor, "batch d_in"]) -> Float[torch.Tensor, "batch d_out"]:
        return self.linear(x, self.W)

    def vpd_sites(self) -> list[HookPointSiteSpec]:
        return [HookPointSiteSpec("linear", lambda: self.W, lambda: None, "linear.hook_in",
                                  "linear.hook_out", kind="linear")]

    def __repr__(self) -> str:
        return f"CancellationToy(n_pairs={self.n_pairs}, n_features={self.n_features})"


class _HookedMatmul(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.hook_in = HookPoint()  # [batch, d_in]
        self.hook_out = HookPoint()  # [batch, d_out]

    def forward(self, x: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        return self.hook_out(F.linear(self.hook_in(x), W))


def _mechanisms(n_pairs: int, n_features: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``U [1 + F, F + 2P]``, ``V [F + 2P, P + F]``: features first, then ``A_1, B_1, A_2, ...``."""
    d_out, d_in, C = 1 + n_features, n_pairs + n_features, n_features + 2 * n_pairs
    U, V = torch.zeros(d_out, C), torch.zeros(C, d_in)
    for i in range(n_features):
        U[1 + i, i] = MECHANISM_SCALE
        V[i, n_pairs + i] = 1.0
    for k in range(n_pairs):
        for sign, c in ((1.0, n_features + 2 * k), (-1.0, n_features + 2 * k + 1)):
            U[0, c] = sign * MECHANISM_SCALE
            V[c, k] = 1.0
    return U, V


def ground_truth_components(model: CancellationToy) -> tuple[Float[torch.Tensor, "d_out C"],
                                                              Float[torch.Tensor, "C d_in"]]:
    """The mechanisms as subcomponents ``(U, V)``; ``U @ V == model.W`` exactly.

    Order: the ``n_features`` feature mechanisms, then ``A_1, B_1, ..., A_P, B_P``.
    """
    return _mechanisms(model.n_pairs, model.n_features)


def pair_indices(model: CancellationToy) -> list[int]:
    """Subcomponent indices of the cancelling mechanisms ``A_k``, ``B_k``."""
    return list(range(model.n_features, model.n_features + 2 * model.n_pairs))


@dataclass(frozen=True)
class CancellationData:
    """Inputs ``[1, …, 1, f_1, …, f_F]``: always-on directions, then binary sparse features."""

    n_pairs: int = 1
    n_features: int = 4
    p: float = 0.25

    def __call__(self, batch_size: int, generator: torch.Generator | None = None
                 ) -> Float[torch.Tensor, "batch d_in"]:
        on = torch.ones(batch_size, self.n_pairs)
        feats = (torch.rand(batch_size, self.n_features, generator=generator) < self.p).float()
        return torch.cat([on, feats], dim=-1)


def decompose_cancellation(model: CancellationToy, cfg: VPDConfig, data=None) -> Decomposition:
    """Train only the causal-importance function of the ground-truth decomposition.

    Arguments:
        model: the target.
        cfg: a :class:`~tl_vpd.VPDConfig` with ``C`` = the number of mechanisms and
            ``coeff_faithfulness = 0`` (``U V = W`` holds exactly, and ``U``, ``V`` are frozen).
        data: the input distribution (default :class:`CancellationData` of the model's shape).

    Returns:
        The trained :class:`~tl_vpd.Decomposition`, via the engine's own training loop.
    """
    U, V = ground_truth_components(model)
    if cfg.C != U.shape[1]:
        raise ValueError(f"cfg.C must equal the number of mechanisms, {U.shape[1]} (got {cfg.C})")
    if cfg.coeff_faithfulness != 0:
        raise ValueError("the subcomponents are frozen at U V = W exactly: set coeff_faithfulness=0")
    data = data or CancellationData(model.n_pairs, model.n_features)
    trainer = Trainer(model, cfg, data)
    comp = trainer.dec.components["linear"]
    with torch.no_grad():
        comp.U.copy_(U)
        comp.V.copy_(V)
    comp.U.requires_grad_(False)
    comp.V.requires_grad_(False)
    return trainer.train()
