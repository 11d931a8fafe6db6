"""Schedules of the training runs: the cosine learning rate, the persistent sources' warmed-up
constant learning rate and the minimality exponent ``p``.

The decomposition's learning rate and the target-model trainer's ``LambdaLR`` factor are both
:func:`lr_schedule`, with their own warm-up convention (``warmup_offset``).
"""

from __future__ import annotations

import math

__all__ = ["lr_schedule", "p_schedule", "warmup_constant"]


def lr_schedule(
    step: int,
    total_steps: int,
    base_lr: float,
    warmup_steps: int,
    final_frac: float,
    *,
    warmup_offset: int = 0,
) -> float:
    """Linear warm-up to ``base_lr`` over ``warmup_steps``, then cosine decay to
    ``final_frac · base_lr`` at ``total_steps`` (VPD paper: no warm-up, final 10%).

    Arguments:
        step: the current step (0-based); steps past ``total_steps`` keep the final value.
        total_steps: the length of the run.
        base_lr: the peak value (``1.0`` gives a multiplicative factor, as ``LambdaLR`` wants).
        warmup_steps: length of the linear warm-up (0 = none).
        final_frac: the final value as a fraction of ``base_lr``.
        warmup_offset: the warm-up value is ``base_lr · (step + warmup_offset) / warmup_steps``:
            ``0`` starts at 0 (the decomposition), ``1`` makes the first step already non-zero
            (the target trainer, whose ``LambdaLR`` applies the factor before the first step).

    Returns:
        The value at ``step`` as a float.
    """
    if total_steps < 1 or warmup_steps < 0:
        raise ValueError(
            f"lr_schedule needs total_steps >= 1 and warmup_steps >= 0 "
            f"(got {total_steps}, {warmup_steps})"
        )
    if step < warmup_steps:
        return base_lr * (step + warmup_offset) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    final_lr = final_frac * base_lr
    return final_lr + (base_lr - final_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_constant(step: int, total_steps: int, base: float, warmup_frac: float) -> float:
    """Linear warm-up from 0 to ``base`` over the first ``int(warmup_frac · total_steps)`` steps,
    then ``base`` (VPD paper, training details: the persistent sources' Adam lr is "constant
    with 2.5% warmup").

    A pure function of ``step``, so a resumed run sets the same value an uninterrupted one does.

    Arguments:
        step: the current step (0-based); the warm-up's first step has the value 0.
        total_steps: the length of the run.
        base: the value after the warm-up.
        warmup_frac: the warm-up's length as a fraction of the run, in ``[0, 1]``.

    Returns:
        The value at ``step`` as a float.
    """
    if total_steps < 1 or not 0.0 <= warmup_frac <= 1.0:
        raise ValueError(
            f"warmup_constant needs total_steps >= 1 and 0 <= warmup_frac <= 1 "
            f"(got {total_steps}, {warmup_frac})"
        )
    warmup_steps = int(warmup_frac * total_steps)
    if step < warmup_steps:
        return float(base * step / warmup_steps)
    return float(base)


def p_schedule(
    step: int,
    total_steps: int,
    p_start: float,
    p_end: float,
    start_frac: float = 0.0,
    end_frac: float = 1.0,
) -> float:
    """The minimality exponent ``p`` at ``step``: ``p_start`` until ``start_frac·total_steps``,
    linear to ``p_end`` at ``end_frac·total_steps``, ``p_end`` after (VPD paper: 2.0 → 0.4 over
    the whole run).

    Arguments:
        step: the current step (0-based).
        total_steps: the length of the run.
        p_start: the exponent before the anneal.
        p_end: the exponent after the anneal.
        start_frac: where the anneal starts, as a fraction of the run.
        end_frac: where the anneal ends, as a fraction of the run.

    Returns:
        ``p`` as a float.
    """
    if total_steps < 1:
        raise ValueError(f"p_schedule total_steps must be >= 1 (got {total_steps})")
    if not 0.0 <= start_frac <= end_frac <= 1.0:
        raise ValueError(
            f"p_schedule needs 0 <= start_frac <= end_frac <= 1 (got {start_frac}, {end_frac})"
        )
    start, end = start_frac * total_steps, end_frac * total_steps
    if step >= end:
        return float(p_end)
    if step <= start:
        return float(p_start)
    return float(p_start + (p_end - p_start) * (step - start) / (end - start))
