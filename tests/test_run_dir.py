"""A run directory holds one run: another run, other data, another target or another config is
refused; a stopped or failed run checkpoints its last complete step and resumes exactly."""

import json
import os
import signal

import pytest
import torch

import tl_vpd
from model_zoo import corpus, make_model, small_cfg
from tl_vpd.checkpoint import checkpoints
from tl_vpd.interrupts import StepBoundary, TrainingInterrupted
from tl_vpd.run_dir import RunMismatchError
from tl_vpd.trainer import DivergenceError

CFG = dict(steps=8, log_every=1, checkpoint_every=4, faithfulness_warmup_steps=3)


@pytest.fixture(scope="module")
def model():
    return make_model("gpt2")


@pytest.fixture(scope="module")
def full(model):
    """The uninterrupted run every resumed one must equal."""
    return tl_vpd.decompose(model, small_cfg(**{**CFG, "checkpoint_every": 0}), corpus())


def _same(a, b, tol=1e-6):
    for n in a.sites:
        assert torch.allclose(a.components[n].U, b.components[n].U, atol=tol), n
        assert torch.allclose(a.components[n].V, b.components[n].V, atol=tol), n
    for (k, p), q in zip(a.ci_fn.state_dict().items(), b.ci_fn.state_dict().values()):
        assert torch.allclose(p, q, atol=tol), k


def test_a_directory_holding_another_run_is_refused(model, tmp_path):
    """It used to add this run's checkpoints beside the other's; resume then mixed them."""
    tl_vpd.decompose(model, small_cfg(**CFG), corpus(), run_dir=tmp_path)
    cases = [
        (dict(cfg=small_cfg(**{**CFG, "lr": 3e-3})), "config lr"),
        (dict(cfg=small_cfg(**{**CFG, "steps": 6})), "config steps"),
        (dict(data=corpus(seed=1)), "the data"),
        (dict(model=make_model("gpt2", dtype=torch.float32).requires_grad_(False)), None),
    ]
    other = make_model("gpt2")
    with torch.no_grad():
        other.embed.W_E.add_(0.01)  # differs only in the embedding, not a decomposed matrix
    cases[-1] = (dict(model=other), "the target model .*embed.W_E")
    for change, message in cases:
        kw = dict(model=model, cfg=small_cfg(**CFG), data=corpus()) | change
        for resume in (False, True):
            with pytest.raises(RunMismatchError, match=message):
                tl_vpd.decompose(kw["model"], kw["cfg"], kw["data"], run_dir=tmp_path, resume=resume)


def test_the_same_run_needs_resume_and_may_change_bookkeeping(model, full, tmp_path):
    cfg = small_cfg(**CFG)
    tl_vpd.decompose(model, cfg, corpus(), run_dir=tmp_path)
    with pytest.raises(RunMismatchError, match="pass resume=True"):
        tl_vpd.decompose(model, cfg, corpus(), run_dir=tmp_path)
    again = tl_vpd.decompose(model, cfg.replace(log_every=2, progress=False), corpus(),
                             run_dir=tmp_path, resume=True)
    _same(again, full)


def test_an_old_or_foreign_directory_is_refused(model, tmp_path):
    (tmp_path / "checkpoints").mkdir()
    with pytest.raises(RunMismatchError, match="no run.json"):
        tl_vpd.decompose(model, small_cfg(**CFG), corpus(), run_dir=tmp_path, resume=True)


def test_a_signal_stops_after_the_step_and_resume_is_exact(model, full, tmp_path):
    """SIGINT used to interrupt mid-step: the checkpoint had the generators and the data stream
    advanced but not the step counter (resumed runs differed by 3e-3)."""
    calls = {"n": 0}

    def hook(module, args):
        calls["n"] += 1
        if calls["n"] == 5 * 3:  # inside step 5's forward passes
            os.kill(os.getpid(), signal.SIGINT)

    handle = model.blocks[0].register_forward_pre_hook(hook)
    try:
        with pytest.raises(TrainingInterrupted) as info:
            tl_vpd.decompose(model, small_cfg(**CFG), corpus(), run_dir=tmp_path)
    finally:
        handle.remove()
    step = info.value.step
    assert 0 < step < CFG["steps"] and info.value.checkpoint == checkpoints(tmp_path)[-1]
    assert checkpoints(tmp_path)[-1].name == f"step_{step:07d}"
    _same(tl_vpd.decompose(model, small_cfg(**CFG), corpus(), run_dir=tmp_path, resume=True), full)


@pytest.mark.parametrize("where", ["batch", "callback", "eval"])
def test_any_error_checkpoints_the_last_complete_step_first(model, full, tmp_path, where):
    """A bad batch mid-stream, a failing callback or bad eval data used to lose every step
    (only Ctrl-C and NaN checkpointed)."""
    good = corpus()
    cfg = small_cfg(**CFG)
    kw = {}

    if where == "batch":
        def data():
            for i in range(100):
                if i == 6:
                    yield torch.full((8, 12), 10**6)  # a token id outside the vocabulary
                yield good[(8 * i) % 64:(8 * i) % 64 + 8]
        with pytest.raises(ValueError, match="vocabulary"):
            tl_vpd.decompose(model, cfg, data(), run_dir=tmp_path)
        assert checkpoints(tmp_path)[-1].name == "step_0000006"
        return
    if where == "callback":
        def boom(step, metrics, dec):
            if step == 6:
                raise RuntimeError("callback failed")
        kw["callbacks"] = [boom]
        error = RuntimeError
    else:
        cfg = cfg.replace(eval_every=6)
        kw["eval_data"] = torch.full((8, 12), 10**6)
        error = ValueError
    with pytest.raises(error):
        tl_vpd.decompose(model, cfg, good, run_dir=tmp_path, **kw)
    assert checkpoints(tmp_path)[-1].name == "step_0000006"
    if where == "eval":
        kw["eval_data"] = good
    else:
        kw = {}
    _same(tl_vpd.decompose(model, cfg, good, run_dir=tmp_path, resume=True, **kw), full)


def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(model, full, tmp_path):
    """A truncated latest checkpoint used to give OSError/SafetensorError though the previous
    one was valid; config.yaml was rewritten in place at every checkpoint (0 bytes after a kill)."""
    cfg = small_cfg(**{**CFG, "steps": 8, "checkpoint_every": 2, "keep_checkpoints": 0})

    def stop(step, metrics, dec):
        if step == 7:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        tl_vpd.decompose(model, cfg, corpus(), run_dir=tmp_path, callbacks=[stop])
    names = [p.name for p in checkpoints(tmp_path)]
    assert names == [f"step_{k:07d}" for k in (2, 4, 6, 7)]
    newest = checkpoints(tmp_path)[-1] / "components.safetensors"
    newest.write_bytes(newest.read_bytes()[:100])
    with pytest.warns(UserWarning, match="truncated"):
        resumed = tl_vpd.decompose(model, cfg, corpus(), run_dir=tmp_path, resume=True)
    _same(resumed, full)
    manifest = json.loads((checkpoints(tmp_path)[-1] / "manifest.json").read_text())
    assert {"components.safetensors", "trainer_state.pt"} <= set(manifest)


def test_only_the_newest_checkpoints_are_kept(model, tmp_path):
    """One toy run at checkpoint_every=1 used to keep every step (297 MB)."""
    cfg = small_cfg(**{**CFG, "checkpoint_every": 1, "keep_checkpoints": 2})
    tl_vpd.decompose(model, cfg, corpus(), run_dir=tmp_path)
    assert [p.name for p in checkpoints(tmp_path)] == ["step_0000007", "step_0000008"]


def test_an_exploding_loss_stops_with_a_clear_error(model, tmp_path):
    """lr=1e6 used to finish "OK" with faithfulness 5e27."""
    cfg = small_cfg(steps=20, lr=1e6, lr_warmup_steps=0, faithfulness_warmup_steps=0)
    with pytest.raises(DivergenceError, match="diverged.*lower lr"):
        tl_vpd.decompose(model, cfg, corpus(), run_dir=tmp_path)
    assert checkpoints(tmp_path)  # the state is kept for inspection


@pytest.mark.parametrize("kw, message", [
    (dict(cfg=dict(checkpoint_every=5)), "needs a run_dir"),
    (dict(cfg=dict(eval_every=5)), "needs eval_data"),
    (dict(resume=True), "resume=True needs the run_dir"),
])
def test_settings_that_would_do_nothing_are_refused(model, kw, message):
    with pytest.raises(ValueError, match=message):
        tl_vpd.decompose(model, small_cfg(**kw.get("cfg", {})), corpus(),
                         **{k: v for k, v in kw.items() if k != "cfg"})


def test_a_config_may_be_a_dict(model):
    """A dict config used to fail with AttributeError."""
    dec = tl_vpd.decompose(model, {"C": 8, "steps": 2, "batch_size": 4, "seq_len": 12,
                                   "progress": False, "faithfulness_warmup_steps": 1}, corpus())
    assert dec.config.C == 8
    with pytest.raises(TypeError):  # names the allowed types (or the type checker of the tests does)
        tl_vpd.decompose(model, ["C", 8], corpus())


def test_step_boundary_defers_a_signal_until_checked():
    with StepBoundary(quiet=True) as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):  # a second Ctrl-C stops at once
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
