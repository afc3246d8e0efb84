"""GPFM's pretraining schedules, step by step (learning rate, weight decay, teacher momentum,
teacher temperature and the last layers' learning rate).

From birkhoffkiki/GPFM ``pretrain/dinov2/train/train.py:66-111`` (``build_schedulers``): the
learning rate warms up linearly from 0 and follows a half cosine to ``min_lr``; weight decay and
teacher momentum follow half cosines without warmup; the teacher temperature warms up linearly
and then stays; the last layers (prototypes and expert heads) share the learning rate but get 0
for the first ``freeze_last_layer_steps`` (one 1,250-step "epoch"). Every schedule is indexed by
optimizer step: with gradient accumulation, one step is one update.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from gpfm.distill.errors import DistillConfigError
from gpfm.distill.schedules import cosine_schedule, linear_warmup_schedule


@dataclass(frozen=True)
class PretrainSchedules:
    """One value per optimizer step for each scheduled quantity."""

    lr: np.ndarray
    weight_decay: np.ndarray
    momentum: np.ndarray
    teacher_temp: np.ndarray
    last_layer_lr: np.ndarray

    def at(self, step: int) -> dict[str, float]:
        """The values at optimizer step ``step`` (0-based); past the end, the final ones."""
        index = min(step, len(self.lr) - 1)
        return {
            "lr": float(self.lr[index]),
            "weight_decay": float(self.weight_decay[index]),
            "momentum": float(self.momentum[index]),
            "teacher_temp": float(self.teacher_temp[index]),
            "last_layer_lr": float(self.last_layer_lr[index]),
        }


def scaled_lr(base_lr: float, global_batch: int) -> float:
    """DINOv2's ``sqrt_wrt_1024`` rule: ``base_lr · sqrt(global batch / 1024)``."""
    if global_batch < 1:
        raise DistillConfigError(f"the global batch must be positive, got {global_batch}")
    return base_lr * math.sqrt(global_batch / 1024)


def gpfm_schedules(
    total_steps: int,
    *,
    global_batch: int,
    base_lr: float = 4e-4,
    min_lr: float = 1e-6,
    warmup_steps: int = 12_500,
    weight_decay: float = 0.04,
    weight_decay_end: float = 0.4,
    momentum_teacher: float = 0.992,
    momentum_teacher_end: float = 1.0,
    teacher_temp: float = 0.07,
    warmup_teacher_temp: float = 0.04,
    warmup_teacher_temp_steps: int = 37_500,
    freeze_last_layer_steps: int = 1_250,
) -> PretrainSchedules:
    """The schedules of a run of ``total_steps`` optimizer steps.

    Args:
        total_steps: optimizer steps in the run.
        global_batch: images per optimizer step over all processes (and accumulation).
        base_lr: learning rate for a global batch of 1,024, scaled by ``scaled_lr``.
        warmup_steps: the learning rate's linear warmup, in optimizer steps.
        warmup_teacher_temp_steps: the teacher temperature's warmup, in optimizer steps.
        freeze_last_layer_steps: steps with the last layers' learning rate at 0.
    """
    peak = scaled_lr(base_lr, global_batch)
    lr = cosine_schedule(peak, min_lr, total_steps, warmup_steps)
    last_layer_lr = lr.copy()
    last_layer_lr[:freeze_last_layer_steps] = 0.0
    return PretrainSchedules(
        lr=lr,
        weight_decay=cosine_schedule(weight_decay, weight_decay_end, total_steps),
        momentum=cosine_schedule(momentum_teacher, momentum_teacher_end, total_steps),
        teacher_temp=linear_warmup_schedule(
            warmup_teacher_temp, teacher_temp, warmup_teacher_temp_steps, total_steps
        ),
        last_layer_lr=last_layer_lr,
    )
