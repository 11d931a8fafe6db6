"""VPDConfig validation, persistence and presets."""

import dataclasses
import json
import re

import pytest

from tl_vpd.config import PRESETS, VPDConfig

def _custom() -> VPDConfig:
    return VPDConfig(
        C={"blocks.*.attn.*": 32, "*": 64},
        sites=("blocks.*.attn.*", "blocks.*.mlp.W_in"),
        steps=50,
        lr=3e-4,
        grad_clip_components=None,
        ppgd_betas=(0.9, 0.999),
        routing="all",
        wandb_project="proj",
    )


# --- defaults and validation ----------------------------------------------------------------------


def test_defaults_valid():
    cfg = VPDConfig()
    assert cfg.C == 64 and cfg.sites is None
    assert (cfg.steps, cfg.batch_size, cfg.seq_len) == (2000, 16, 128)
    assert cfg.coeff_faithfulness == 1e4 and cfg.coeff_minimality == 2e-4 and cfg.freq_beta == 0.5
    assert (cfg.p_start, cfg.p_end) == (2.0, 0.4)
    assert cfg.adversary == "persistent" and cfg.routing == "uniform_k_subset"
    assert cfg.freq_ref_tokens == 64 * 512


def test_unknown_key_names_key_and_suggestion():
    with pytest.raises(ValueError, match=re.escape("'lrr' (did you mean 'lr'?)")):
        VPDConfig.from_dict({"lrr": 1e-3})
    with pytest.raises(ValueError, match="'zzz_not_a_field'.*valid keys: C, sites"):
        VPDConfig.from_dict({"zzz_not_a_field": 1})


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"lr": -1.0}, r"VPDConfig\.lr must be a finite float > 0 \(got -1\.0\)"),
        ({"steps": 0}, r"VPDConfig\.steps must be an int >= 1 \(got 0\)"),
        (
            {"p_anneal_start_frac": 0.8, "p_anneal_end_frac": 0.5},
            r"p_anneal_start_frac must be <= p_anneal_end_frac \(got 0\.8 > 0\.5\)",
        ),
        ({"p_anneal_end_frac": 1.5}, r"p_anneal_end_frac must be .*<= 1 \(got 1\.5\)"),
        (
            {"routing": "foo"},
            r"VPDConfig\.routing must be one of 'all', .*'uniform_k_subset' \(got 'foo'\)",
        ),
        ({"C": 0}, r"VPDConfig\.C must be an int >= 1 \(got 0\)"),
        ({"C": {"x": 0}}, r"VPDConfig\.C\['x'\] must be an int >= 1 \(got 0\)"),
        ({"C": {}}, r"VPDConfig\.C must be"),
        ({"lr_final_frac": 1.1}, r"lr_final_frac"),
        ({"coeff_minimality": -1e-4}, r"coeff_minimality must be a finite float >= 0"),
        ({"lr": float("inf")}, r"VPDConfig\.lr must be a finite float"),
        ({"ppgd_betas": (0.5, 1.0)}, r"ppgd_betas must be a pair of floats in \[0, 1\)"),
        ({"grad_clip_ci": 0.0}, r"grad_clip_ci must be None or a finite float > 0"),
        ({"sites": ()}, r"VPDConfig\.sites must be None or a non-empty"),
        (
            {"adversarial_routing": "subset"},
            r"VPDConfig\.adversarial_routing must be one of 'same', 'all' \(got 'subset'\)",
        ),
        ({"ppgd_lr_warmup_frac": 1.5}, r"VPDConfig\.ppgd_lr_warmup_frac must be .*<= 1"),
        ({"ppgd_lr_warmup_frac": -0.1}, r"VPDConfig\.ppgd_lr_warmup_frac must be .*>= 0"),
        ({"lr_warmup_steps": 3000}, r"lr_warmup_steps must be <= steps=2000"),
        (
            {"ci_fn": "global_transformer", "ci_d_model": 100, "ci_n_heads": 3},
            r"ci_d_model must be divisible by ci_n_heads",
        ),
    ],
)
def test_bad_values_name_the_field(changes, pattern):
    with pytest.raises(ValueError, match=pattern):
        VPDConfig(**changes)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"steps": 1.5}, "steps"),
        ({"steps": True}, "steps"),
        ({"lr": "fast"}, "lr"),
        ({"C": "64"}, "C"),
        ({"C": {"*": 2.5}}, r"C\['\*'\]"),
        ({"sites": "blocks.*"}, "sites"),
        ({"progress": 1}, "progress"),
    ],
)
def test_wrong_types_raise_type_error(changes, field):
    with pytest.raises(TypeError, match=rf"VPDConfig\.{field}"):
        VPDConfig(**changes)


def test_adversary_and_its_coefficient_must_agree():
    with pytest.raises(ValueError, match="adversary='none' and coeff_adversarial=0.5 disagree"):
        VPDConfig(adversary="none")
    with pytest.raises(ValueError, match="adversary='persistent' and coeff_adversarial=0.0"):
        VPDConfig(coeff_adversarial=0.0)
    assert VPDConfig(adversary="none", coeff_adversarial=0.0).adversary == "none"


def test_needs_a_reconstruction_or_faithfulness_loss():
    with pytest.raises(ValueError, match="at least one reconstruction or faithfulness loss"):
        VPDConfig(
            coeff_faithfulness=0.0, coeff_stochastic=0.0, coeff_adversarial=0.0, adversary="none"
        )
    assert VPDConfig(coeff_faithfulness=0.0, coeff_stochastic=0.0).coeff_adversarial == 0.5


def test_normalisation():
    cfg = VPDConfig(lr=1, sites=["blocks.0.*"], ppgd_betas=[0, 0.5], C={"*": 3})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float)
    assert cfg.sites == ("blocks.0.*",)
    assert cfg.ppgd_betas == (0.0, 0.5)


def test_frozen():
    cfg = VPDConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0  # type: ignore[misc]


def test_replace_validates():
    cfg = VPDConfig().replace(steps=10, lr=1e-2)
    assert (cfg.steps, cfg.lr) == (10, 1e-2)
    with pytest.raises(ValueError, match=r"VPDConfig\.steps"):
        cfg.replace(steps=-1)
    with pytest.raises(ValueError, match="did you mean 'steps'"):
        cfg.replace(step=3)


def test_repr_shows_only_changes():
    assert repr(VPDConfig()) == "VPDConfig()"
    assert repr(VPDConfig(steps=10, routing="all")) == "VPDConfig(steps=10, routing='all')"


# --- persistence ----------------------------------------------------------------------------------


def test_dict_round_trip_is_json_safe():
    cfg = _custom()
    d = cfg.to_dict()
    assert d["sites"] == ["blocks.*.attn.*", "blocks.*.mlp.W_in"]
    assert d["ppgd_betas"] == [0.9, 0.999]
    assert d["C"] == {"blocks.*.attn.*": 32, "*": 64}
    assert VPDConfig.from_dict(json.loads(json.dumps(d))) == cfg
    assert VPDConfig.from_dict(VPDConfig().to_dict()) == VPDConfig()
    assert list(d) == list(VPDConfig.field_names())


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_file_round_trip(tmp_path, suffix):
    path = tmp_path / f"cfg{suffix}"
    for cfg in (VPDConfig(), _custom(), VPDConfig.preset("vpd_paper")):
        cfg.to_file(path)
        loaded = VPDConfig.from_file(path)
        assert loaded == cfg
        if isinstance(cfg.C, dict):  # first-match-wins: pattern order must survive the file
            assert list(loaded.C) == list(cfg.C)


def test_hand_written_yaml_reads_scientific_notation(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("lr: 5e-5\ncoeff_faithfulness: 1e7\nsites:\n  - blocks.0.*\nC:\n  '*': 16\n")
    cfg = VPDConfig.from_file(path)
    assert cfg.lr == 5e-5 and cfg.coeff_faithfulness == 1e7
    assert cfg.sites == ("blocks.0.*",) and cfg.C == {"*": 16}


def test_file_errors(tmp_path):
    with pytest.raises(ValueError, match=r"must end in one of \.yaml, \.yml, \.json"):
        VPDConfig().to_file(tmp_path / "cfg.toml")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"stepz": 3}))
    with pytest.raises(ValueError, match="did you mean 'steps'"):
        VPDConfig.from_file(bad)
    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        VPDConfig.from_file(not_mapping)


# --- presets --------------------------------------------------------------------------------------


def test_preset_vpd_is_default():
    assert VPDConfig.preset("vpd") == VPDConfig()
    assert VPDConfig.preset("vpd", steps=7).steps == 7


def test_preset_vpd_paper():
    cfg = VPDConfig.preset("vpd_paper")
    assert cfg.lr == 5e-5 and cfg.lr_final_frac == 0.1 and cfg.weight_decay == 0.0
    assert cfg.grad_clip_components == 0.01
    assert (cfg.coeff_faithfulness, cfg.coeff_stochastic, cfg.coeff_adversarial) == (1e7, 0.5, 0.5)
    assert (cfg.coeff_minimality, cfg.freq_beta) == (2e-4, 0.5)
    assert (cfg.p_start, cfg.p_end, cfg.p_anneal_start_frac, cfg.p_anneal_end_frac) == (
        2.0,
        0.4,
        0.0,
        1.0,
    )
    assert (cfg.faithfulness_warmup_steps, cfg.faithfulness_warmup_lr) == (400, 1e-3)
    assert cfg.adversary == "persistent" and cfg.ppgd_lr == 0.01
    assert cfg.ppgd_lr_warmup_frac == 0.025 and cfg.adversarial_routing == "same"
    assert cfg.ppgd_betas == (0.5, 0.99) and cfg.ppgd_inner_steps == 2
    assert cfg.ppgd_scope == "per_token" and cfg.routing == "uniform_k_subset"
    assert (cfg.steps, cfg.batch_size, cfg.seq_len) == (400_000, 64, 512)
    assert cfg.ci_fn == "global_transformer"
    assert (cfg.ci_d_model, cfg.ci_n_layers, cfg.ci_n_heads) == (2048, 8, 16)
    assert cfg.freq_ref_tokens == cfg.batch_size * cfg.seq_len


def test_preset_spd():
    cfg = VPDConfig.preset("spd")
    assert cfg.coeff_faithfulness == 1.0  # SPD's faithfulness loss
    assert (cfg.coeff_stochastic, cfg.coeff_layerwise) == (1.0, 1.0)
    assert cfg.coeff_adversarial == 0.0 and cfg.adversary == "none"
    assert cfg.routing == "all" and cfg.freq_beta == 0.0
    assert cfg.coeff_minimality == 1e-4 and cfg.p_start == cfg.p_end == 2.0
    assert cfg.ci_fn == "mlp" and cfg.ci_hidden == 16


def test_preset_errors():
    valid = "'vpd', 'vpd_paper', 'spd'"
    with pytest.raises(ValueError, match=f"unknown VPDConfig preset 'vdp'.*{valid}"):
        VPDConfig.preset("vdp")
    with pytest.raises(ValueError, match="did you mean 'coeff_faithfulness'"):
        VPDConfig.preset("spd", coef_faithfulness=2.0)
    assert set(PRESETS) == {"vpd", "vpd_paper", "spd"}


# --- old field names ------------------------------------------------------------------------------


def test_old_coefficient_names_still_load(tmp_path):
    cfg = VPDConfig.from_dict({"coeff_delta": 5.0, "coeff_importance": 3e-4})
    assert (cfg.coeff_faithfulness, cfg.coeff_minimality) == (5.0, 3e-4)
    path = tmp_path / "old.yaml"
    path.write_text("coeff_delta: 1e7\ncoeff_importance: 2e-4\n")
    assert VPDConfig.from_file(path).coeff_faithfulness == 1e7
    assert VPDConfig.preset("spd", coeff_delta=2.0).coeff_faithfulness == 2.0
    assert VPDConfig().replace(coeff_importance=1e-3).coeff_minimality == 1e-3
    with pytest.raises(ValueError, match="both 'coeff_delta' .* and 'coeff_faithfulness'"):
        VPDConfig.from_dict({"coeff_delta": 1.0, "coeff_faithfulness": 2.0})


def test_layerwise_routing_is_removed_with_a_pointer():
    with pytest.raises(ValueError, match="routing='all' with coeff_layerwise"):
        VPDConfig(routing="layerwise")


def test_adversary_options_default_to_the_old_behaviour():
    """The adversarial loss routes as the stochastic one and the sources' lr is constant unless
    asked otherwise."""
    cfg = VPDConfig()
    assert cfg.adversarial_routing == "same" and cfg.ppgd_lr_warmup_frac == 0.0
    assert cfg.p_anneal_start_frac == 0.0 and cfg.p_anneal_end_frac == 1.0
    cfg = VPDConfig(adversarial_routing="all", ppgd_lr_warmup_frac=0.1, p_anneal_end_frac=0.6)
    assert VPDConfig.from_dict(cfg.to_dict()) == cfg
