"""timm ``VisionTransformer`` networks as zoo encoders: build one, pool it, read its checkpoint.

UNI, UNI2-h, Virchow2, Prov-GigaPath and H-optimus-0 are published as timm ViTs; their weights
use timm's parameter names, so they load into ``timm.models.VisionTransformer`` as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from gpfm.backbone.zoo.encoder import Tokens
from gpfm.backbone.zoo.layouts import drop, unwrap_tensors


def build_timm_vit(**kwargs: Any) -> VisionTransformer:
    """A timm ViT without classifier (``num_classes=0``) that accepts any input size."""
    options: dict[str, Any] = {"num_classes": 0, "dynamic_img_size": True}
    return VisionTransformer(**{**options, **kwargs})


def timm_tokens(model: nn.Module, batch: Tensor) -> Tokens:
    """Final-norm tokens of a timm ViT, split into class, registers and patches."""
    network: Any = model
    tokens: Tensor = network.forward_features(batch)
    prefix = int(getattr(model, "num_prefix_tokens", 1))
    return {"cls": tokens[:, 0], "registers": tokens[:, 1:prefix], "patch": tokens[:, prefix:]}


def timm_cls(model: nn.Module, batch: Tensor) -> Tensor:
    """Embedding: the final-norm class token."""
    return timm_tokens(model, batch)["cls"]


def timm_cls_mean(model: nn.Module, batch: Tensor) -> Tensor:
    """Embedding: class token concatenated with the mean of the patch tokens (no registers)."""
    tokens = timm_tokens(model, batch)
    return torch.cat([tokens["cls"], tokens["patch"].mean(dim=1)], dim=-1)


def convert_timm(checkpoint: Mapping[str, Any], model: nn.Module) -> dict[str, Tensor]:
    """A timm checkpoint: unwrap, drop the classifier ``head`` (the encoders have none)."""
    return drop(unwrap_tensors(checkpoint), "head.")
