"""The VPD training configuration: one frozen, validated dataclass.

Every field carries a one-line comment saying where its default comes from: the VPD paper
("Interpreting Language Model Parameters", Bushnaq et al. 2026; see
``shared/references/vpd_method_digest.md``), the SPD paper (arXiv 2506.20790, Appendix A.4), or
"tuned for CPU" with the reason it differs from the paper. ``VPDConfig.preset("vpd_paper")`` holds
the paper's exact values.

A config is checked when it is built: a wrong type raises ``TypeError`` and an out-of-range value
raises ``ValueError``, each naming the field, the bad value and what is allowed.
"""

import dataclasses
import difflib
import fnmatch
import json
import math
import numbers
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import yaml

__all__ = ["VPDConfig", "resolve_C", "PRESETS"]

InitKind = Literal["random", "svd"]
CIFnKind = Literal["mlp", "vector_mlp", "shared_mlp", "global_mlp", "global_transformer"]
RoutingKind = Literal["all", "layerwise", "uniform_k_subset"]
AdversaryKind = Literal["none", "fresh", "persistent"]
PGDInitKind = Literal["random", "ones", "zeros"]
PGDScopeKind = Literal["per_token", "shared"]
PPGDScopeKind = Literal["per_token", "shared", "bank"]
ReconLossKind = Literal["auto", "kl", "mse"]
DTypeName = Literal["float32", "float64", "bfloat16"]

_CONFIG_SUFFIXES = (".yaml", ".yml", ".json")


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

    # --- what is decomposed --------------------------------------------------------------------
    C: int | dict[str, int] = 64  # tuned for CPU: the VPD paper has 512-3584 per matrix
    sites: tuple[str, ...] | None = None  # DESIGN.md: None = every attention and MLP matrix

    # --- run length ----------------------------------------------------------------------------
    steps: int = 2000  # tuned for CPU: the VPD paper trains 400k steps
    batch_size: int = 16  # tuned for CPU: the VPD paper uses 64
    seq_len: int = 128  # tuned for CPU: the VPD paper uses 512

    # --- optimiser (AdamW on U, V and the CI function) -----------------------------------------
    lr: float = 1e-3  # tuned for CPU: the paper's 5e-5 is for 400k steps; 1e-3 is the SPD paper's
    lr_warmup_steps: int = 0  # VPD paper: no warm-up of the main lr is stated
    lr_final_frac: float = 0.1  # VPD paper: cosine decay to 10% of the initial lr
    weight_decay: float = 0.0  # VPD paper
    grad_clip_components: float | None = 1.0  # tuned for CPU: spikes only; paper 0.01 at lr 5e-5
    grad_clip_ci: float | None = 1.0  # tuned for CPU: guards spikes; the VPD paper states none
    faithfulness_warmup_steps: int = 400  # VPD paper (cheap: no forward passes)
    faithfulness_warmup_lr: float = 1e-2  # tuned for CPU: the paper's 1e-3 needs ~1000 steps to reach Δ-L2 < 1e-7 at C >= rank; 1e-2 takes ~150
    init: InitKind = "random"  # ALGORITHM.md: Kaiming-style; the VPD paper does not state its init

    # --- causal-importance function ------------------------------------------------------------
    ci_fn: CIFnKind = "shared_mlp"  # tuned for CPU: the paper's "global_transformer" is costly
    ci_hidden: int = 64  # tuned for CPU: width of the per-site/subcomponent MLPs (SPD: 16-128)
    ci_d_model: int = 128  # tuned for CPU: the VPD paper's global transformer uses 2048
    ci_n_layers: int = 2  # tuned for CPU: the VPD paper uses 8 blocks
    ci_n_heads: int = 4  # tuned for CPU: the VPD paper uses 16 heads
    leaky_alpha: float = 0.01  # VPD paper: slope of the leaky hard sigmoids

    # --- loss coefficients ---------------------------------------------------------------------
    coeff_delta: float = 1e4  # tuned for CPU: at lr 1e-3 the paper's 1e7 dominates Adam's second moments and pins U, V at their warm-up values (measured: U moved 0.6% in 150 steps vs 7% at 1e4, Δ-L2 still < 1e-6); the paper pairs 1e7 with lr 5e-5 and 400k steps
    use_delta_component: bool = True  # VPD paper: Δ = W − UV is masked by its own source; SPD has no Δ (mask 0)
    coeff_stochastic: float = 0.5  # VPD paper
    coeff_layerwise: float = 0.0  # VPD paper: subset routing replaces SPD's layerwise loss
    coeff_adversarial: float = 0.5  # VPD paper
    coeff_importance: float = 2e-4  # VPD paper: scales the fused minimality loss; tune it first
    freq_beta: float = 0.5  # VPD paper: frequency coefficient = freq_beta × coeff_importance
    freq_ref_tokens: int = 32768  # VPD paper: its 64 × 512 tokens per batch (see losses.py)

    # --- minimality p-annealing ----------------------------------------------------------------
    p_start: float = 2.0  # VPD paper
    p_end: float = 0.4  # VPD paper
    p_anneal_start_frac: float = 0.0  # VPD paper: anneal over the whole run
    p_anneal_end_frac: float = 1.0  # VPD paper: anneal over the whole run
    importance_eps: float = 1e-12  # VPD paper: ε "small"; keeps the gradient of |g+ε|^p finite

    # --- masks and routing ---------------------------------------------------------------------
    n_mask_samples: int = 1  # VPD and SPD papers: S = 1
    routing: RoutingKind = "uniform_k_subset"  # VPD paper

    # --- adversary -----------------------------------------------------------------------------
    adversary: AdversaryKind = "persistent"  # VPD paper: persistent PGD
    pgd_init: PGDInitKind = "random"  # ALGORITHM.md seed: fresh PGD sources start uniform in [0, 1]
    pgd_steps: int = 20  # ALGORITHM.md seed: 20 steps of fresh PGD
    pgd_step_size: float = 0.1  # VPD paper heuristic: n_steps × step size ≈ 2
    pgd_scope: PGDScopeKind = "per_token"  # VPD paper: training sources are per (batch, position)
    ppgd_lr: float = 0.01  # VPD paper: Adam lr of the persistent sources
    ppgd_betas: tuple[float, float] = (0.5, 0.99)  # VPD paper
    ppgd_inner_steps: int = 2  # VPD paper: 2 warm-up ascent steps before the outer pass
    ppgd_scope: PPGDScopeKind = "per_token"  # VPD paper
    ppgd_bank_size: int = 8  # tuned for CPU: masks in the "bank" scope (unused by the VPD paper)

    # --- reconstruction distance ---------------------------------------------------------------
    recon_loss: ReconLossKind = "auto"  # VPD/SPD papers: KL for LMs, MSE for toy models

    # --- evaluation, logging, bookkeeping ------------------------------------------------------
    eval_every: int = 0  # library choice: 0 = evaluate only when asked
    eval_batches: int = 4  # tuned for CPU: number of batches per evaluation
    eval_pgd_steps: int = 20  # VPD paper: the shortest of its 20-320-step eval PGD curve
    log_every: int = 10  # library choice: steps between log records (0 = never)
    checkpoint_every: int = 0  # library choice: 0 = no intermediate checkpoints
    seed: int = 0  # library choice
    wandb_project: str | None = None  # library choice: None = no wandb logging
    progress: bool = True  # library choice: show a tqdm progress bar
    dtype: DTypeName = "float32"  # library choice: dtype of U, V and the CI parameters

    def __post_init__(self) -> None:
        self._check_C()
        self._check_sites()

        for name in ("steps", "batch_size", "seq_len", "n_mask_samples", "eval_batches"):
            self._int(name, ge=1)
        for name in ("ci_hidden", "ci_d_model", "ci_n_layers", "ci_n_heads", "freq_ref_tokens"):
            self._int(name, ge=1)
        for name in ("pgd_steps", "ppgd_bank_size"):
            self._int(name, ge=1)
        for name in (
            "lr_warmup_steps",
            "faithfulness_warmup_steps",
            "ppgd_inner_steps",
            "eval_every",
            "eval_pgd_steps",
            "log_every",
            "checkpoint_every",
            "seed",
        ):
            self._int(name, ge=0)

        for name in ("lr", "faithfulness_warmup_lr", "p_start", "p_end", "importance_eps"):
            self._float(name, gt=0.0)
        for name in ("pgd_step_size", "ppgd_lr"):
            self._float(name, gt=0.0)
        for name in ("weight_decay", "freq_beta") + _COEFF_FIELDS:
            self._float(name, ge=0.0)
        for name in ("lr_final_frac", "leaky_alpha", "p_anneal_start_frac", "p_anneal_end_frac"):
            self._float(name, ge=0.0, le=1.0)
        for name in ("grad_clip_components", "grad_clip_ci"):
            self._float(name, gt=0.0, optional=True)
        self._check_betas()

        for name, kind in _LITERAL_FIELDS.items():
            options = get_args(kind)
            value = getattr(self, name)
            if not isinstance(value, str) or value not in options:
                allowed = ", ".join(repr(o) for o in options)
                raise ValueError(f"VPDConfig.{name} must be one of {allowed} (got {value!r})")
        if not isinstance(self.use_delta_component, bool):
            raise TypeError(f"VPDConfig.use_delta_component must be a bool (got {self.use_delta_component!r})")
        if not isinstance(self.progress, bool):
            raise TypeError(f"VPDConfig.progress must be a bool (got {self.progress!r})")
        if self.wandb_project is not None and not (
            isinstance(self.wandb_project, str) and self.wandb_project
        ):
            error = ValueError if isinstance(self.wandb_project, str) else TypeError
            raise error(
                "VPDConfig.wandb_project must be None or a non-empty str "
                f"(got {self.wandb_project!r})"
            )

        self._check_cross_field()

    # --- validation helpers ----------------------------------------------------------------------

    def _int(self, name: str, *, ge: int) -> None:
        value = getattr(self, name)
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise TypeError(f"VPDConfig.{name} must be an int >= {ge} (got {value!r})")
        if value < ge:
            raise ValueError(f"VPDConfig.{name} must be an int >= {ge} (got {value!r})")
        object.__setattr__(self, name, int(value))

    def _float(
        self,
        name: str,
        *,
        gt: float | None = None,
        ge: float | None = None,
        le: float | None = None,
        optional: bool = False,
    ) -> None:
        value = getattr(self, name)
        bounds = [f"> {gt:g}"] if gt is not None else []
        bounds += [f">= {ge:g}"] if ge is not None else []
        bounds += [f"<= {le:g}"] if le is not None else []
        allowed = "a finite float " + " and ".join(bounds)
        if optional:
            allowed = f"None or {allowed}"
            if value is None:
                return
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise TypeError(f"VPDConfig.{name} must be {allowed} (got {value!r})")
        value = float(value)
        in_range = (
            math.isfinite(value)
            and (gt is None or value > gt)
            and (ge is None or value >= ge)
            and (le is None or value <= le)
        )
        if not in_range:
            raise ValueError(f"VPDConfig.{name} must be {allowed} (got {value!r})")
        object.__setattr__(self, name, value)

    def _check_C(self) -> None:
        C = self.C
        if isinstance(C, Mapping):
            if not C:
                raise ValueError("VPDConfig.C must be an int >= 1 or a non-empty dict (got {})")
            for pattern, value in C.items():
                if not isinstance(pattern, str) or not pattern:
                    raise TypeError(
                        f"VPDConfig.C keys must be non-empty glob patterns (got {pattern!r})"
                    )
                if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                    raise TypeError(f"VPDConfig.C[{pattern!r}] must be an int >= 1 (got {value!r})")
                if value < 1:
                    raise ValueError(
                        f"VPDConfig.C[{pattern!r}] must be an int >= 1 (got {value!r})"
                    )
            object.__setattr__(self, "C", {p: int(v) for p, v in C.items()})
            return
        if isinstance(C, bool) or not isinstance(C, numbers.Integral):
            raise TypeError(
                f"VPDConfig.C must be an int >= 1 or a dict of glob pattern -> int (got {C!r})"
            )
        if C < 1:
            raise ValueError(f"VPDConfig.C must be an int >= 1 (got {C!r})")
        object.__setattr__(self, "C", int(C))

    def _check_sites(self) -> None:
        sites = self.sites
        if sites is None:
            return
        if isinstance(sites, str) or not isinstance(sites, Sequence):
            raise TypeError(
                f"VPDConfig.sites must be None or a sequence of glob patterns (got {sites!r})"
            )
        if not sites or not all(isinstance(s, str) and s for s in sites):
            raise ValueError(
                "VPDConfig.sites must be None or a non-empty sequence of non-empty glob "
                f"patterns (got {sites!r})"
            )
        object.__setattr__(self, "sites", tuple(sites))

    def _check_betas(self) -> None:
        betas = self.ppgd_betas
        allowed = "a pair of floats in [0, 1)"
        if isinstance(betas, str) or not isinstance(betas, Sequence) or len(betas) != 2:
            raise TypeError(f"VPDConfig.ppgd_betas must be {allowed} (got {betas!r})")
        for beta in betas:
            if isinstance(beta, bool) or not isinstance(beta, numbers.Real):
                raise TypeError(f"VPDConfig.ppgd_betas must be {allowed} (got {betas!r})")
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"VPDConfig.ppgd_betas must be {allowed} (got {betas!r})")
        object.__setattr__(self, "ppgd_betas", (float(betas[0]), float(betas[1])))

    def _check_cross_field(self) -> None:
        if self.p_anneal_start_frac > self.p_anneal_end_frac:
            raise ValueError(
                "VPDConfig.p_anneal_start_frac must be <= p_anneal_end_frac (got "
                f"{self.p_anneal_start_frac!r} > {self.p_anneal_end_frac!r})"
            )
        if self.lr_warmup_steps > self.steps:
            raise ValueError(
                f"VPDConfig.lr_warmup_steps must be <= steps={self.steps} "
                f"(got {self.lr_warmup_steps!r})"
            )
        if not any(getattr(self, name) > 0 for name in _RECON_COEFF_FIELDS):
            raise ValueError(
                "VPDConfig needs at least one reconstruction or faithfulness loss: one of "
                f"{', '.join(_RECON_COEFF_FIELDS)} must be > 0 (all are 0); without one nothing "
                "ties the decomposition to the target"
            )
        if (self.adversary != "none") != (self.coeff_adversarial > 0):
            raise ValueError(
                f"VPDConfig.adversary={self.adversary!r} and coeff_adversarial="
                f"{self.coeff_adversarial!r} disagree: the adversary only searches masks for the "
                "adversarial reconstruction loss, so use adversary='none' exactly when "
                "coeff_adversarial=0 (set both, or neither)"
            )
        if self.ci_fn == "global_transformer" and self.ci_d_model % self.ci_n_heads:
            raise ValueError(
                f"VPDConfig.ci_d_model must be divisible by ci_n_heads for "
                f"ci_fn='global_transformer' (got ci_d_model={self.ci_d_model}, "
                f"ci_n_heads={self.ci_n_heads})"
            )

    # --- construction and persistence ------------------------------------------------------------

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The names of all config fields, in declaration order.

        **Returns:** a tuple of field names.
        """
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "VPDConfig":
        """Build a validated config from a mapping of field names to values.

        **Arguments:**
        - `d`: field values; missing fields take their defaults. Lists are accepted where the field
            is a tuple (as JSON and YAML give them).

        **Returns:** the config. Raises `ValueError` naming any unknown key (with the closest valid
        name) and `TypeError`/`ValueError` for any invalid value.
        """
        if not isinstance(d, Mapping):
            raise TypeError(f"VPDConfig.from_dict expects a mapping (got {type(d).__name__})")
        _reject_unknown_keys(d.keys(), "VPDConfig.from_dict")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON- and YAML-safe dict (tuples become lists).

        **Returns:** a new dict, field name -> value; `VPDConfig.from_dict` inverts it.
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
        """Write the config to a `.yaml`/`.yml` or `.json` file.

        **Arguments:**
        - `path`: destination; the suffix picks the format.
        """
        path = Path(path)
        suffix = _config_suffix(path)
        if suffix == ".json":
            text = json.dumps(self.to_dict(), indent=2) + "\n"
        else:
            text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        path.write_text(text)

    @classmethod
    def from_file(cls, path: str | Path) -> "VPDConfig":
        """Read a config written by `to_file` (or by hand) from a `.yaml`/`.yml`/`.json` file.

        **Arguments:**
        - `path`: the file; the suffix picks the format. YAML numbers such as `5e-5` are read as
            floats (plain YAML 1.1 would read them as strings).

        **Returns:** the validated config.
        """
        path = Path(path)
        suffix = _config_suffix(path)
        text = path.read_text()
        data = json.loads(text) if suffix == ".json" else yaml.load(text, Loader=_YAMLLoader)
        if not isinstance(data, Mapping):
            raise ValueError(
                f"{path} must hold a mapping of config fields (got {type(data).__name__})"
            )
        return cls.from_dict(data)

    def replace(self, **changes: Any) -> "VPDConfig":
        """A validated copy with some fields changed.

        **Arguments:**
        - `**changes`: field name -> new value.

        **Returns:** the new config; unknown names and invalid values raise.
        """
        _reject_unknown_keys(changes.keys(), "VPDConfig.replace")
        return dataclasses.replace(self, **changes)

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "VPDConfig":
        """A named configuration, optionally with some fields changed.

        **Arguments:**
        - `name`: `"vpd"` (the defaults: VPD at CPU scale), `"vpd_paper"` (the VPD paper's exact
            training values), or `"spd"` (the SPD paper's loss set: faithfulness, stochastic and
            layerwise reconstruction, importance minimality; no adversary, no frequency term).
        - `**overrides`: field name -> value, applied on top of the preset.

        **Returns:** the validated config.
        """
        if name not in PRESETS:
            valid = ", ".join(repr(n) for n in PRESETS)
            raise ValueError(f"unknown VPDConfig preset {name!r}; valid presets: {valid}")
        _reject_unknown_keys(overrides.keys(), "VPDConfig.preset")
        return cls(**{**PRESETS[name], **overrides})

    def __repr__(self) -> str:
        changed = [
            f"{f.name}={getattr(self, f.name)!r}"
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != f.default
        ]
        return f"VPDConfig({', '.join(changed)})"


_COEFF_FIELDS = (
    "coeff_delta",
    "coeff_stochastic",
    "coeff_layerwise",
    "coeff_adversarial",
    "coeff_importance",
)
_RECON_COEFF_FIELDS = ("coeff_delta", "coeff_stochastic", "coeff_layerwise", "coeff_adversarial")
_LITERAL_FIELDS = {
    "init": InitKind,
    "ci_fn": CIFnKind,
    "routing": RoutingKind,
    "adversary": AdversaryKind,
    "pgd_init": PGDInitKind,
    "pgd_scope": PGDScopeKind,
    "ppgd_scope": PPGDScopeKind,
    "recon_loss": ReconLossKind,
    "dtype": DTypeName,
}

# Field values of each preset; fields not named take the VPDConfig defaults.
PRESETS: dict[str, dict[str, Any]] = {
    "vpd": {},
    "vpd_paper": {
        "steps": 400_000,  # VPD paper
        "batch_size": 64,  # VPD paper
        "seq_len": 512,  # VPD paper
        "lr": 5e-5,  # VPD paper
        "lr_warmup_steps": 0,  # VPD paper: none stated
        "lr_final_frac": 0.1,  # VPD paper
        "weight_decay": 0.0,  # VPD paper
        "grad_clip_components": 0.01,  # VPD paper
        "grad_clip_ci": None,  # VPD paper: clipping is stated for U, V only
        "faithfulness_warmup_steps": 400,  # VPD paper
        "faithfulness_warmup_lr": 1e-3,  # VPD paper
        "ci_fn": "global_transformer",  # VPD paper
        "ci_d_model": 2048,  # VPD paper
        "ci_n_layers": 8,  # VPD paper
        "ci_n_heads": 16,  # VPD paper
        "leaky_alpha": 0.01,  # VPD paper
        "coeff_delta": 1e7,  # VPD paper
        "coeff_stochastic": 0.5,  # VPD paper
        "coeff_layerwise": 0.0,  # VPD paper
        "coeff_adversarial": 0.5,  # VPD paper
        "coeff_importance": 2e-4,  # VPD paper
        "freq_beta": 0.5,  # VPD paper
        "freq_ref_tokens": 64 * 512,  # VPD paper: its tokens per batch
        "p_start": 2.0,  # VPD paper
        "p_end": 0.4,  # VPD paper
        "p_anneal_start_frac": 0.0,  # VPD paper
        "p_anneal_end_frac": 1.0,  # VPD paper
        "n_mask_samples": 1,  # VPD paper
        "routing": "uniform_k_subset",  # VPD paper
        "adversary": "persistent",  # VPD paper
        "ppgd_lr": 0.01,  # VPD paper
        "ppgd_betas": (0.5, 0.99),  # VPD paper
        "ppgd_inner_steps": 2,  # VPD paper
        "ppgd_scope": "per_token",  # VPD paper
    },
    "spd": {
        "lr": 1e-3,  # SPD paper A.4: Adam, max lr 1e-3
        "lr_final_frac": 0.0,  # SPD paper A.4 (TMS): cosine schedule
        "weight_decay": 0.0,  # SPD paper A.4: Adam
        "grad_clip_components": None,  # SPD paper: no clipping stated
        "grad_clip_ci": None,  # SPD paper: no clipping stated
        "faithfulness_warmup_steps": 0,  # SPD paper: faithfulness is trained jointly, no warm-up
        "ci_fn": "mlp",  # SPD paper A.4: one MLP per subcomponent
        "ci_hidden": 16,  # SPD paper A.4: d_gate = 16 GELU neurons
        "coeff_delta": 1.0,  # SPD paper A.4: L_faithfulness coefficient 1
        "coeff_stochastic": 1.0,  # SPD paper A.4
        "coeff_layerwise": 1.0,  # SPD paper A.4
        "coeff_adversarial": 0.0,  # SPD paper: no adversary
        "coeff_importance": 1e-4,  # SPD paper A.4: TMS 40-10 (range 5e-6 to 3e-3 across toys)
        "freq_beta": 0.0,  # SPD paper: no frequency term
        "p_start": 2.0,  # SPD paper A.4: p = 2 (TMS 40-10, residual MLPs), not annealed
        "p_end": 2.0,  # SPD paper A.4: p = 2, not annealed
        "n_mask_samples": 1,  # SPD paper A.4: S = 1
        "routing": "all",  # SPD paper: stochastic recon masks every site
        "adversary": "none",  # SPD paper
        "use_delta_component": False,  # SPD paper: masked weights are U diag(m) V, no Δ
    },
}


def resolve_C(C: int | Mapping[str, int], site_names: Sequence[str]) -> dict[str, int]:
    """The number of subcomponents of each site.

    **Arguments:**
    - `C`: one count for every site, or a mapping of glob patterns (`fnmatch`, case-sensitive;
        `*` also matches dots) to counts. Each site takes the count of the first pattern, in
        mapping order, that matches it, so put specific patterns before general ones
        (`{"blocks.*.attn.*": 32, "*": 64}`).
    - `site_names`: the decomposed sites, e.g. `["blocks.0.attn.W_Q", ...]`.

    **Returns:** site name -> C, in the order of `site_names`. Raises `ValueError` if a site is
    matched by no pattern, or a pattern is used by no site (it matches nothing, or only sites an
    earlier pattern already took) — both are almost always typos.
    """
    if isinstance(C, bool) or not isinstance(C, (numbers.Integral, Mapping)):
        raise TypeError(f"C must be an int or a mapping of glob pattern -> int (got {C!r})")
    if not isinstance(C, Mapping):
        if C < 1:
            raise ValueError(f"C must be >= 1 (got {C!r})")
        return {site: int(C) for site in site_names}

    resolved: dict[str, int] = {}
    used: set[str] = set()
    for site in site_names:
        pattern = next((p for p in C if fnmatch.fnmatchcase(site, p)), None)
        if pattern is None:
            raise ValueError(
                f"site {site!r} is matched by no pattern of C ({list(C)}); add a pattern for it "
                "or a catch-all '*'"
            )
        resolved[site] = int(C[pattern])
        used.add(pattern)
    for pattern in C:
        if pattern in used:
            continue
        matches = [s for s in site_names if fnmatch.fnmatchcase(s, pattern)]
        if not matches:
            raise ValueError(
                f"pattern {pattern!r} of C matches no site; available sites: {list(site_names)}"
            )
        raise ValueError(
            f"pattern {pattern!r} of C is shadowed: every site it matches ({matches}) is taken by "
            "an earlier pattern; put more specific patterns first"
        )
    return resolved


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


def _config_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in _CONFIG_SUFFIXES:
        raise ValueError(
            f"config file {str(path)!r} must end in one of {', '.join(_CONFIG_SUFFIXES)} "
            f"(got {suffix or 'no suffix'!r})"
        )
    return suffix


class _YAMLLoader(yaml.SafeLoader):
    """SafeLoader that also reads `5e-5` and `1e7` as floats (YAML 1.1 requires a dot)."""


_YAMLLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)
