"""The unified objective: L = w_dino·DINO + w_ibot·iBOT + w_koleo·KoLeo + Σ expert terms.

Every term is GPFM's ``SSLMetaArch.forward_backward`` (birkhoffkiki/GPFM ``pretrain/dinov2/
train/ssl_meta_arch.py:183-455``) to float precision; ``tests/test_golden.py`` holds the proof.
The logged terms are the weighted ones that are summed into ``total``: ``koleo`` is
0.1 x (KoLeo of global crop 1 + KoLeo of global crop 2).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from gpfm.distill.dino_loss import DINOLoss
from gpfm.distill.errors import DistillConfigError
from gpfm.distill.expert_loss import ExpertDistillationLoss, ExpertSpec
from gpfm.distill.ibot_loss import iBOTPatchLoss
from gpfm.distill.koleo_loss import KoLeoLoss
from gpfm.distill.precision import fp32_or_wider


@dataclass(frozen=True)
class LossConfig:
    """Every setting of the objective and its heads; the defaults are GPFM's.

    From birkhoffkiki/GPFM ``pretrain/dinov2/configs/ssl_default_config.yaml`` (``dino``,
    ``ibot``) and the loss modules' defaults (``student_temp`` 0.1, centre momentum 0.9,
    3 Sinkhorn-Knopp iterations).

    Attributes:
        dino_weight, ibot_weight, koleo_weight: weights of the three self-distillation terms
            (KoLeo's weight applies to its sum over the two global crops, as the reference's).
        prototypes: DINO/iBOT head outputs K.
        head_hidden_dim, head_bottleneck_dim, head_layers: the DINO/iBOT head's MLP.
        separate_ibot_head: a second head for iBOT (GPFM shares one).
        student_temp: the student's softmax temperature.
        center_momentum: EMA momentum of the teacher centres (softmax centring).
        centering: ``"softmax"`` (EMA centre) or ``"sinkhorn"`` (Sinkhorn-Knopp).
        sinkhorn_iters: Sinkhorn-Knopp iterations.
        mask_ratio, mask_probability: iBOT masking: the share of global crops masked and the
            range of their masked-patch ratios.
        experts: the frozen experts' specs (names, sizes, weights of their terms).
        expert_cls_loss: ``"cosine"`` (GPFM's ``radio``) or ``"kl"`` (its ``KLDIV``).
        expert_kl_temperature: τ of the KL variant.
        expert_bottleneck_dim: width of the expert heads' bottleneck (256).
    """

    dino_weight: float = 1.0
    ibot_weight: float = 1.0
    koleo_weight: float = 0.1
    prototypes: int = 65_536
    head_hidden_dim: int = 2048
    head_bottleneck_dim: int = 256
    head_layers: int = 3
    separate_ibot_head: bool = False
    student_temp: float = 0.1
    center_momentum: float = 0.9
    centering: Literal["softmax", "sinkhorn"] = "softmax"
    sinkhorn_iters: int = 3
    mask_ratio: tuple[float, float] = (0.1, 0.5)
    mask_probability: float = 0.5
    experts: tuple[ExpertSpec, ...] = field(default_factory=tuple)
    expert_cls_loss: Literal["cosine", "kl"] = "cosine"
    expert_kl_temperature: float = 1.0
    expert_bottleneck_dim: int = 256

    def __post_init__(self) -> None:
        if self.centering not in ("softmax", "sinkhorn"):
            raise DistillConfigError(
                f"centering must be 'softmax' or 'sinkhorn', got {self.centering!r}"
            )
        if self.expert_cls_loss not in ("cosine", "kl"):
            raise DistillConfigError(
                f"expert_cls_loss must be 'cosine' or 'kl', got {self.expert_cls_loss!r}"
            )
        if self.prototypes < 1 or self.student_temp <= 0 or self.sinkhorn_iters < 0:
            raise DistillConfigError(
                "prototypes must be >= 1, student_temp > 0 and sinkhorn_iters >= 0; got "
                f"{self.prototypes}, {self.student_temp}, {self.sinkhorn_iters}"
            )
        if not 0 <= self.center_momentum <= 1 or not 0 <= self.mask_probability <= 1:
            raise DistillConfigError(
                "center_momentum and mask_probability must lie in [0, 1]; got "
                f"{self.center_momentum}, {self.mask_probability}"
            )


class UnifiedDistillationLoss(nn.Module):
    """Combines the DINO, iBOT, KoLeo and expert losses and returns every named term.

    It owns the centring state of DINO and iBOT and the expert heads (trainable, part of the
    student side). ``teacher_targets`` turns teacher logits into targets (and updates the
    centres); ``forward`` computes the terms and ``total``.
    """

    def __init__(self, student_dim: int, config: LossConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or LossConfig()
        self.dino = DINOLoss(config.prototypes, config.student_temp, config.center_momentum)
        self.ibot = iBOTPatchLoss(config.prototypes, config.student_temp, config.center_momentum)
        self.koleo = KoLeoLoss()
        self.experts = ExpertDistillationLoss(
            student_dim,
            list(config.experts),
            cls_loss=config.expert_cls_loss,
            kl_temperature=config.expert_kl_temperature,
            bottleneck_dim=config.expert_bottleneck_dim,
        )

    @torch.no_grad()
    def teacher_targets(
        self,
        cls_logits: Tensor,
        masked_patch_logits: Tensor,
        teacher_temp: float,
        overwrite_patch_logits: bool = False,
    ) -> tuple[Tensor, Tensor]:
        """Targets of the teacher's class tokens (B, K) and masked patch tokens (M, K).

        With ``overwrite_patch_logits`` (softmax centring), the patch targets are written over
        ``masked_patch_logits`` when their dtype allows (one tensor of that size fewer).
        """
        if self.config.centering == "sinkhorn":
            iters = self.config.sinkhorn_iters
            cls = self.dino.sinkhorn_knopp_teacher(cls_logits, teacher_temp, iters)
            patch = self.ibot.sinkhorn_knopp_teacher(masked_patch_logits, teacher_temp, iters)
        else:
            # The centres move after the targets are made with them; the patch logits' mean
            # is taken first, in case the targets are written over them.
            patch_mean = self.ibot.batch_mean(fp32_or_wider(masked_patch_logits))
            cls = self.dino.softmax_center_teacher(cls_logits, teacher_temp)
            patch = self.ibot.softmax_center_teacher(
                masked_patch_logits, teacher_temp, overwrite=overwrite_patch_logits
            )
            self.dino.update_center(cls_logits)
            self.ibot.move_center(patch_mean)
        return cls, patch

    def forward(
        self,
        *,
        student_cls_logits: list[Tensor],
        teacher_cls_targets: list[Tensor],
        student_patch_logits: Tensor,
        teacher_patch_targets: Tensor,
        masks: Tensor,
        student_global_cls: list[Tensor],
        student_global_patch: Tensor | None = None,
        grid: tuple[int, int] | None = None,
        expert_outputs: dict[str, dict[str, Tensor | None]] | None = None,
    ) -> dict[str, Tensor]:
        """Every weighted term and their sum ``total``.

        Args:
            student_cls_logits: (B, K) per crop, global crops first.
            teacher_cls_targets: (B, K) per global crop.
            student_patch_logits: (M, K) student logits of the masked patches.
            teacher_patch_targets: (M, K) teacher targets of the same patches.
            masks: (n_global·B, N) bool.
            student_global_cls: backbone class tokens (B, D) per global crop (for KoLeo).
            student_global_patch: (n_global·B, N, D) patch tokens, for the experts.
            grid: the student's patch grid, for the experts.
            expert_outputs: per expert ``{"cls", "patch"}`` on the global crops.
        """
        config = self.config
        terms: dict[str, Tensor] = {}
        if config.dino_weight:
            terms["dino"] = config.dino_weight * self.dino(student_cls_logits, teacher_cls_targets)
        if config.ibot_weight:
            value = self.ibot(student_patch_logits, teacher_patch_targets, masks)
            terms["ibot"] = config.ibot_weight * value
        if config.koleo_weight:
            # Summed over the global crops, as the reference does (ssl_meta_arch.py:419-423).
            koleo = torch.stack([self.koleo(cls) for cls in student_global_cls]).sum()
            terms["koleo"] = config.koleo_weight * koleo
        if config.experts:
            if expert_outputs is None or student_global_patch is None or grid is None:
                raise DistillConfigError(
                    "expert terms need expert_outputs, student_global_patch and grid"
                )
            student_cls = torch.cat(student_global_cls)
            terms.update(self.experts(student_cls, student_global_patch, grid, expert_outputs))
        terms["total"] = torch.stack(list(terms.values())).sum()
        return terms
