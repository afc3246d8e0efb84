"""The teacher: an exponential moving average of the student."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gpfm.distill.distributed import local_shard
from gpfm.distill.errors import DistillConfigError


class TeacherEMA:
    """teacher ← momentum · teacher + (1 − momentum) · student over lists paired once.

    The parameters and buffers of both models are matched by name when this is built (not at
    every step) and updated with ``torch._foreach_*`` kernels. Sharded parameters (DTensors,
    as FSDP2 leaves them) are averaged shard by shard: teacher and student must be sharded
    alike, which they are when each module of the teacher is wrapped like the student's.

    Raises:
        DistillConfigError: the two models' parameter names, buffer names or shapes differ.
    """

    def __init__(self, teacher: nn.Module, student: nn.Module) -> None:
        self.teacher_params, self.student_params = _paired(
            dict(teacher.named_parameters()), dict(student.named_parameters()), "parameters"
        )
        self.teacher_buffers, self.student_buffers = _paired(
            dict(teacher.named_buffers()), dict(student.named_buffers()), "buffers"
        )
        self._first = next(iter(teacher.parameters()), None)

    def tracks(self, teacher: nn.Module) -> bool:
        """Whether ``teacher`` still holds the parameters paired here (wrapping, e.g. FSDP,
        replaces them)."""
        return next(iter(teacher.parameters()), None) is self._first

    @torch.no_grad()
    def __call__(self, momentum: float) -> None:
        if not self.teacher_params:
            return
        teacher = [local_shard(p) for p in self.teacher_params]
        student = [local_shard(p.detach()) for p in self.student_params]
        torch._foreach_mul_(teacher, momentum)
        torch._foreach_add_(teacher, student, alpha=1 - momentum)
        for t, s in zip(self.teacher_buffers, self.student_buffers, strict=True):
            t.copy_(s)


def _paired(
    teacher: dict[str, Tensor], student: dict[str, Tensor], what: str
) -> tuple[list[Tensor], list[Tensor]]:
    if teacher.keys() != student.keys():
        only = sorted(set(teacher) ^ set(student))[:5]
        raise DistillConfigError(f"teacher and student have different {what}: {only}")
    names = sorted(teacher)
    for name in names:
        if teacher[name].shape != student[name].shape:
            raise DistillConfigError(
                f"teacher and student {what} {name!r} differ in shape: "
                f"{tuple(teacher[name].shape)} and {tuple(student[name].shape)}"
            )
    return [teacher[n] for n in names], [student[n] for n in names]


@torch.no_grad()
def update_ema(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher ← momentum · teacher + (1 − momentum) · student, parameter by parameter.

    Call it after real optimiser steps only (not on gradient-accumulation micro-steps).
    Buffers are copied. Pairs the two models on every call; a training loop keeps a
    ``TeacherEMA`` instead.
    """
    TeacherEMA(teacher, student)(momentum)
