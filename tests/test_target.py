import json
import os
import signal
import socket

import pytest
import torch

from tl_vpd.target_model import HAS_HOOKED_TRANSFORMER

if not HAS_HOOKED_TRANSFORMER:  # TL 4: tests/test_target_model.py trains the bridge target
    pytest.skip("patches HookedTransformer (TransformerLens < 4 only)", allow_module_level=True)

from transformer_lens import HookedTransformer  # noqa: E402

from tl_vpd.data import default_corpus  # noqa: E402
from tl_vpd.interrupts import TrainingInterrupted  # noqa: E402
from tl_vpd.target import (  # noqa: E402
    TargetRun,
    _lr_factor,
    load_pretrained,
    load_target,
    target_config,
    train_target,
)

VOCAB = 320  # byte-level BPE needs at least 257 tokens (256 bytes + <|endoftext|>)
STEPS = 60
EVAL_EVERY = 20
RUN_KW = dict(steps=STEPS, batch_size=16, lr=1e-2, warmup_steps=10, eval_every=EVAL_EVERY,
              eval_batches=4, progress=False)


@pytest.fixture(scope="module")
def corpus():
    return default_corpus(seq_len=32, vocab_size=VOCAB, max_bytes=300_000)


@pytest.fixture(scope="module")
def tiny_cfg():
    return target_config(VOCAB, d_model=32, n_layers=2, n_heads=4, n_ctx=32)


@pytest.fixture(scope="module")
def run(corpus, tiny_cfg, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("target_run")
    return train_target(tiny_cfg, corpus.train, corpus.val, run_dir=run_dir,
                        tokenizer=corpus.tokenizer, **RUN_KW)


def test_target_config_architecture():
    cfg = target_config(4096)
    shape = (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head, cfg.d_mlp, cfg.n_ctx)
    assert shape == (4, 128, 4, 32, 512, 128)
    assert cfg.normalization_type == "RMS" and cfg.final_rms
    assert cfg.positional_embedding_type == "rotary" and cfg.rotary_dim == cfg.d_head
    assert cfg.act_fn == "gelu" and not cfg.gated_mlp
    assert cfg.default_prepend_bos is False and cfg.seed == 0
    with pytest.raises(ValueError, match="divisible by n_heads"):
        target_config(100, d_model=30, n_heads=4)


def test_target_config_leaves_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    target_config(64, seed=7)
    assert torch.equal(torch.rand(3), expected)


def test_lr_schedule_warms_up_then_decays_to_ten_percent():
    factors = [_lr_factor(step, warmup_steps=10, total_steps=110) for step in range(111)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0) and factors[110] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[10:], factors[11:]))


def test_training_lowers_validation_ce(run, corpus):
    assert isinstance(run, TargetRun)
    assert [point["step"] for point in run.curve] == list(range(0, STEPS + 1, EVAL_EVERY))
    assert run.curve[-1]["tokens_seen"] == STEPS * 16 * 32
    first, last = run.curve[0]["val_ce"], run.curve[-1]["val_ce"]
    counts = torch.bincount(corpus.train.flatten(), minlength=VOCAB).double()
    probs = counts[counts > 0] / counts.sum()
    unigram_entropy = -(probs * probs.log()).sum().item()
    assert last < first - 1.0
    # Beating the best context-free predictor means the model uses context.
    assert last < unigram_entropy - 0.3
    assert "val_ce" in repr(run)


def test_training_is_deterministic(corpus, tiny_cfg):
    def train(seed):
        kwargs = dict(steps=5, batch_size=8, warmup_steps=2, eval_every=5, eval_batches=1, progress=False)
        return train_target(tiny_cfg, corpus.train, corpus.val, seed=seed, **kwargs)

    first, again, other = train(0), train(0), train(1)
    assert first.curve == again.curve
    for (name, a), b in zip(first.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert other.curve != first.curve


def test_run_dir_round_trip(run, corpus, tiny_cfg):
    run_dir = run.run_dir
    for step in range(0, STEPS + 1, EVAL_EVERY):
        assert (run_dir / "checkpoints" / f"step_{step}.safetensors").is_file()
    assert json.loads((run_dir / "curve.json").read_text()) == run.curve

    model, tokenizer, curve = load_target(run_dir)
    assert isinstance(model, HookedTransformer)
    assert model.cfg.to_dict() == tiny_cfg.to_dict()
    assert curve == run.curve
    assert tokenizer.to_str() == corpus.tokenizer.to_str()
    tokens = corpus.val[:4]
    with torch.no_grad():
        assert torch.equal(model(tokens), run.model(tokens))


def test_checkpoint_matches_final_model(run):
    from safetensors.torch import load_file

    final = load_file(str(run.run_dir / "checkpoints" / f"step_{STEPS}.safetensors"))
    assert all(torch.equal(final[name], t) for name, t in run.model.state_dict().items())


def test_run_dir_is_not_overwritten(run, corpus, tiny_cfg):
    with pytest.raises(FileExistsError, match="already holds a run"):
        train_target(tiny_cfg, corpus.train, corpus.val, steps=1, run_dir=run.run_dir, progress=False)


def test_load_target_names_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json.*model.safetensors"):
        load_target(tmp_path)


def test_run_dir_requires_a_target_config(corpus, tiny_cfg, tmp_path):
    cfg = target_config(VOCAB, d_model=32, n_layers=2, n_heads=4, n_ctx=32)
    cfg.act_fn = "relu"
    with pytest.raises(ValueError, match="act_fn"):
        train_target(cfg, corpus.train, corpus.val, steps=1, run_dir=tmp_path, progress=False)


def test_training_rejects_blocks_longer_than_context(corpus):
    cfg = target_config(VOCAB, d_model=32, n_layers=1, n_heads=4, n_ctx=16)
    with pytest.raises(ValueError, match="n_ctx"):
        train_target(cfg, corpus.train, corpus.val, steps=1, progress=False)


def _interrupt_at_forward(monkeypatch, n, action):
    """Patch the model's forward so that its ``n``-th call runs ``action`` first (forward passes:
    the step-0 evaluation's 4 batches, then one per training step)."""
    calls = {"n": 0}
    original = HookedTransformer.forward

    def patched(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == n:
            action()
        return original(self, *args, **kwargs)

    monkeypatch.setattr(HookedTransformer, "forward", patched)


def test_sigint_stops_at_a_step_boundary_and_resume_is_exact(run, corpus, tiny_cfg, tmp_path, monkeypatch):
    """Ctrl-C used to write model.safetensors (a half-trained target later loaded as finished)
    and to stop mid-step. Now the signal stops training after the step, saves a checkpoint that
    is not a target, and resume=True finishes with exactly the uninterrupted weights."""
    _interrupt_at_forward(monkeypatch, 4 + 7, lambda: os.kill(os.getpid(), signal.SIGINT))
    with pytest.raises(TrainingInterrupted) as info:
        train_target(tiny_cfg, corpus.train, corpus.val, run_dir=tmp_path, **RUN_KW)
    monkeypatch.undo()
    assert info.value.step == 7 and info.value.signum == signal.SIGINT
    assert not (tmp_path / "model.safetensors").exists()
    assert (tmp_path / "checkpoints" / "state_7.pt").is_file()
    with pytest.raises(FileNotFoundError, match="not a complete target run"):
        load_target(tmp_path)
    with pytest.raises(FileExistsError, match="pass resume=True"):
        train_target(tiny_cfg, corpus.train, corpus.val, run_dir=tmp_path, **RUN_KW)
    resumed = train_target(tiny_cfg, corpus.train, corpus.val, run_dir=tmp_path, resume=True, **RUN_KW)
    assert resumed.curve == run.curve
    for name, t in run.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], t), name


def test_hard_interrupt_resumes_from_the_last_evaluation(run, corpus, tiny_cfg, tmp_path, monkeypatch):
    """A KeyboardInterrupt mid-step (second Ctrl-C) or a kill leaves the evaluation checkpoints;
    resume continues from the newest and still ends with the uninterrupted weights."""
    def hard():
        raise KeyboardInterrupt

    _interrupt_at_forward(monkeypatch, 4 + EVAL_EVERY + 5 + 4, hard)  # + the step-20 evaluation
    with pytest.raises(KeyboardInterrupt):
        train_target(tiny_cfg, corpus.train, corpus.val, run_dir=tmp_path, **RUN_KW)
    monkeypatch.undo()
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("state_*.pt")) == ["state_0.pt", "state_20.pt"]
    (tmp_path / "checkpoints" / "state_20.pt").write_bytes(b"truncated")  # falls back to step 0
    resumed = train_target(tiny_cfg, corpus.train, corpus.val, run_dir=tmp_path, resume=True, **RUN_KW)
    for name, t in run.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[name], t), name


def test_resume_refuses_other_arguments(corpus, tiny_cfg, tmp_path, monkeypatch):
    _interrupt_at_forward(monkeypatch, 6, lambda: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(TrainingInterrupted):
        train_target(tiny_cfg, corpus.train, corpus.val, run_dir=tmp_path, **RUN_KW)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="other \\['lr'\\]"):
        train_target(tiny_cfg, corpus.train, corpus.val, run_dir=tmp_path, resume=True,
                     **{**RUN_KW, "lr": 2e-2})


def test_load_pretrained_fails_fast_offline(monkeypatch):
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)

    def unreachable(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    with pytest.raises(ConnectionError, match="'gpt2'.*unreachable"):
        load_pretrained("gpt2")


def test_cpu_target_training_keeps_freed_memory(corpus, tiny_cfg, monkeypatch):
    import tl_vpd.target

    calls = []
    monkeypatch.setattr(tl_vpd.target, "keep_freed_memory", lambda device: calls.append(device.type))
    train_target(tiny_cfg, corpus.train, corpus.val, steps=1, eval_every=1, progress=False)
    assert calls == ["cpu"]  # tl_vpd/allocator.py: each step's logits reuse warm pages
