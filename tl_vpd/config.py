"""The VPD training configuration: one frozen, validated dataclass.

Every field carries a one-line comment saying where its default comes from: the VPD paper
("Interpreting Language Model Parameters", Bushnaq et al. 2026), the SPD paper (arXiv 2506.20790,
Appendix A.4), or "tuned for CPU" with the reason it differs from the paper.
``VPDConfig.preset("vpd_paper")`` holds the paper's exact values (:mod:`tl_vpd.presets`). The
fields that fix the decomposition's shape take their defaults from :mod:`tl_vpd.spec`.

A field's allowed range is declared on the field (:func:`bounded`); one generic validator walks
the fields when a config is built: a wrong type raises ``TypeError`` and an out-of-range value
raises ``ValueError``, each naming the field, the bad value and what is allowed. Checks between
fields are explicit in :func:`tl_vpd.config_checks.check_cross_field`.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from tl_vpd.config_checks import FIELD_CHECKS, check_cross_field
from tl_vpd.presets import PRESETS
from tl_vpd.spec import SPEC_DEFAULTS, CIFnKind, DecompositionSpec, DTypeName, InitKind
from tl_vpd.validation import bounded, validate_fields
from tl_vpd.yaml_io import read_config_file, write_config_file

__all__ = ["LEGACY_NAMES", "PRESETS", "VPDConfig"]

RoutingKind = Literal["all", "uniform_k_subset"]
AdversarialRoutingKind = Literal["same", "all"]
AdversaryKind = Literal["none", "fresh", "persistent"]
PGDInitKind = Literal["random", "ones", "zeros"]
PGDScopeKind = Literal["per_token", "shared"]
PPGDScopeKind = Literal["per_token", "shared", "bank"]
ReconLossKind = Literal["auto", "kl", "mse"]
AutocastKind = Literal["auto", "none", "bfloat16"]

# Old field names still read from saved runs and YAML files: old -> new.
LEGACY_NAMES = {"coeff_delta": "coeff_faithfulness", "coeff_importance": "coeff_minimality"}

# Values a Literal field no longer takes, with what to use instead.
_REMOVED_OPTIONS = {
    ("routing", "layerwise"): (
        "routing='layerwise' was removed (it masked every site, like 'all'); for SPD's layerwise "
        "reconstruction loss use routing='all' with coeff_layerwise > 0"
    ),
}


def _shape(name: str, **bounds: int | float) -> Any:
    """A shape field: its default is the spec's (:data:`tl_vpd.spec.SPEC_DEFAULTS`)."""
    return bounded(SPEC_DEFAULTS[name], **bounds)


@dataclass(frozen=True, kw_only=True, repr=False)
class VPDConfig:
    """Hyperparameters of a VPD (or SPD) decomposition run.

    Build one directly (``VPDConfig(C=256, steps=20_000)``), from a preset
    (``VPDConfig.preset("vpd_paper")``), from a dict (``VPDConfig.from_dict(d)``) or from a
    ``.yaml``/``.json`` file (``VPDConfig.from_file(path)``). Instances are frozen; use
    ``cfg.replace(lr=3e-4)`` for a validated copy with changes.
    """

    # The config checks its own fields in __post_init__ with messages that name the field and the
    # allowed range; this keeps jaxtyping's import hook (tests) from pre-empting them with a
    # generic type-check error on __init__.
    __no_type_check__ = True

    # --- what is decomposed (defaults: tl_vpd.spec) --------------------------------------------
    C: int | dict[str, int] = 64  # tuned for CPU: the VPD paper has 512-3584 per matrix
    sites: tuple[str, ...] | None = SPEC_DEFAULTS["sites"]

    # --- run length ----------------------------------------------------------------------------
    steps: int = bounded(2000, ge=1)  # tuned for CPU: the VPD paper trains 400k steps
    batch_size: int = bounded(16, ge=1)  # tuned for CPU: the VPD paper uses 64
    seq_len: int = bounded(128, ge=1)  # tuned for CPU: the VPD paper uses 512

    # --- optimiser (AdamW on U, V and the CI function) -----------------------------------------
    lr: float = bounded(1e-3, gt=0.0)  # tuned for CPU: the paper's 5e-5 is for 400k steps; 1e-3 is the SPD paper's
    lr_warmup_steps: int = bounded(0, ge=0)  # VPD paper: no warm-up of the main lr is stated
    lr_final_frac: float = bounded(0.1, ge=0.0, le=1.0)  # VPD paper: cosine decay to 10% of the initial lr
    weight_decay: float = bounded(0.0, ge=0.0)  # VPD paper
    grad_clip_components: float | None = bounded(1.0, gt=0.0)  # tuned for CPU: spikes only; paper 0.01 at lr 5e-5
    grad_clip_ci: float | None = bounded(1.0, gt=0.0)  # tuned for CPU: guards spikes; the VPD paper states none
    faithfulness_warmup_steps: int = bounded(400, ge=0)  # VPD paper (cheap: no forward passes)
    faithfulness_warmup_lr: float = bounded(1e-2, gt=0.0)  # tuned for CPU: the paper's 1e-3 needs ~1000 steps to reach Δ-L2 < 1e-7 at C >= rank; 1e-2 takes ~150
    faithfulness_warmup_weight_decay: float = bounded(0.0, ge=0.0)  # AdamW decay in the warm-up; the reference implementation's TMS recipe uses 0.1
    init: InitKind = SPEC_DEFAULTS["init"]

    # --- causal-importance function (defaults: tl_vpd.spec) ------------------------------------
    ci_fn: CIFnKind = SPEC_DEFAULTS["ci_fn"]
    ci_hidden: int = _shape("ci_hidden", ge=1)
    ci_d_model: int = _shape("ci_d_model", ge=1)
    ci_n_layers: int = _shape("ci_n_layers", ge=1)
    ci_n_heads: int = _shape("ci_n_heads", ge=1)
    leaky_alpha: float = _shape("leaky_alpha", ge=0.0, le=1.0)

    # --- loss coefficients ---------------------------------------------------------------------
    coeff_faithfulness: float = bounded(1e4, ge=0.0)  # tuned for CPU: at lr 1e-3 the paper's 1e7 dominates Adam's second moments and pins U, V at their warm-up values (measured: U moved 0.6% in 150 steps vs 7% at 1e4, Δ-L2 still < 1e-6); the paper pairs 1e7 with lr 5e-5 and 400k steps; the packaged main-job configs use 1e3 (benchmarks/results/sweep_default_faithfulness.md)
    use_delta_component: bool = True  # VPD paper: Δ = W − UV is masked by its own source; SPD has no Δ (mask 0)
    coeff_stochastic: float = bounded(0.5, ge=0.0)  # VPD paper
    coeff_layerwise: float = bounded(0.0, ge=0.0)  # VPD paper: subset routing replaces SPD's layerwise loss
    coeff_adversarial: float = bounded(0.5, ge=0.0)  # VPD paper
    coeff_minimality: float = bounded(2e-4, ge=0.0)  # VPD paper: scales the fused minimality loss; tune it first
    freq_beta: float = bounded(0.5, ge=0.0)  # VPD paper: frequency coefficient = freq_beta × coeff_minimality
    freq_ref_tokens: int = bounded(32768, ge=1)  # VPD paper: its 64 × 512 tokens per batch (see losses.py)

    # --- minimality p-annealing ----------------------------------------------------------------
    p_start: float = bounded(2.0, gt=0.0)  # VPD paper
    p_end: float = bounded(0.4, gt=0.0)  # VPD paper
    p_anneal_start_frac: float = bounded(0.0, ge=0.0, le=1.0)  # VPD paper: anneal over the whole run
    p_anneal_end_frac: float = bounded(1.0, ge=0.0, le=1.0)  # VPD paper: anneal over the whole run
    importance_eps: float = bounded(1e-12, gt=0.0)  # VPD paper: ε "small"; keeps the gradient of |g+ε|^p finite

    # --- masks and routing ---------------------------------------------------------------------
    n_mask_samples: int = bounded(1, ge=1)  # VPD and SPD papers: S = 1
    routing: RoutingKind = "uniform_k_subset"  # VPD paper

    # --- adversary -----------------------------------------------------------------------------
    adversary: AdversaryKind = "persistent"  # VPD paper: persistent PGD
    adversarial_routing: AdversarialRoutingKind = "same"  # VPD paper: the adversarial loss routes as the stochastic one ("all" masks every site, as evaluation's PGD does: a deviation)
    pgd_init: PGDInitKind = "random"  # library choice: PGD sources start uniform in [0, 1]
    pgd_steps: int = bounded(20, ge=1)  # library choice: 20 steps of fresh PGD
    pgd_step_size: float = bounded(0.1, gt=0.0)  # VPD paper heuristic: n_steps × step size ≈ 2
    pgd_scope: PGDScopeKind = "per_token"  # VPD paper: training sources are per (batch, position)
    ppgd_lr: float = bounded(0.01, gt=0.0)  # VPD paper: Adam lr of the persistent sources
    ppgd_lr_warmup_frac: float = bounded(0.0, ge=0.0, le=1.0)  # library choice: no warm-up (the VPD paper warms the sources' lr up linearly over 2.5% of the run: the vpd_paper preset)
    ppgd_betas: tuple[float, float] = (0.5, 0.99)  # VPD paper
    ppgd_inner_steps: int = bounded(2, ge=0)  # VPD paper: 2 warm-up ascent steps before the outer pass (0: one ascent per step on the outer pass's gradient, 0.65x the step time on benchmarks/train_step.py but a far weaker decomposition: benchmarks/results/sweep_default_ppgd_inner.md)
    ppgd_scope: PPGDScopeKind = "per_token"  # VPD paper
    ppgd_bank_size: int = bounded(8, ge=1)  # tuned for CPU: masks in the "bank" scope (unused by the VPD paper)

    # --- reconstruction distance ---------------------------------------------------------------
    recon_loss: ReconLossKind = "auto"  # VPD/SPD papers: KL for LMs, MSE for toy models

    # --- evaluation, logging, bookkeeping ------------------------------------------------------
    eval_every: int = bounded(0, ge=0)  # library choice: 0 = evaluate only when asked
    eval_batches: int = bounded(4, ge=1)  # tuned for CPU: number of batches per evaluation
    eval_pgd_steps: int = bounded(20, ge=0)  # VPD paper: the shortest of its 20-320-step eval PGD curve
    log_every: int = bounded(10, ge=0)  # library choice: steps between log records (0 = never)
    checkpoint_every: int = bounded(0, ge=0)  # library choice: 0 = no intermediate checkpoints
    keep_checkpoints: int = bounded(3, ge=0)  # library choice: newest checkpoints kept in run_dir (0 = all)
    divergence_factor: float = bounded(100.0, ge=0.0)  # library choice: stop when the faithfulness loss exceeds this × mean W² (0 = never)
    seed: int = bounded(SPEC_DEFAULTS["seed"], ge=0)  # library choice
    wandb_project: str | None = None  # library choice: None = no wandb logging
    progress: bool = True  # library choice: show a tqdm progress bar
    dtype: DTypeName = SPEC_DEFAULTS["dtype"]
    autocast: AutocastKind = "auto"  # library choice: "auto" = bf16 autocast of the forwards for language models where bf16 matmuls are native (CUDA with bf16, CPUs with AVX-512-BF16/AMX; tl_vpd.precision), fp32 for toys; params and losses stay fp32
    compile: bool = False  # library choice: torch.compile the fused CI-side kernels (tl_vpd.fused) and every site's masked output in the training step; off as the first step compiles for ~20-60 s

    def __post_init__(self) -> None:
        validate_fields(self, checks=FIELD_CHECKS, removed=_REMOVED_OPTIONS)
        check_cross_field(self)

    # --- the decomposition's shape ---------------------------------------------------------------

    @property
    def spec(self) -> DecompositionSpec:
        """The shape of the decomposition this config trains (C, sites, seed, CI function, ...)."""
        return DecompositionSpec(**{name: getattr(self, name) for name in SPEC_DEFAULTS.keys() | {"C"}})

    # --- construction and persistence ------------------------------------------------------------

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The names of all config fields, in declaration order.

        Returns:
            A tuple of field names.
        """
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VPDConfig:
        """Build a validated config from a mapping of field names to values.

        Arguments:
            d: field values; missing fields take their defaults. Lists are accepted where the
                field is a tuple (as JSON and YAML give them), and the old names ``coeff_delta``
                and ``coeff_importance`` (:data:`LEGACY_NAMES`) are read as their new ones.

        Returns:
            The config. Raises ``ValueError`` naming any unknown key (with the closest valid
            name) and ``TypeError``/``ValueError`` for any invalid value.
        """
        if not isinstance(d, Mapping):
            raise TypeError(f"VPDConfig.from_dict expects a mapping (got {type(d).__name__})")
        d = _rename_legacy(d, "VPDConfig.from_dict")
        _reject_unknown_keys(d.keys(), "VPDConfig.from_dict")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON- and YAML-safe dict (tuples become lists).

        Returns:
            A new dict, field name -> value; ``VPDConfig.from_dict`` inverts it.
        """
        out: dict[str, Any] = {}
        for name in self.field_names():
            value = getattr(self, name)
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, dict):
                value = dict(value)
            out[name] = value
        return out

    def to_file(self, path: str | Path) -> None:
        """Write the config to a ``.yaml``/``.yml`` or ``.json`` file.

        Arguments:
            path: destination; the suffix picks the format.
        """
        write_config_file(self.to_dict(), path)

    @classmethod
    def from_file(cls, path: str | Path) -> VPDConfig:
        """Read a config written by ``to_file`` (or by hand) from a ``.yaml``/``.yml``/``.json``
        file.

        Arguments:
            path: the file; the suffix picks the format. YAML numbers such as ``5e-5`` are read
                as floats (plain YAML 1.1 would read them as strings).

        Returns:
            The validated config.
        """
        return cls.from_dict(read_config_file(path))

    def replace(self, **changes: Any) -> VPDConfig:
        """A validated copy with some fields changed.

        Arguments:
            **changes: field name -> new value.

        Returns:
            The new config; unknown names and invalid values raise.
        """
        changes = _rename_legacy(changes, "VPDConfig.replace")
        _reject_unknown_keys(changes.keys(), "VPDConfig.replace")
        return dataclasses.replace(self, **changes)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> VPDConfig:
        """A named configuration, optionally with some fields changed.

        Arguments:
            name: ``"vpd"`` (the defaults: VPD at CPU scale), ``"vpd_paper"`` (the VPD paper's
                exact training values), or ``"spd"`` (the SPD paper's loss set: faithfulness,
                stochastic and layerwise reconstruction, importance minimality; no adversary, no
                frequency term).
            **overrides: field name -> value, applied on top of the preset.

        Returns:
            The validated config.
        """
        if name not in PRESETS:
            valid = ", ".join(repr(n) for n in PRESETS)
            raise ValueError(f"unknown VPDConfig preset {name!r}; valid presets: {valid}")
        overrides = _rename_legacy(overrides, "VPDConfig.preset")
        _reject_unknown_keys(overrides.keys(), "VPDConfig.preset")
        return cls(**{**PRESETS[name], **overrides})

    def __repr__(self) -> str:
        changed = [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != f.default
        ]
        return f"VPDConfig({', '.join(changed)})"


# --- key handling -----------------------------------------------------------------------------


def _rename_legacy(d: Mapping[str, Any], where: str) -> dict[str, Any]:
    out = dict(d)
    for old, new in LEGACY_NAMES.items():
        if old not in out:
            continue
        if new in out:
            raise ValueError(
                f"{where}: both {old!r} (the old name) and {new!r} are given; keep only {new!r}"
            )
        out[new] = out.pop(old)
    return out


def _reject_unknown_keys(keys: Any, where: str) -> None:
    valid = VPDConfig.field_names()
    unknown = [k for k in keys if k not in valid]
    if not unknown:
        return
    parts = []
    for key in unknown:
        close = difflib.get_close_matches(str(key), valid, n=1)
        parts.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
    message = f"{where}: unknown VPDConfig key(s): {', '.join(parts)}"
    if not all(difflib.get_close_matches(str(k), valid, n=1) for k in unknown):
        message += f"; valid keys: {', '.join(valid)}"
    raise ValueError(message)
