"""Per-iteration schedules: linear warmup then cosine, and linear warmup then constant.

Both follow DINOv2's / GPFM's ``CosineScheduler`` (birkhoffkiki/GPFM ``pretrain/dinov2/utils/
utils.py``): the warmup is ``np.linspace(start, base, warmup_iters)``, which ends *on* the base
value, and iterations past the end keep the final value.
"""

from __future__ import annotations

import numpy as np

from gpfm.distill.errors import DistillConfigError


def cosine_schedule(
    base: float,
    final: float,
    total_iters: int,
    warmup_iters: int = 0,
    start_warmup: float = 0.0,
    freeze_iters: int = 0,
) -> np.ndarray:
    """Values for iterations 0 … total_iters−1.

    ``freeze_iters`` at 0, then a linear warmup from ``start_warmup`` to ``base`` over
    ``warmup_iters``, then a half cosine from ``base`` to ``final``.
    """
    if total_iters < 1:
        raise DistillConfigError(f"total_iters must be positive, got {total_iters}")
    freeze = np.zeros(min(freeze_iters, total_iters))
    warmup = np.linspace(start_warmup, base, max(0, warmup_iters))
    remaining = max(0, total_iters - len(freeze) - len(warmup))
    steps = np.arange(remaining)
    cosine = final + 0.5 * (base - final) * (1 + np.cos(np.pi * steps / max(1, remaining)))
    return np.concatenate([freeze, warmup, cosine])[:total_iters]


def linear_warmup_schedule(
    start: float, end: float, warmup_iters: int, total_iters: int
) -> np.ndarray:
    """``start`` to ``end`` linearly over ``warmup_iters``, then ``end`` (teacher temperature)."""
    warmup = np.linspace(start, end, max(0, warmup_iters))[:total_iters]
    return np.concatenate([warmup, np.full(total_iters - len(warmup), end)])
