"""gpfm.distill: GPFM's unified knowledge distillation (DINO + iBOT + KoLeo + frozen experts).

augment = MultiCropAugmentation()                        # 2 global + 8 local crops
batch = collate_multicrop([augment(img) for img in images], BlockMaskingGenerator((16, 16)))
model = DistillationModel(create_vit("vit_large_patch14"), LossConfig(experts=...), experts)
terms = model(batch, teacher_temp=0.04)                   # {"dino", "ibot", "koleo", ..., "total"}
terms["total"].backward(); optimizer.step(); model.update_teacher(momentum)
"""

from gpfm.distill.augment import HEDJitter, MultiCropAugmentation, MultiCropConfig
from gpfm.distill.centering import TeacherCentering, sinkhorn_knopp
from gpfm.distill.data import ImageFileDataset, SyntheticPatchDataset
from gpfm.distill.dino_loss import DINOLoss
from gpfm.distill.ema import update_ema
from gpfm.distill.errors import DistillConfigError, DistillDataError, DistillError
from gpfm.distill.expert_loss import ExpertDistillationLoss, ExpertSpec
from gpfm.distill.experts import FrozenExpert, expert_from_encoder, random_vit_expert
from gpfm.distill.heads import DINOHead, ExpertHead
from gpfm.distill.ibot_loss import iBOTPatchLoss
from gpfm.distill.koleo_loss import KoLeoLoss
from gpfm.distill.masking import BlockMaskingGenerator, collate_multicrop
from gpfm.distill.meta import DistillationModel
from gpfm.distill.optim import apply_schedules, parameter_groups
from gpfm.distill.recipe import PretrainSchedules, gpfm_schedules, scaled_lr
from gpfm.distill.schedules import cosine_schedule, linear_warmup_schedule
from gpfm.distill.unified import LossConfig, UnifiedDistillationLoss

__all__ = [
    "BlockMaskingGenerator",
    "DINOHead",
    "DINOLoss",
    "DistillConfigError",
    "DistillDataError",
    "DistillError",
    "DistillationModel",
    "ExpertDistillationLoss",
    "ExpertHead",
    "ExpertSpec",
    "FrozenExpert",
    "HEDJitter",
    "ImageFileDataset",
    "KoLeoLoss",
    "LossConfig",
    "MultiCropAugmentation",
    "MultiCropConfig",
    "PretrainSchedules",
    "SyntheticPatchDataset",
    "TeacherCentering",
    "UnifiedDistillationLoss",
    "apply_schedules",
    "collate_multicrop",
    "cosine_schedule",
    "expert_from_encoder",
    "gpfm_schedules",
    "iBOTPatchLoss",
    "linear_warmup_schedule",
    "parameter_groups",
    "random_vit_expert",
    "scaled_lr",
    "sinkhorn_knopp",
    "update_ema",
]
