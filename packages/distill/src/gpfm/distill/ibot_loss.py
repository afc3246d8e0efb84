"""iBOT masked-image-modelling loss on the patch tokens the student saw masked."""

from __future__ import annotations

from torch import Tensor

from gpfm.distill.centering import TeacherCentering
from gpfm.distill.distributed import all_reduce_sum, world_size
from gpfm.distill.rowwise import soft_cross_entropy


class iBOTPatchLoss(TeacherCentering):  # noqa: N801 - the method's name
    """Cross-entropy between teacher and student prototypes of masked patch tokens.

    Each masked patch is weighted 1 / (number of masked patches of its image), and the sum is
    divided by the number of images, so every image counts equally whatever its mask size.
    """

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__(out_dim, center_momentum)
        self.student_temp = student_temp

    def batch_mean(self, teacher_logits: Tensor) -> Tensor:
        """Each process's mean over its masked patches, averaged over processes.

        Processes mask different numbers of patches; the reference averages their means
        rather than pooling the patches (GPFM ``loss/ibot_patch_loss.py:133-147``).
        """
        if teacher_logits.shape[0] == 0:  # nothing masked here: no evidence, not NaN
            mean = teacher_logits.new_zeros(1, teacher_logits.shape[1])
        else:
            mean = teacher_logits.mean(dim=0, keepdim=True)
        return all_reduce_sum(mean) / world_size()

    def forward(self, student_logits: Tensor, teacher_probs: Tensor, masks: Tensor) -> Tensor:
        """Loss of the masked patches.

        Args:
            student_logits: (M, K) student prototype logits of the M masked patches, in the
                order of ``masks.nonzero()``.
            teacher_probs: (M, K) teacher targets of the same patches.
            masks: (B, N) bool, which patches of each image were masked.
        """
        # −Σ_k t_k log_softmax(s / temp)_k per patch, without (M, K) intermediates: ``rowwise``.
        per_patch = soft_cross_entropy(student_logits, teacher_probs, self.student_temp)
        per_image = masks.sum(dim=-1, keepdim=True).clamp(min=1).to(per_patch.dtype)
        weights = (1.0 / per_image).expand_as(masks)[masks]
        return (per_patch * weights).sum() / masks.shape[0]
