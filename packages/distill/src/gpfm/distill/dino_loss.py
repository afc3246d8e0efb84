"""DINO self-distillation loss on class tokens, with softmax centring or Sinkhorn-Knopp."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from gpfm.distill.centering import TeacherCentering
from gpfm.distill.precision import fp32_or_wider


class DINOLoss(TeacherCentering):
    """Cross-entropy between teacher and student prototype distributions of class tokens.

    The student's log-softmax uses ``student_temp`` (0.1); the teacher's targets come from
    ``softmax_center_teacher`` (subtract an EMA centre, temperature ``teacher_temp``) or
    ``sinkhorn_knopp_teacher`` (see ``TeacherCentering``). ``forward`` sums the
    cross-entropy over every (student crop, teacher crop) pair except a global crop with itself
    and divides by the reference's count of loss terms, ``n_g (n_g − 1) + max(n_g n_l, 1)``
    (GPFM ``ssl_meta_arch.py:198-199``): with 2 global and 8 local crops, the mean over 18
    pairs; without local crops the reference still counts one local term (2 + 1), and so do we.
    """

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__(out_dim, center_momentum)
        self.student_temp = student_temp

    def forward(self, student_logits: list[Tensor], teacher_probs: list[Tensor]) -> Tensor:
        """Mean cross-entropy over crop pairs.

        Args:
            student_logits: one (B, K) tensor per student crop, global crops first, in the
                same order as ``teacher_probs``.
            teacher_probs: one (B, K) target distribution per global crop.
        """
        total = student_logits[0].new_zeros((), dtype=torch.float32)
        for s_index, student in enumerate(student_logits):
            log_probs = F.log_softmax(fp32_or_wider(student) / self.student_temp, dim=-1)
            for t_index, teacher in enumerate(teacher_probs):
                if s_index == t_index:
                    continue  # a global crop does not predict itself
                total = total - (teacher * log_probs).sum(dim=-1).mean()
        n_global = len(teacher_probs)
        n_local = len(student_logits) - n_global
        return total / (n_global * (n_global - 1) + max(n_global * n_local, 1))
