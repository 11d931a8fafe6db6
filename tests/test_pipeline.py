"""tl_vpd.pipeline: the stage configs and the stages' run-directory checks (the stages end to end
through the command line: test_cli.py)."""

import filecmp
from pathlib import Path

import pytest
import yaml

import tl_vpd
from tl_vpd.layout import DECOMP_DIR, TARGET_DIR
from tl_vpd.pipeline import (
    load_target_stage,
    packaged_config,
    read_target_config,
    stage_config,
    unfinished_decomposition,
)
from test_cli import TINY_TARGET

REPO_CONFIGS = Path(__file__).resolve().parents[1] / "configs"
CONFIG_NAMES = ["target.yaml", "quick_target.yaml", "vpd.yaml", "quick_vpd.yaml"]


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_packaged_configs_are_valid_and_match_the_repo_copies(name):
    path = packaged_config(name)
    if "target" in name:
        cfg = read_target_config(path)
        assert cfg["corpus"]["seq_len"] >= 1 and cfg["train"]["steps"] >= 1
    else:
        tl_vpd.VPDConfig.from_file(path)
    assert filecmp.cmp(path, REPO_CONFIGS / name, shallow=False), f"configs/{name} drifted"


def test_target_config_rejects_unknown_keys(tmp_path):
    bad = tmp_path / "t.yaml"
    bad.write_text(yaml.safe_dump({**TINY_TARGET, "train": {"stpes": 3}}))
    with pytest.raises(ValueError, match="stpes"):
        read_target_config(bad)
    bad.write_text(yaml.safe_dump({"optimizer": {}}))
    with pytest.raises(ValueError, match="sections"):
        read_target_config(bad)


def test_stage_config_defaults_to_the_packaged_ones(tmp_path):
    assert stage_config(None, False, "vpd.yaml") == packaged_config("vpd.yaml")
    assert stage_config(None, True, "vpd.yaml") == packaged_config("quick_vpd.yaml")
    assert stage_config(tmp_path / "x.yaml", True, "vpd.yaml") == tmp_path / "x.yaml"
    with pytest.raises(FileNotFoundError, match="ships no config"):
        packaged_config("nope.yaml")


def test_unfinished_decomposition_and_a_missing_target(tmp_path):
    assert not unfinished_decomposition(tmp_path)
    (tmp_path / DECOMP_DIR / "checkpoints").mkdir(parents=True)
    assert unfinished_decomposition(tmp_path)
    (tmp_path / DECOMP_DIR / "decomposition").mkdir()
    assert not unfinished_decomposition(tmp_path)
    with pytest.raises(FileNotFoundError, match="not a complete target run"):
        load_target_stage(tmp_path / TARGET_DIR)


def test_an_interrupted_target_is_trained_again(tmp_path, monkeypatch):
    """After Ctrl-C (or a kill) during target training, re-running the stage used to report
    "target found" (a half-trained model) or die with FileExistsError; it now retrains."""
    from tl_vpd.pipeline import train_target_stage
    from tl_vpd.target_model import HAS_HOOKED_TRANSFORMER, HookedTransformer

    if not HAS_HOOKED_TRANSFORMER:  # TL 4: the target is a native TransformerBridge
        from transformer_lens.model_bridge import TransformerBridge as HookedTransformer

    cfg = tmp_path / "target.yaml"
    cfg.write_text(yaml.safe_dump(TINY_TARGET))
    calls = {"n": 0}
    original = HookedTransformer.forward

    def interrupt_later(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # after the step-0 evaluation and a few training steps
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(HookedTransformer, "forward", interrupt_later)
    with pytest.raises(KeyboardInterrupt):
        train_target_stage(tmp_path, cfg, progress=False)
    monkeypatch.undo()
    model, corpus, curve, trained = train_target_stage(tmp_path, cfg, progress=False)
    assert trained and curve[-1]["step"] == TINY_TARGET["train"]["steps"]
    # and the finished target is now reused as is
    assert train_target_stage(tmp_path, cfg, progress=False)[3] is False
