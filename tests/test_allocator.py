"""glibc keeps freed memory for reuse once the library runs heavy CPU work (tl_vpd/allocator.py)."""

import os
import subprocess
import sys

import pytest

import tl_vpd
from tl_vpd import allocator
from model_zoo import corpus, make_model, small_cfg

GLIBC = sys.platform.startswith("linux") and (os.confstr("CS_GNU_LIBC_VERSION") or "").startswith("glibc")

# Allocate and free six [1024, 4096] fp32 tensors (a step's logits-sized buffers) ten times and
# count the minor page faults of those rounds.
_FAULTS = """
import resource, torch
from tl_vpd.allocator import keep_freed_memory
applied = keep_freed_memory()
def round_():
    xs = [torch.empty(1024, 4096).fill_(1.0) for _ in range(6)]
    del xs
round_()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    round_()
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(env_value: str | None) -> tuple[bool, int]:
    env = {k: v for k, v in os.environ.items() if k != allocator.ENV_VAR}
    if env_value is not None:
        env[allocator.ENV_VAR] = env_value
    out = subprocess.run([sys.executable, "-c", _FAULTS], env=env, capture_output=True,
                         text=True, check=True).stdout.split()
    return out[0] == "True", int(out[1])


@pytest.mark.skipif(not GLIBC, reason="the setting is glibc's")
def test_freed_memory_is_reused_instead_of_page_faulted_again():
    kept, kept_faults = _faults(None)
    default, default_faults = _faults("0")
    assert kept and not default
    # Each round touches 96 MiB = 24,576 pages. Kept: ten rounds fault fewer than half a round's
    # pages (measured 4,096). glibc's default re-faults some or all of them every round
    # (measured 28,600 or 245,000 for the ten, depending on how its mmap threshold adapts).
    assert kept_faults < 24_576 / 2, (kept_faults, default_faults)


def test_the_opt_out_and_a_second_call_change_nothing(monkeypatch):
    monkeypatch.setattr(allocator, "_applied", None)
    monkeypatch.setenv(allocator.ENV_VAR, "off")
    calls = []
    monkeypatch.setattr(allocator, "_glibc", lambda: calls.append(1))
    assert allocator.keep_freed_memory() is False
    assert allocator.keep_freed_memory() is False
    assert calls == []  # never asked glibc


def test_cpu_training_and_evaluation_turn_it_on(monkeypatch):
    import tl_vpd.evaluate
    import tl_vpd.trainer

    calls = []
    monkeypatch.setattr(tl_vpd.trainer, "keep_freed_memory", lambda device: calls.append(("train", device.type)))
    monkeypatch.setattr(tl_vpd.evaluate, "keep_freed_memory", lambda device: calls.append(("eval", device.type)))
    model = make_model("gpt2")
    dec = tl_vpd.decompose(model, small_cfg(steps=2, adversary="none", coeff_adversarial=0.0),
                           corpus())
    tl_vpd.evaluate.evaluate(dec, corpus(4, seed=1), n_batches=1, batch_size=4, pgd_steps=(1,),
                             pgd_restarts=1)
    assert calls == [("train", "cpu"), ("eval", "cpu")]


def test_other_devices_leave_the_allocator_alone(monkeypatch):
    monkeypatch.setattr(allocator, "_applied", None)
    calls = []
    monkeypatch.setattr(allocator, "_glibc", lambda: calls.append(1))
    assert allocator.keep_freed_memory("meta") is False
    assert calls == [] and allocator._applied is None  # a later CPU call still decides
