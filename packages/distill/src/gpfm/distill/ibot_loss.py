"""iBOT masked-image-modelling loss on the patch tokens the student saw masked."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpfm.distill.dino_loss import sinkhorn_knopp
from gpfm.distill.distributed import all_reduce_sum


class iBOTPatchLoss(nn.Module):  # noqa: N801 - the method's name
    """Cross-entropy between teacher and student prototypes of masked patch tokens.

    Each masked patch is weighted 1 / (number of masked patches of its image), and the sum is
    divided by the number of images, so every image counts equally whatever its mask size.
    """

    center: Tensor

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_logits: Tensor, teacher_temp: float) -> Tensor:
        return F.softmax((teacher_logits.float() - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(
        self, teacher_logits: Tensor, teacher_temp: float, n_iters: int = 3
    ) -> Tensor:
        return sinkhorn_knopp(teacher_logits, teacher_temp, n_iters)

    @torch.no_grad()
    def update_center(self, teacher_logits: Tensor) -> None:
        """EMA of the mean teacher logit over every masked patch of the global batch."""
        count = torch.tensor(float(teacher_logits.shape[0]), device=teacher_logits.device)
        batch_sum = all_reduce_sum(teacher_logits.float().sum(dim=0, keepdim=True))
        batch_mean = batch_sum / all_reduce_sum(count).clamp(min=1.0)
        self.center.mul_(self.center_momentum).add_(batch_mean, alpha=1 - self.center_momentum)

    def forward(self, student_logits: Tensor, teacher_probs: Tensor, masks: Tensor) -> Tensor:
        """Loss of the masked patches.

        Args:
            student_logits: (M, K) student prototype logits of the M masked patches, in the
                order of ``masks.nonzero()``.
            teacher_probs: (M, K) teacher targets of the same patches.
            masks: (B, N) bool, which patches of each image were masked.
        """
        log_probs = F.log_softmax(student_logits.float() / self.student_temp, dim=-1)
        per_patch = -(teacher_probs * log_probs).sum(dim=-1)
        per_image = masks.sum(dim=-1, keepdim=True).clamp(min=1).float()
        weights = (1.0 / per_image).expand_as(masks)[masks]
        return (per_patch * weights).sum() / masks.shape[0]
