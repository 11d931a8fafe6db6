"""The lr and p schedules, and that every former cosine is lr_schedule with its own arguments."""

import math

import pytest

from tl_vpd.schedules import lr_schedule, p_schedule
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
