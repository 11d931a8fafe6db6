"""One call per SPD-paper toy experiment: train the target, decompose it, return both.

>>> target, dec = tl_vpd.toy_models.reproduce("tms_5-2", method="spd")

Every experiment goes through the same engine as a language model (:func:`tl_vpd.decompose`);
this module only holds the targets' recipes and the decomposition hyperparameters, each with
where it comes from. ``quick=True`` is a reduced setting for tests and smoke runs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from tl_vpd.config import VPDConfig
from tl_vpd.decompose import decompose
from tl_vpd.decomposition import Decomposition
from tl_vpd.toy_models._runtime import single_threaded
from tl_vpd.toy_models.cancellation import CancellationData, CancellationToy, decompose_cancellation
from tl_vpd.toy_models.resid_mlp import resid_mlp_data, train_resid_mlp
from tl_vpd.toy_models.tms import tms_data, train_tms

__all__ = ["EXPERIMENTS", "ToyExperiment", "reproduce", "toy_config"]

@dataclass(frozen=True)
class ToyExperiment:
    """A target recipe and its decomposition settings.

    Attributes:
        train: ``(seed, quick) -> target``.
        data: ``target -> data callable`` for :func:`tl_vpd.decompose`.
        spd: config overrides on ``VPDConfig.preset("spd")``.
        vpd: config overrides on ``VPDConfig.preset("vpd")``.
        quick: overrides applied on top of either for ``quick=True``.
    """

    train: Callable[[int, bool], nn.Module]
    data: Callable[[nn.Module], Callable]
    spd: dict[str, Any]
    vpd: dict[str, Any]
    quick: dict[str, Any] = field(default_factory=dict)


# Settings shared by every toy decomposition in both methods (SPD paper A.4).
_TOY_COMMON = dict(
    ci_fn="mlp",  # SPD paper A.4: one MLP per subcomponent on its inner activation
    ci_hidden=16,  # SPD paper A.4: d_gate = 16 GELU neurons
    lr=1e-3,  # SPD paper A.4: max lr 1e-3
    faithfulness_warmup_steps=200,  # reference implementation (TMS): 200 warm-up steps ...
    faithfulness_warmup_lr=1e-2,  # ... at lr 0.01, so U V ≈ W before the masks matter
    progress=False,
    log_every=100,
    # The `mlp` CI function's fused kernel and the compiled masks: 3.8x faster steps on TMS
    # 40-10 at batch 4096 (benchmarks/toy_step.py); the first step compiles for ~20 s, so the
    # quick setting (tests, smoke runs) stays eager.
    compile=True,
)
# VPD on a toy: the VPD paper's losses, adversary and Δ-component; minimality stays at the SPD
# paper's per-toy coefficient and p (the VPD paper's 2 → 0.4 annealing and frequency term are
# tuned for language models, whose reconstruction loss is a KL over a vocabulary, not a toy MSE).
_VPD_TOY = dict(
    # The toys' SPD recipe (the reference implementation's): the Δ-component without a
    # faithfulness loss, and the fan-in init. With the VPD paper's Δ-L2 coefficient 1e7 the toy
    # MSE (~1e-4) is drowned and TMS 5-2 did not sparsify; at 1 (the SPD paper's) it did, with
    # ML2R 0.805 (seed 0, batch 1024 × 3000 steps); at 0 with the fan-in init ML2R is 1.004, and
    # TMS 40-10 (batch 512 × 6000) reaches MMCS 0.997, ML2R 1.006.
    coeff_faithfulness=0.0,
    init="fan_in",
    grad_clip_components=None,  # SPD paper: no clipping; the toy losses have no spikes
    grad_clip_ci=None,
    freq_beta=0.0,
    lr_final_frac=0.0,  # SPD paper A.4 (TMS): cosine to 0
)


def _tms(n_features: int, n_hidden: int, identity: bool) -> Callable[[int, bool], nn.Module]:
    def train(seed: int, quick: bool) -> nn.Module:
        return train_tms(n_features, n_hidden, identity=identity, seed=seed,
                         steps=3000 if quick else 10_000)

    return train


def _tms_experiment(n_features: int, n_hidden: int, identity: bool) -> ToyExperiment:
    small = n_features <= 5
    C = 20 if small else 200  # reference implementation: 20 (5-2), 200 (40-10) per site
    minimality = dict(
        coeff_minimality=3e-3 if small else 1e-4,  # SPD paper A.4.1
        p_start=1.0 if small else 2.0,  # SPD paper A.4.1: p = 1 (5-2), 2 (40-10)
        p_end=1.0 if small else 2.0,
    )
    common = dict(C=C, steps=10_000, batch_size=4096, **minimality)  # reference: 10k steps
    # TMS 5-2 + identity under VPD: SPD's total reconstruction weight (stochastic 1 + adversarial
    # 1, as the cancellation toy) and no Δ-component. With the VPD paper's 0.5 + 0.5 and Δ it
    # kept 4 live `linear1` subcomponents for 5 features (seed 1: two of them each also carry a
    # second feature, at cos 0.84 with its column): ML2R 0.80 / 0.60 / 0.80 on seeds 0-2 (CPU
    # setting). Weights 1 + 1 alone gave 0.80 / 0.60 / 1.00; no Δ alone 1.00 / 0.80 / 0.60;
    # both 0.999 / 1.000 / 0.999. The other rows keep the VPD recipe: on TMS 5-2 both changes
    # split one feature in two on seed 0 (ML2R 0.80; without them 1.004 ± 0.001); on TMS 40-10
    # (seed 0) no Δ gave MMCS 0.988, and 0.964 with the identity, weights 1 + 1 0.984 with the
    # identity, against 0.999 with neither.
    small_id_vpd = dict(use_delta_component=False, coeff_stochastic=1.0, coeff_adversarial=1.0)
    return ToyExperiment(
        train=_tms(n_features, n_hidden, identity),
        data=lambda target: tms_data(target.n_features),
        # The reference implementation's TMS recipe: a Δ-component, no faithfulness loss (the
        # warm-up still fits U V to W) and its unscaled fan-in init of U, V. On TMS 40-10
        # (benchmarks/results/tms_40-10_sweep.md, round 3) Δ without faithfulness took MMCS
        # from 0.888 to 0.939 (3 seeds, batch 512 × 3000 steps) and the init to 0.960.
        spd=dict(common, use_delta_component=True, coeff_faithfulness=0.0, init="fan_in"),
        vpd=dict(common, freq_ref_tokens=4096, **_VPD_TOY,
                 **(small_id_vpd if small and identity else {})),
        # quick: a constant lr 5e-3 converged TMS 5-2 (MMCS 1.000, ML2R 1.001) in 1500 steps.
        quick=dict(steps=2000, batch_size=1024, lr=5e-3, lr_final_frac=1.0, compile=False,
                   **({} if small else dict(C=80))),
    )


def _resid_experiment(n_layers: int) -> ToyExperiment:
    n_features, d_mlp = {1: (100, 50), 2: (100, 25), 3: (102, 17)}[n_layers]

    def train(seed: int, quick: bool) -> nn.Module:
        return train_resid_mlp(n_features, d_mlp, n_layers, seed=seed,
                               steps=300 if quick else None)

    common = dict(
        C={1: 100, 2: 400, 3: 500}[n_layers],  # SPD paper A.4.2
        steps={1: 30_000, 2: 50_000, 3: 200_000}[n_layers],  # SPD paper A.4.2
        batch_size=2048,  # SPD paper A.4.2
        lr={1: 2e-3, 2: 1e-3, 3: 1e-3}[n_layers],  # SPD paper A.4.2
        lr_final_frac=1.0,  # SPD paper A.4.2: constant learning rate
        ci_hidden={1: 16, 2: 16, 3: 128}[n_layers],  # SPD paper A.4.2
        coeff_minimality={1: 1e-5, 2: 1e-5, 3: 0.5e-5}[n_layers],  # SPD paper A.4.2
        p_start=2.0, p_end=2.0,  # SPD paper A.4.2
    )
    return ToyExperiment(
        train=train,
        data=lambda target: resid_mlp_data(target.n_features),
        # The reference implementation's residual-MLP recipe, as for TMS: a Δ-component, no
        # faithfulness loss, fan-in init. With it the 1-layer W_out ends as 50 subcomponents,
        # one per neuron (the paper's count, Fig. 8); with faithfulness and the rescaled init it
        # kept 75, most reading several neurons (benchmarks/results/resid_mlp_sweep.md).
        spd=dict(common, use_delta_component=True, coeff_faithfulness=0.0, init="fan_in"),
        vpd=dict(common, freq_ref_tokens=2048, **{**_VPD_TOY, "lr_final_frac": 1.0}),
        quick=dict(steps=300, batch_size=256, C=110 if n_layers < 3 else 120, compile=False),
    )


def _cancellation_experiment() -> ToyExperiment:
    # β · n_out = 4.5 lies between SPD's threshold for dropping a cancelling pair (3) and VPD's
    # (10.5); see tl_vpd.toy_models.cancellation. Identical minimality in both arms.
    common = dict(C=6, steps=1000, batch_size=256, lr=3e-3, coeff_faithfulness=0.0,
                  coeff_minimality=4.5 / 5, p_start=1.0, p_end=1.0,
                  faithfulness_warmup_steps=0, compile=False)  # C = 6: nothing to fuse
    return ToyExperiment(
        train=lambda seed, quick: CancellationToy(n_pairs=1, n_features=4),
        data=lambda target: CancellationData(target.n_pairs, target.n_features),
        spd=dict(common),
        # Equal total reconstruction weight: SPD's stochastic 1 + layerwise 1 vs VPD's
        # stochastic 1 + adversarial 1 (VPD paper: 0.5 + 0.5).
        vpd={**_VPD_TOY, **common, "coeff_stochastic": 1.0, "coeff_adversarial": 1.0},
        quick=dict(steps=500),
    )


EXPERIMENTS: dict[str, ToyExperiment] = {
    "tms_5-2": _tms_experiment(5, 2, identity=False),
    "tms_40-10": _tms_experiment(40, 10, identity=False),
    "tms_5-2-id": _tms_experiment(5, 2, identity=True),
    "tms_40-10-id": _tms_experiment(40, 10, identity=True),
    "resid_mlp1": _resid_experiment(1),
    "resid_mlp2": _resid_experiment(2),
    "resid_mlp3": _resid_experiment(3),
    "cancellation": _cancellation_experiment(),
}


def toy_config(name: str, method: str = "vpd", quick: bool = False, seed: int = 0,
               **overrides: Any) -> VPDConfig:
    """The decomposition config :func:`reproduce` uses for ``name``.

    Arguments:
        name: one of :data:`EXPERIMENTS`.
        method: ``"spd"`` (SPD paper losses) or ``"vpd"`` (+ adversary, Δ-component).
        quick: the reduced setting.
        seed: the decomposition's seed.
        **overrides: any :class:`~tl_vpd.VPDConfig` field, applied last.
    """
    exp = _experiment(name)
    if method not in ("spd", "vpd"):
        raise ValueError(f"method must be 'spd' or 'vpd', got {method!r}")
    fields = {**_TOY_COMMON, **(exp.spd if method == "spd" else exp.vpd),
              **(exp.quick if quick else {}), "seed": seed, **overrides}
    return VPDConfig.preset(method, **fields)


def reproduce(name: str, seed: int = 0, quick: bool = False, method: str = "vpd",
              target: nn.Module | None = None, **overrides: Any) -> tuple[nn.Module, Decomposition]:
    """Train the target ``name`` and decompose it.

    Arguments:
        name: ``tms_5-2``, ``tms_40-10``, ``tms_5-2-id``, ``tms_40-10-id``, ``resid_mlp1``,
            ``resid_mlp2``, ``resid_mlp3`` or ``cancellation``.
        seed: seeds the target's training and the decomposition (deterministic).
        quick: a reduced setting (shorter target training and decomposition) for tests.
        method: ``"vpd"`` or ``"spd"``.
        target: an already trained target of this experiment (e.g. the one an earlier call
            returned for the same ``seed``, to decompose it with the other method); ``None``
            trains it.
        **overrides: :class:`~tl_vpd.VPDConfig` fields for the decomposition.

    Returns:
        ``(target, decomposition)``.
    """
    exp = _experiment(name)
    cfg = toy_config(name, method, quick, seed, **overrides)
    with single_threaded():
        if target is None:
            target = exp.train(seed, quick)
        if name == "cancellation":
            return target, decompose_cancellation(target, cfg, exp.data(target))
        return target, decompose(target, cfg, exp.data(target))


def _experiment(name: str) -> ToyExperiment:
    if name not in EXPERIMENTS:
        raise ValueError(f"unknown toy experiment {name!r}; choose from {sorted(EXPERIMENTS)}")
    return EXPERIMENTS[name]
