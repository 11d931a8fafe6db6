"""Named configurations: the field values of each :meth:`tl_vpd.VPDConfig.preset`.

Each value names its source: the VPD paper or the SPD paper (arXiv 2506.20790, Appendix A.4).
"""

from typing import Any

__all__ = ["PRESETS"]

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
        "coeff_faithfulness": 1e7,  # VPD paper
        "coeff_stochastic": 0.5,  # VPD paper
        "coeff_layerwise": 0.0,  # VPD paper
        "coeff_adversarial": 0.5,  # VPD paper
        "coeff_minimality": 2e-4,  # VPD paper
        "freq_beta": 0.5,  # VPD paper
        "freq_ref_tokens": 64 * 512,  # VPD paper: its tokens per batch
        "p_start": 2.0,  # VPD paper
        "p_end": 0.4,  # VPD paper
        "p_anneal_start_frac": 0.0,  # VPD paper
        "p_anneal_end_frac": 1.0,  # VPD paper
        "n_mask_samples": 1,  # VPD paper
        "routing": "uniform_k_subset",  # VPD paper
        "adversary": "persistent",  # VPD paper
        "adversarial_routing": "same",  # VPD paper: subset routing in the adversarial loss too
        "ppgd_lr": 0.01,  # VPD paper
        "ppgd_lr_warmup_frac": 0.025,  # VPD paper: constant schedule with 2.5% warmup
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
        "coeff_faithfulness": 1.0,  # SPD paper A.4: L_faithfulness coefficient 1
        "coeff_stochastic": 1.0,  # SPD paper A.4
        "coeff_layerwise": 1.0,  # SPD paper A.4
        "coeff_adversarial": 0.0,  # SPD paper: no adversary
        "coeff_minimality": 1e-4,  # SPD paper A.4: TMS 40-10 (range 5e-6 to 3e-3 across toys)
        "freq_beta": 0.0,  # SPD paper: no frequency term
        "p_start": 2.0,  # SPD paper A.4: p = 2 (TMS 40-10, residual MLPs), not annealed
        "p_end": 2.0,  # SPD paper A.4: p = 2, not annealed
        "n_mask_samples": 1,  # SPD paper A.4: S = 1
        "routing": "all",  # SPD paper: stochastic recon masks every site
        "adversary": "none",  # SPD paper
        "use_delta_component": False,  # SPD paper: masked weights are U diag(m) V, no Δ
    },
}
