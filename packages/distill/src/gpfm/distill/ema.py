"""The teacher: an exponential moving average of the student."""

from __future__ import annotations

import torch
from torch import nn

from gpfm.distill.errors import DistillConfigError


@torch.no_grad()
def update_ema(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher ← momentum · teacher + (1 − momentum) · student, parameter by parameter.

    Call it after real optimiser steps only (not on gradient-accumulation micro-steps).
    Buffers are copied.
    """
    teacher_params: list[torch.Tensor] = [p for _, p in sorted(teacher.named_parameters())]
    student_params: list[torch.Tensor] = [p for _, p in sorted(student.named_parameters())]
    if len(teacher_params) != len(student_params):
        raise DistillConfigError("teacher and student have different parameters")
    torch._foreach_mul_(teacher_params, momentum)
    torch._foreach_add_(teacher_params, [p.detach() for p in student_params], alpha=1 - momentum)
    for (_, t), (_, s) in zip(
        sorted(teacher.named_buffers()), sorted(student.named_buffers()), strict=True
    ):
        t.copy_(s)
