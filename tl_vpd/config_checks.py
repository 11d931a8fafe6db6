"""The checks of :class:`tl_vpd.VPDConfig` beyond each field's declared type and bounds: fields
whose shape needs its own check (``C``, ``sites``, ``ppgd_betas``) and the checks between fields.

Messages name the field, the bad value and what is allowed, as :mod:`tl_vpd.validation`'s do.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["FIELD_CHECKS", "check_cross_field"]


def check_cross_field(cfg: Any) -> None:
    """Checks between fields of a :class:`~tl_vpd.VPDConfig` (each field is already valid).

    Arguments:
        cfg: the config being built.

    Raises:
        ValueError: naming the fields that disagree and what would make them agree.
    """
    if cfg.p_anneal_start_frac > cfg.p_anneal_end_frac:
        raise ValueError(
            "VPDConfig.p_anneal_start_frac must be <= p_anneal_end_frac (got "
            f"{cfg.p_anneal_start_frac!r} > {cfg.p_anneal_end_frac!r})"
        )
    if cfg.lr_warmup_steps > cfg.steps:
        raise ValueError(
            f"VPDConfig.lr_warmup_steps must be <= steps={cfg.steps} "
            f"(got {cfg.lr_warmup_steps!r})"
        )
    if not any(getattr(cfg, name) > 0 for name in _RECON_COEFF_FIELDS):
        raise ValueError(
            "VPDConfig needs at least one reconstruction or faithfulness loss: one of "
            f"{', '.join(_RECON_COEFF_FIELDS)} must be > 0 (all are 0); without one nothing "
            "ties the decomposition to the target"
        )
    if (cfg.adversary != "none") != (cfg.coeff_adversarial > 0):
        raise ValueError(
            f"VPDConfig.adversary={cfg.adversary!r} and coeff_adversarial="
            f"{cfg.coeff_adversarial!r} disagree: the adversary only searches masks for the "
            "adversarial reconstruction loss, so use adversary='none' exactly when "
            "coeff_adversarial=0 (set both, or neither)"
        )
    if cfg.ci_fn == "global_transformer" and cfg.ci_d_model % cfg.ci_n_heads:
        raise ValueError(
            f"VPDConfig.ci_d_model must be divisible by ci_n_heads for "
            f"ci_fn='global_transformer' (got ci_d_model={cfg.ci_d_model}, "
            f"ci_n_heads={cfg.ci_n_heads})"
        )


_RECON_COEFF_FIELDS = (
    "coeff_faithfulness", "coeff_stochastic", "coeff_layerwise", "coeff_adversarial"
)


def _check_C(cfg: Any) -> None:
    C = cfg.C
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
                raise ValueError(f"VPDConfig.C[{pattern!r}] must be an int >= 1 (got {value!r})")
        object.__setattr__(cfg, "C", {p: int(v) for p, v in C.items()})
        return
    if isinstance(C, bool) or not isinstance(C, numbers.Integral):
        raise TypeError(
            f"VPDConfig.C must be an int >= 1 or a dict of glob pattern -> int (got {C!r})"
        )
    if C < 1:
        raise ValueError(f"VPDConfig.C must be an int >= 1 (got {C!r})")
    object.__setattr__(cfg, "C", int(C))


def _check_sites(cfg: Any) -> None:
    sites = cfg.sites
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
    object.__setattr__(cfg, "sites", tuple(sites))


def _check_betas(cfg: Any) -> None:
    betas = cfg.ppgd_betas
    allowed = "a pair of floats in [0, 1)"
    if isinstance(betas, str) or not isinstance(betas, Sequence) or len(betas) != 2:
        raise TypeError(f"VPDConfig.ppgd_betas must be {allowed} (got {betas!r})")
    for beta in betas:
        if isinstance(beta, bool) or not isinstance(beta, numbers.Real):
            raise TypeError(f"VPDConfig.ppgd_betas must be {allowed} (got {betas!r})")
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"VPDConfig.ppgd_betas must be {allowed} (got {betas!r})")
    object.__setattr__(cfg, "ppgd_betas", (float(betas[0]), float(betas[1])))


# Fields whose shape needs more than the generic validator (tl_vpd.validation).
FIELD_CHECKS = {"C": _check_C, "sites": _check_sites, "ppgd_betas": _check_betas}
