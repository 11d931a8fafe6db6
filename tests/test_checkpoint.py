"""Checkpoints: a resumed run equals an uninterrupted one; the run-directory layout."""

import pytest
import torch

import tl_vpd
from model_zoo import corpus, make_model, small_cfg
from tl_vpd.checkpoint import CHECKPOINT_DIR, CONFIG_FILE, DECOMPOSITION_DIR, TRAINER_STATE_FILE, latest_checkpoint



def test_resume_equals_uninterrupted(tmp_path):
    model = make_model("gpt2")
    cfg = small_cfg(steps=8, log_every=1, checkpoint_every=4, faithfulness_warmup_steps=3)
    full = tl_vpd.decompose(model, cfg.replace(checkpoint_every=0), corpus())

    def interrupt(step, metrics, dec):
        if step == 5:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tl_vpd.decompose(model, cfg, corpus(), run_dir=tmp_path, callbacks=[interrupt])
    assert (tmp_path / "checkpoints" / "step_0000005").exists()
    resumed = tl_vpd.decompose(model, cfg, corpus(), run_dir=tmp_path, resume=True)
    for a, b in zip(full.history, resumed.history):
        assert a.keys() == b.keys()
        for k in a:
            assert abs(a[k] - b[k]) <= 1e-6 * max(1.0, abs(a[k])), (a["step"] if "step" in a else 0, k)
    assert len(full.history) == len(resumed.history)
    for n in full.sites:
        assert torch.allclose(full.components[n].U, resumed.components[n].U, atol=1e-6)


def test_run_dir_layout_and_latest(tmp_path):
    model = make_model("gpt2")
    cfg = small_cfg(steps=4, log_every=1, checkpoint_every=2, faithfulness_warmup_steps=2)
    tl_vpd.decompose(model, cfg, corpus(), run_dir=tmp_path)
    assert (tmp_path / CONFIG_FILE).exists() and (tmp_path / DECOMPOSITION_DIR).is_dir()
    latest = latest_checkpoint(tmp_path)
    assert latest == tmp_path / CHECKPOINT_DIR / "step_0000004"
    assert (latest / TRAINER_STATE_FILE).exists()
    assert not list((tmp_path / CHECKPOINT_DIR).glob("*.tmp"))
    with pytest.raises(FileNotFoundError, match="no valid checkpoint"):
        latest_checkpoint(tmp_path / "empty")
