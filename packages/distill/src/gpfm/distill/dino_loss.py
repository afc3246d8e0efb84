"""DINO self-distillation loss on class tokens, with softmax centring or Sinkhorn-Knopp."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpfm.distill.distributed import all_reduce_sum, world_size


@torch.no_grad()
def sinkhorn_knopp(teacher_logits: Tensor, temp: float, n_iters: int = 3) -> Tensor:
    """Teacher targets (B, K) with equal mass on every prototype (SwAV's Sinkhorn-Knopp).

    Computed in fp32; the batch statistics are summed over all processes, so every process
    balances the prototypes of the global batch.
    """
    q = torch.exp(teacher_logits.float() / temp).t()  # (K, B)
    batch = torch.tensor(q.shape[1] * world_size(), dtype=q.dtype, device=q.device)
    prototypes = q.shape[0]
    q /= all_reduce_sum(q.sum().clone())
    for _ in range(n_iters):
        q /= all_reduce_sum(q.sum(dim=1, keepdim=True))  # each prototype: total mass 1/K
        q /= prototypes
        q /= q.sum(dim=0, keepdim=True)  # each sample: total mass 1/B
        q /= batch
    q *= batch  # each column sums to 1
    return q.t()


class DINOLoss(nn.Module):
    """Cross-entropy between teacher and student prototype distributions of class tokens.

    The student's log-softmax uses ``student_temp`` (0.1); the teacher's targets come from
    ``softmax_center_teacher`` (subtract an EMA centre, temperature ``teacher_temp``) or
    ``sinkhorn_knopp_teacher``. ``forward`` averages over every (student crop, teacher crop) pair
    except a global crop with itself: with 2 global and 8 local crops, 2 x 10 − 2 = 18 pairs.
    """

    center: Tensor

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_logits: Tensor, teacher_temp: float) -> Tensor:
        """softmax((t − centre) / teacher_temp) in fp32."""
        return F.softmax((teacher_logits.float() - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(
        self, teacher_logits: Tensor, teacher_temp: float, n_iters: int = 3
    ) -> Tensor:
        return sinkhorn_knopp(teacher_logits, teacher_temp, n_iters)

    @torch.no_grad()
    def update_center(self, teacher_logits: Tensor) -> None:
        """centre ← m·centre + (1 − m)·mean of the teacher logits over the global batch."""
        batch_sum = all_reduce_sum(teacher_logits.float().sum(dim=0, keepdim=True))
        batch_mean = batch_sum / (teacher_logits.shape[0] * world_size())
        self.center.mul_(self.center_momentum).add_(batch_mean, alpha=1 - self.center_momentum)

    def forward(self, student_logits: list[Tensor], teacher_probs: list[Tensor]) -> Tensor:
        """Mean cross-entropy over crop pairs.

        Args:
            student_logits: one (B, K) tensor per student crop, global crops first, in the
                same order as ``teacher_probs``.
            teacher_probs: one (B, K) target distribution per global crop.
        """
        total = student_logits[0].new_zeros((), dtype=torch.float32)
        pairs = 0
        for s_index, student in enumerate(student_logits):
            log_probs = F.log_softmax(student.float() / self.student_temp, dim=-1)
            for t_index, teacher in enumerate(teacher_probs):
                if s_index == t_index:
                    continue  # a global crop does not predict itself
                total = total - (teacher * log_probs).sum(dim=-1).mean()
                pairs += 1
        return total / max(pairs, 1)
