"""Teacher targets from prototype logits: softmax centring (EMA centre) or Sinkhorn-Knopp.

Shared by the DINO (class tokens) and iBOT (masked patch tokens) losses, each with its own
centre. Everything here runs in fp32 and sums its statistics over all processes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from gpfm.distill.distributed import all_reduce_sum, world_size
from gpfm.distill.precision import fp32_or_wider
from gpfm.distill.rowwise import centered_softmax


@torch.no_grad()
def sinkhorn_knopp(teacher_logits: Tensor, temp: float, n_iters: int = 3) -> Tensor:
    """Teacher targets (B, K) with equal mass on every prototype (SwAV's Sinkhorn-Knopp).

    Computed in fp32; the batch statistics are summed over all processes, so every process
    balances the prototypes of the global batch.
    """
    q = torch.exp(fp32_or_wider(teacher_logits) / temp).t()  # (K, B)
    # Rows over all processes: B x world size for class tokens; for masked patches, whose
    # count differs between processes, the true total (as GPFM's iBOT loss all-reduces it).
    batch = all_reduce_sum(torch.tensor(float(q.shape[1]), dtype=q.dtype, device=q.device))
    prototypes = q.shape[0]
    q /= all_reduce_sum(q.sum().clone())
    for _ in range(n_iters):
        q /= all_reduce_sum(q.sum(dim=1, keepdim=True))  # each prototype: total mass 1/K
        q /= prototypes
        q /= q.sum(dim=0, keepdim=True)  # each sample: total mass 1/B
        q /= batch
    q *= batch  # each column sums to 1
    return q.t()


class TeacherCentering(nn.Module):
    """An EMA centre of teacher logits and the two ways of turning logits into targets."""

    center: Tensor

    def __init__(self, out_dim: int, center_momentum: float = 0.9) -> None:
        super().__init__()
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def softmax_center_teacher(
        self, teacher_logits: Tensor, teacher_temp: float, overwrite: bool = False
    ) -> Tensor:
        """softmax((t − centre) / teacher_temp) in fp32 (a few rows at a time: ``rowwise``),
        written over ``teacher_logits`` if ``overwrite`` and their dtype allows."""
        out = teacher_logits if overwrite else None
        return centered_softmax(teacher_logits, self.center, teacher_temp, out=out)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(
        self, teacher_logits: Tensor, teacher_temp: float, n_iters: int = 3
    ) -> Tensor:
        return sinkhorn_knopp(teacher_logits, teacher_temp, n_iters)

    @torch.no_grad()
    def update_center(self, teacher_logits: Tensor) -> None:
        """centre ← m·centre + (1 − m)·batch mean of ``teacher_logits`` (see ``batch_mean``)."""
        self.move_center(self.batch_mean(fp32_or_wider(teacher_logits)))

    @torch.no_grad()
    def move_center(self, mean: Tensor) -> None:
        """centre ← m·centre + (1 − m)·``mean`` (a ``batch_mean``)."""
        self.center.mul_(self.center_momentum).add_(mean, alpha=1 - self.center_momentum)

    def batch_mean(self, teacher_logits: Tensor) -> Tensor:
        """(1, K) mean of the rows over all processes (equal row counts: the pooled mean)."""
        total = all_reduce_sum(teacher_logits.sum(dim=0, keepdim=True))
        return total / (teacher_logits.shape[0] * world_size())
