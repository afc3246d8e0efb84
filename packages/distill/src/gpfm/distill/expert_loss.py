"""Distillation from frozen expert models: the student's tokens, through a head per expert,
should match the expert's class token and (resized) patch tokens."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpfm.distill.errors import DistillConfigError
from gpfm.distill.heads import ExpertHead
from gpfm.distill.precision import fp32_or_wider


@dataclass(frozen=True)
class ExpertSpec:
    """One expert: its feature size and the weights of its terms (0 turns a term off)."""

    name: str
    dim: int
    cls_weight: float = 1.0
    patch_weight: float = 0.0


def cosine_distance(a: Tensor, b: Tensor) -> Tensor:
    """1 − cos(a, b) over the last dimension, averaged over everything else."""
    return (1.0 - F.cosine_similarity(fp32_or_wider(a), fp32_or_wider(b), dim=-1)).mean()


def resize_token_grid(tokens: Tensor, grid: tuple[int, int]) -> Tensor:
    """(B, h·w, D) square-grid patch tokens -> (B, grid_h·grid_w, D), bicubic."""
    batch, count, dim = tokens.shape
    side = math.isqrt(count)
    if side * side != count:
        raise DistillConfigError(f"expert patch tokens ({count}) do not form a square grid")
    if (side, side) == grid:
        return tokens
    image = fp32_or_wider(tokens.transpose(1, 2).reshape(batch, dim, side, side))
    image = F.interpolate(image, size=grid, mode="bicubic", align_corners=False)
    return image.reshape(batch, dim, grid[0] * grid[1]).transpose(1, 2)


class ExpertDistillationLoss(nn.Module):
    """Terms ``<expert>_cls`` and ``<expert>_patch`` for each expert, each weighted.

    - CLS: 1 − cos(head(student cls), expert cls), or with ``cls_loss="kl"`` the KL divergence
      from softmax(expert / τ) to softmax(head(student) / τ).
    - Patch: 0.9 · (1 − cos) + 0.1 · SmoothL1 between head(student patch tokens) and the
      expert's patch tokens resized (bicubic) to the student's grid. Experts without patch
      tokens (``None``) give the CLS term only.
    """

    def __init__(
        self,
        student_dim: int,
        experts: list[ExpertSpec],
        cls_loss: Literal["cosine", "kl"] = "cosine",
        kl_temperature: float = 1.0,
        bottleneck_dim: int = 256,
    ) -> None:
        super().__init__()
        if cls_loss not in ("cosine", "kl"):
            raise DistillConfigError(f"cls_loss must be 'cosine' or 'kl', got {cls_loss!r}")
        self.experts = {spec.name: spec for spec in experts}
        self.heads = nn.ModuleDict(
            {spec.name: ExpertHead(student_dim, spec.dim, bottleneck_dim) for spec in experts}
        )
        self.cls_loss = cls_loss
        self.kl_temperature = kl_temperature

    def _cls_term(self, predicted: Tensor, target: Tensor) -> Tensor:
        if self.cls_loss == "cosine":
            return cosine_distance(predicted, target)
        t = self.kl_temperature
        return F.kl_div(
            F.log_softmax(fp32_or_wider(predicted) / t, dim=-1),
            F.log_softmax(fp32_or_wider(target) / t, dim=-1),
            reduction="batchmean",
            log_target=True,
        )

    @staticmethod
    def _head_outputs(
        head: nn.Module, cls_tokens: Tensor | None, patch_tokens: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None]:
        """The head on class tokens (B, D) and patch tokens (B, N, D), in one call when both
        are needed (row by row the same values as two calls)."""
        if cls_tokens is None or patch_tokens is None:
            return (
                None if cls_tokens is None else head(cls_tokens),
                None if patch_tokens is None else head(patch_tokens),
            )
        batch, count, dim = patch_tokens.shape
        out = head(torch.cat([cls_tokens, patch_tokens.reshape(batch * count, dim)]))
        rows = cls_tokens.shape[0]
        return out[:rows], out[rows:].reshape(batch, count, -1)

    def forward(
        self,
        student_cls: Tensor,
        student_patch: Tensor,
        grid: tuple[int, int],
        expert_outputs: dict[str, dict[str, Tensor | None]],
    ) -> dict[str, Tensor]:
        """Weighted terms per expert.

        Args:
            student_cls: (B, D) class tokens of the unmasked global crops.
            student_patch: (B, N, D) their patch tokens, N = grid_h · grid_w.
            grid: the student's patch grid (grid_h, grid_w).
            expert_outputs: per expert ``{"cls": (B, D_e), "patch": (B, N_e, D_e) or None}``.
        """
        terms: dict[str, Tensor] = {}
        for name, spec in self.experts.items():
            if name not in expert_outputs:
                raise KeyError(f"no output for expert {name!r}")
            outputs = expert_outputs[name]
            cls_target = outputs.get("cls") if spec.cls_weight else None
            patch = outputs.get("patch") if spec.patch_weight else None
            predicted_cls, predicted_patch = self._head_outputs(
                self.heads[name],
                student_cls if cls_target is not None else None,
                student_patch if patch is not None else None,
            )
            if cls_target is not None:
                assert predicted_cls is not None
                terms[f"{name}_cls"] = spec.cls_weight * self._cls_term(predicted_cls, cls_target)
            if patch is not None:
                target = resize_token_grid(patch, grid)
                predicted = predicted_patch
                assert predicted is not None
                value = 0.9 * cosine_distance(predicted, target) + 0.1 * F.smooth_l1_loss(
                    fp32_or_wider(predicted), fp32_or_wider(target)
                )
                terms[f"{name}_patch"] = spec.patch_weight * value
        return terms
