"""The lr and p schedules, and that every former cosine is lr_schedule with its own arguments."""

import math

import pytest

import tl_vpd
from model_zoo import corpus, make_model, small_cfg
from tl_vpd.schedules import lr_schedule, p_schedule, warmup_constant
from tl_vpd.target import _lr_factor


def test_p_schedule_whole_run():
    assert p_schedule(0, 100, 2.0, 0.4) == pytest.approx(2.0)
    assert p_schedule(50, 100, 2.0, 0.4) == pytest.approx(1.2)
    assert p_schedule(100, 100, 2.0, 0.4) == pytest.approx(0.4)
    assert p_schedule(150, 100, 2.0, 0.4) == pytest.approx(0.4)

def test_p_schedule_partial_window():
    kwargs = dict(total_steps=100, p_start=2.0, p_end=0.4, start_frac=0.2, end_frac=0.6)
    assert p_schedule(10, **kwargs) == pytest.approx(2.0)
    assert p_schedule(20, **kwargs) == pytest.approx(2.0)
    assert p_schedule(40, **kwargs) == pytest.approx(1.2)
    assert p_schedule(60, **kwargs) == pytest.approx(0.4)
    assert p_schedule(90, **kwargs) == pytest.approx(0.4)
    # an empty window is a step
    step_kwargs = {**kwargs, "start_frac": 0.5, "end_frac": 0.5}
    assert p_schedule(49, **step_kwargs) == pytest.approx(2.0)
    assert p_schedule(50, **step_kwargs) == pytest.approx(0.4)

def test_lr_schedule_warmup_and_cosine():
    kwargs = dict(total_steps=110, base_lr=1e-3, warmup_steps=10, final_frac=0.1)
    assert lr_schedule(0, **kwargs) == pytest.approx(0.0)
    assert lr_schedule(5, **kwargs) == pytest.approx(5e-4)
    assert lr_schedule(10, **kwargs) == pytest.approx(1e-3)
    # halfway through the cosine: final + (base - final) / 2
    assert lr_schedule(60, **kwargs) == pytest.approx(1e-4 + 0.5 * 9e-4)
    assert lr_schedule(110, **kwargs) == pytest.approx(1e-4)
    assert lr_schedule(500, **kwargs) == pytest.approx(1e-4)

def test_lr_schedule_without_warmup_starts_at_base():
    assert lr_schedule(0, 100, 5e-5, 0, 0.1) == pytest.approx(5e-5)
    assert lr_schedule(100, 100, 5e-5, 0, 0.1) == pytest.approx(5e-6)
    assert lr_schedule(50, 100, 5e-5, 0, 0.0) == pytest.approx(2.5e-5)


def _old_target_factor(step, warmup_steps, total_steps, final_fraction=0.1):
    """The target trainer's former factor, verbatim."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))


def test_target_factor_is_bit_identical_to_the_old_formula():
    for warmup, total in [(10, 110), (0, 50), (7, 7), (3, 1000)]:
        for step in range(total + 3):
            assert _lr_factor(step, warmup, total) == _old_target_factor(step, warmup, total)
            assert lr_schedule(step, total, 1.0, warmup, 0.1, warmup_offset=1) == (
                _old_target_factor(step, warmup, total))


def test_decomposition_lr_is_bit_identical_to_the_old_formula():
    def old(step, total_steps, base_lr, warmup_steps, final_frac):
        if step < warmup_steps:
            return base_lr * step / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        final_lr = final_frac * base_lr
        return final_lr + (base_lr - final_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    for args in [(110, 1e-3, 10, 0.1), (100, 5e-5, 0, 0.1), (30, 1e-2, 30, 0.0)]:
        for step in range(args[0] + 2):
            assert lr_schedule(step, *args) == old(step, *args)


def test_warmup_constant():
    """The persistent sources' lr: linear from 0 over int(frac · steps) steps, then constant."""
    assert [warmup_constant(k, 100, 0.01, 0.04) for k in (0, 1, 2, 3, 4, 50, 150)] == [
        pytest.approx(v) for v in (0.0, 0.0025, 0.005, 0.0075, 0.01, 0.01, 0.01)]
    assert all(warmup_constant(k, 100, 0.01, 0.0) == 0.01 for k in range(0, 100, 7))
    assert warmup_constant(5, 100, 0.01, 0.009) == 0.01  # shorter than a step: no warm-up
    with pytest.raises(ValueError, match="warmup_frac"):
        warmup_constant(0, 100, 0.01, 1.5)


def test_training_applies_the_p_anneal_end_and_the_sources_lr_warmup():
    """p reaches p_end at p_anneal_end_frac of the run and stays; the logged lr of the persistent
    sources follows warmup_constant step by step."""
    cfg = small_cfg(steps=8, log_every=1, faithfulness_warmup_steps=0, p_anneal_end_frac=0.5,
                    ppgd_lr_warmup_frac=0.5)
    h = [m for m in tl_vpd.decompose(make_model("gpt2"), cfg, corpus()).history if "p" in m]
    assert [m["p"] for m in h] == [pytest.approx(p_schedule(k, 8, 2.0, 0.4, 0.0, 0.5))
                                   for k in range(8)]
    assert all(m["p"] == pytest.approx(0.4) for m in h[4:]) and h[3]["p"] > 0.4
    assert [m["ppgd_lr"] for m in h] == [pytest.approx(v)
                                         for v in (0.0, 0.0025, 0.005, 0.0075) + (0.01,) * 4]
