"""The unified objective: L = w_dino·DINO + w_ibot·iBOT + w_koleo·KoLeo + Σ expert terms."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from gpfm.distill.dino_loss import DINOLoss
from gpfm.distill.expert_loss import ExpertDistillationLoss, ExpertSpec
from gpfm.distill.ibot_loss import iBOTPatchLoss
from gpfm.distill.koleo_loss import KoLeoLoss


@dataclass(frozen=True)
class LossConfig:
    """Weights and settings of the objective (GPFM: DINO 1, iBOT 1, KoLeo 0.1)."""

    dino_weight: float = 1.0
    ibot_weight: float = 1.0
    koleo_weight: float = 0.1
    prototypes: int = 65_536
    student_temp: float = 0.1
    center_momentum: float = 0.9
    centering: Literal["softmax", "sinkhorn"] = "softmax"
    sinkhorn_iters: int = 3
    experts: tuple[ExpertSpec, ...] = field(default_factory=tuple)
    expert_cls_loss: Literal["cosine", "kl"] = "cosine"


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
            student_dim, list(config.experts), cls_loss=config.expert_cls_loss
        )

    @torch.no_grad()
    def teacher_targets(
        self, cls_logits: Tensor, masked_patch_logits: Tensor, teacher_temp: float
    ) -> tuple[Tensor, Tensor]:
        """Targets of the teacher's class tokens (B, K) and masked patch tokens (M, K)."""
        if self.config.centering == "sinkhorn":
            iters = self.config.sinkhorn_iters
            cls = self.dino.sinkhorn_knopp_teacher(cls_logits, teacher_temp, iters)
            patch = self.ibot.sinkhorn_knopp_teacher(masked_patch_logits, teacher_temp, iters)
        else:
            cls = self.dino.softmax_center_teacher(cls_logits, teacher_temp)
            patch = self.ibot.softmax_center_teacher(masked_patch_logits, teacher_temp)
            self.dino.update_center(cls_logits)
            self.ibot.update_center(masked_patch_logits)
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
            student_patch_logits / teacher_patch_targets: (M, K) for the masked patches.
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
            koleo = torch.stack([self.koleo(cls) for cls in student_global_cls]).mean()
            terms["koleo"] = config.koleo_weight * koleo
        if config.experts:
            if expert_outputs is None or student_global_patch is None or grid is None:
                raise ValueError("expert terms need expert_outputs, student_global_patch and grid")
            student_cls = torch.cat(student_global_cls)
            terms.update(self.experts(student_cls, student_global_patch, grid, expert_outputs))
        terms["total"] = torch.stack(list(terms.values())).sum()
        return terms
