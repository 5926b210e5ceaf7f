"""Schedules as pure functions of the step."""

from __future__ import annotations

import math


def cosine_anneal(step: float, steps: int, start: float, end: float) -> float:
    """Half a cosine from ``start`` at step 0 to ``end`` at ``steps``, then ``end``.

    The dVAE's KL weight (0 -> 6.6), temperature (1 -> 1/16) and learning rate all follow
    this shape in the paper; a linear temperature schedule tended to diverge.
    """
    if steps <= 0 or step >= steps:
        return end
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * max(step, 0) / steps))


def warmup_cosine(step: float, warmup: int, total: int, peak: float, final: float) -> float:
    """Linear warm-up from 0 to ``peak`` over ``warmup`` steps, then cosine to ``final``."""
    if warmup > 0 and step < warmup:
        return peak * (step + 1) / warmup
    return cosine_anneal(step - warmup, total - warmup, peak, final)


def every_or_last(step: int, every: int, last: int) -> bool:
    """Whether a periodic task (logging, evaluation, a checkpoint) is due after update
    ``step``: every ``every`` updates, and at the last one."""
    return step % every == 0 or step == last
