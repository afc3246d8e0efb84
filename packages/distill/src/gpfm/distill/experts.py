"""Frozen expert models for distillation: eval mode, no gradients, their own preprocessing."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpfm.distill.augment import IMAGENET_MEAN, IMAGENET_STD

ExpertOutput = dict[str, Tensor | None]


def _as_tokens(output: Any) -> ExpertOutput:
    if isinstance(output, Tensor):
        return {"cls": output, "patch": None}
    if isinstance(output, Mapping):
        return {"cls": output["cls"], "patch": output.get("patch")}
    raise TypeError(f"an expert must return a tensor or a dict with 'cls', got {type(output)}")


class FrozenExpert(nn.Module):
    """A frozen model that maps the student's global crops to its own tokens.

    The crops arrive normalised with ``source_mean`` / ``source_std`` (ImageNet's); they are
    re-normalised to the expert's ``mean`` / ``std`` and resized to its ``input_size`` if it
    needs a fixed one. ``forward`` runs without gradients, in eval mode whatever ``train()``
    says, under bf16 autocast on CUDA, and returns ``{"cls": (B, D_e), "patch": (B, N_e, D_e)
    or None}``.

    Args:
        model: the expert network.
        dim: its embedding size.
        forward: how to get tokens from it (default: ``model(x)``); may return a (B, D_e)
            tensor (CLS only) or a dict with ``cls`` and optionally ``patch``.
    """

    scale: Tensor
    shift: Tensor

    def __init__(
        self,
        model: nn.Module,
        dim: int,
        forward: Callable[[Tensor], Any] | None = None,
        input_size: int | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        source_mean: Sequence[float] = IMAGENET_MEAN,
        source_std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        self.model = model.eval().requires_grad_(False)
        self.dim = dim
        self.token_fn = forward  # a plain attribute: not a second registration of ``model``
        self.input_size = input_size
        # x_expert = (x_source · s_std + s_mean − mean) / std = x_source · scale + shift
        scale = torch.tensor(source_std) / torch.tensor(std)
        shift = (torch.tensor(source_mean) - torch.tensor(mean)) / torch.tensor(std)
        self.register_buffer("scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", shift.view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> FrozenExpert:
        super().train(mode)
        self.model.eval()  # experts stay in eval mode (dropout, batch norm statistics)
        return self

    @torch.no_grad()
    def forward(self, images: Tensor) -> ExpertOutput:
        x = images * self.scale + self.shift
        if self.input_size and x.shape[-1] != self.input_size:
            x = F.interpolate(
                x, size=(self.input_size, self.input_size), mode="bicubic", align_corners=False
            )
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.is_cuda):
            tokens = _as_tokens(self.token_fn(x) if self.token_fn else self.model(x))
        return {k: (v.float() if v is not None else None) for k, v in tokens.items()}
