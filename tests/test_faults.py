"""Kill a real ``tl-vpd`` process (SIGINT, SIGTERM, SIGKILL) during target training, during the
decomposition and in the middle of writing a checkpoint; re-run the same command; the final
decomposition must equal an uninterrupted run's (to 1e-6).

Every run is a subprocess on one thread (so it is deterministic whatever else runs) and the
cases run two at a time. A kill lands when the files a stage writes show it is under way; a kill
inside a checkpoint write is placed exactly by a wrapper that patches the write to SIGKILL its
own process half-way (test-side only: the library has no fault hooks).
"""

import os
import shutil
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tl_vpd.target_model import HAS_HOOKED_TRANSFORMER

if not HAS_HOOKED_TRANSFORMER:  # the kill/resume logic is the same on TL 4; CI time goes elsewhere
    pytest.skip("runs the HookedTransformer target (TransformerLens < 4); the bridge target's "
                "save/load/resume is tested in test_target_model.py", allow_module_level=True)

TARGET = {
    "corpus": {"seq_len": 32, "vocab_size": 320, "max_bytes": 300_000},
    "model": {"d_model": 32, "n_layers": 2, "n_heads": 4, "seed": 0},
    "train": {"steps": 240, "batch_size": 16, "lr": 1e-2, "warmup_steps": 5, "eval_every": 20,
              "eval_batches": 2},
}
VPD = {"C": 32, "steps": 60, "batch_size": 4, "seq_len": 32, "faithfulness_warmup_steps": 50,
       "checkpoint_every": 10, "keep_checkpoints": 2, "progress": False}
EVAL = ["--n-batches", "1", "--pgd-steps", "2", "--no-progress"]
ROOT = Path(__file__).resolve().parents[1]

# Runs the CLI with one write patched to SIGKILL the process when it is half done.
_KILL_IN_WRITE = """
import os, signal, sys
import tl_vpd.{module} as m
original, calls = m.{function}, [0]
def patched(*args, **kwargs):
    calls[0] += 1
    if calls[0] == {call}:
        {half_write}
        os.kill(os.getpid(), signal.SIGKILL)
    return original(*args, **kwargs)
m.{function} = patched
from tl_vpd.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    d = tmp_path_factory.mktemp("fault_configs")
    (d / "target.yaml").write_text(yaml.safe_dump(TARGET))
    (d / "vpd.yaml").write_text(yaml.safe_dump(VPD))
    return d / "target.yaml", d / "vpd.yaml"


def _main_args(out, configs):
    return ["--threads", "1", "main", "--out", str(out), "--target-config", str(configs[0]),
            "--vpd-config", str(configs[1]), *EVAL]


def _start(args, code=None):
    cmd = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", "tl_vpd.cli", *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc, timeout=600):
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def _run(args, code=None):
    rc, out = _finish(_start(args, code))
    assert rc == 0, out[-3000:]
    return out


def _kill_when(proc, ready, sig, timeout=300):
    """Send ``sig`` once ``ready()`` holds; fail if the process ended first."""
    t = time.monotonic()
    while not ready():
        if proc.poll() is not None:
            pytest.fail("the run ended before the fault was injected:\n" + proc.communicate()[0][-2000:])
        if time.monotonic() - t > timeout:
            proc.kill()
            pytest.fail("the fault point was never reached")
        time.sleep(0.02)
    proc.send_signal(sig)
    return _finish(proc)


def _target_step(out):
    states = list((out / "target" / "checkpoints").glob("state_*.pt"))
    return max((int(p.stem.split("_")[1]) for p in states), default=-1)


def _decomp_checkpoints(out):
    return sorted((out / "decomp" / "checkpoints").glob("step_*[0-9]"))


def _params(out):
    path = out / "decomp" / "decomposition"
    return {**load_file(str(path / "components.safetensors")), **load_file(str(path / "ci_fn.safetensors"))}


def _assert_same(out, reference):
    got, want = _params(out), _params(reference)
    assert got.keys() == want.keys()
    worst = max((got[k].float() - want[k].float()).abs().max().item() for k in want)
    assert worst <= 1e-6, f"resumed run differs from the uninterrupted one by {worst:.3g}"


def _case_target_sigint(base, configs):
    out = base / "target_sigint"
    rc, log = _kill_when(_start(_main_args(out, configs)), lambda: _target_step(out) >= 40, signal.SIGINT)
    assert rc == 130 and "re-run the same command" in log, log[-2000:]
    assert not (out / "target" / "model.safetensors").exists()
    log = _run(_main_args(out, configs))
    assert "resuming target training" in log
    return out


def _case_target_sigkill(base, configs):
    out = base / "target_sigkill"
    rc, _ = _kill_when(_start(_main_args(out, configs)), lambda: _target_step(out) >= 60, signal.SIGKILL)
    assert rc == -signal.SIGKILL
    _run(_main_args(out, configs))
    return out


def _with_target(base, name, reference):
    """A run directory holding the reference's finished target (so only the decomposition runs)."""
    out = base / name
    out.mkdir()
    shutil.copytree(reference / "target", out / "target")
    shutil.copytree(reference / "corpus", out / "corpus")
    return out


def _case_decomp_signal(base, configs, reference, sig):
    out = _with_target(base, f"decomp_{signal.Signals(sig).name}", reference)
    rc, log = _kill_when(_start(_main_args(out, configs)), lambda: len(_decomp_checkpoints(out)) >= 2, sig)
    if sig == signal.SIGKILL:
        assert rc == -signal.SIGKILL
    else:
        assert rc == 128 + sig and "checkpoint" in log, log[-2000:]
    _run(_main_args(out, configs))
    assert len(_decomp_checkpoints(out)) == VPD["keep_checkpoints"]  # pruned
    return out


def _case_kill_in_checkpoint_write(base, configs, reference):
    """SIGKILL half-way through the 3rd checkpoint write: the decomposition's files are in
    step_….tmp, the trainer state and manifest are not."""
    out = _with_target(base, "decomp_kill_in_write", reference)
    code = _KILL_IN_WRITE.format(module="checkpoint", function="_seal", call=3, half_write="pass")
    rc, _ = _finish(_start(_main_args(out, configs), code))
    assert rc == -signal.SIGKILL
    assert list((out / "decomp" / "checkpoints").glob("*.tmp"))  # the write was cut short
    _run(_main_args(out, configs))
    return out


def _case_kill_in_target_write(base, configs):
    """SIGKILL while the 4th target checkpoint is being written (weights written, state not)."""
    out = base / "target_kill_in_write"
    code = _KILL_IN_WRITE.format(module="target", function="_save_state", call=4, half_write="pass")
    rc, _ = _finish(_start(_main_args(out, configs), code))
    assert rc == -signal.SIGKILL
    _run(_main_args(out, configs))
    return out


def test_killed_runs_resume_to_the_uninterrupted_result(configs, tmp_path):
    reference = tmp_path / "reference"
    with ThreadPoolExecutor(2) as pool:
        ref = pool.submit(_run, _main_args(reference, configs))
        first = [pool.submit(_case_target_sigint, tmp_path, configs),
                 pool.submit(_case_target_sigkill, tmp_path, configs),
                 pool.submit(_case_kill_in_target_write, tmp_path, configs)]
        ref.result()
        second = [pool.submit(_case_decomp_signal, tmp_path, configs, reference, signal.SIGTERM),
                  pool.submit(_case_decomp_signal, tmp_path, configs, reference, signal.SIGKILL),
                  pool.submit(_case_kill_in_checkpoint_write, tmp_path, configs, reference)]
        outs = [f.result() for f in first + second]
    for out in outs:
        _assert_same(out, reference)
    ref_target = load_file(str(reference / "target" / "model.safetensors"))
    for out in outs[:3]:  # the interrupted targets equal the uninterrupted one exactly
        got = load_file(str(out / "target" / "model.safetensors"))
        assert all(torch.equal(got[k], ref_target[k]) for k in ref_target)
