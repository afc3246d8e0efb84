"""CTransPath and CHIEF's tile encoder: Swin-T with a convolutional stem, 768-d.

Swin-T (``swin_tiny_patch4_window7_224``: embed 96, depths 2-2-6-2, heads 3-6-12-24, window 7)
whose patch embedding is replaced by a stem of two 3 x 3 stride-2 convolutions (3 -> 12 -> 24
channels, each with BatchNorm and ReLU) and a 1 x 1 convolution to 96 channels, then LayerNorm.
Embedding: average of the final-norm tokens, 768-d. Input 224 x 224 (the authors resize the
tile to 224, bilinear) with ImageNet mean/std; the center crop only matters for non-square
tiles.

Both checkpoints are ``{"model": state_dict}`` from timm 0.5.4, which keeps patch merging at
the *end* of a stage and saves the attention-index and mask buffers; the converter moves each
``layers.<i>.downsample`` to stage ``i + 1`` (timm >= 0.9) and drops the buffers (recomputed).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from timm.models.swin_transformer import SwinTransformer
from torch import Tensor, nn

from gpfm.backbone.zoo.encoder import Tokens
from gpfm.backbone.zoo.layouts import drop, unwrap_tensors
from gpfm.backbone.zoo.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from gpfm.backbone.zoo.registry import register_encoder


class ConvStem(nn.Module):
    """CTransPath's patch embedding: two strided 3 x 3 convolutions and a 1 x 1, to NHWC tokens."""

    def __init__(
        self,
        img_size: int | tuple[int, int] = 224,
        patch_size: int | tuple[int, int] = 4,
        in_chans: int = 3,
        embed_dim: int = 96,
        norm_layer: type[nn.Module] | None = None,
        **_: Any,  # strict_img_size, output_fmt, device, dtype from timm's Swin
    ) -> None:
        super().__init__()
        size = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        patch = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
        if patch != (4, 4) or embed_dim % 8:
            raise ValueError("the convolutional stem needs patch size 4 and embed_dim % 8 == 0")
        self.img_size = size
        self.patch_size = patch
        self.grid_size = (size[0] // 4, size[1] // 4)
        self.num_patches = self.grid_size[0] * self.grid_size[1]
        width = embed_dim // 8
        self.proj = nn.Sequential(
            nn.Conv2d(in_chans, width, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, 2 * width, kernel_size=3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * width, embed_dim, kernel_size=1),
        )
        self.norm = norm_layer(embed_dim) if norm_layer is not None else nn.Identity()

    def forward(self, images: Tensor) -> Tensor:
        if tuple(images.shape[-2:]) != self.img_size:
            raise ValueError(
                f"this Swin takes {self.img_size[0]} x {self.img_size[1]} px input, got "
                f"{images.shape[-2]} x {images.shape[-1]}; use the encoder's transform"
            )
        return self.norm(self.proj(images).permute(0, 2, 3, 1))  # (B, H/4, W/4, C)


class CTransPath(SwinTransformer):
    """Swin-T with the convolutional stem; ``forward`` gives the pooled 768-d embedding."""

    def __init__(self, **overrides: Any) -> None:
        options: dict[str, Any] = {
            "img_size": 224,
            "patch_size": 4,
            "embed_dim": 96,
            "depths": (2, 2, 6, 2),
            "num_heads": (3, 6, 12, 24),
            "window_size": 7,
            "num_classes": 0,
            "embed_layer": ConvStem,
        }
        super().__init__(**{**options, **overrides})

    def forward_tokens(self, images: Tensor) -> Tokens:
        """Final-norm tokens of the last stage (7 x 7 at 224 px); ``cls`` is their mean."""
        tokens = self.forward_features(images).flatten(1, 2)  # (B, N, C)
        empty = tokens[:, :0]
        return {"cls": tokens.mean(dim=1), "patch": tokens, "registers": empty}


_OLD_DOWNSAMPLE = re.compile(r"^layers\.(\d+)\.downsample\.")


def convert_ctranspath(checkpoint: Mapping[str, Any], model: nn.Module) -> dict[str, Tensor]:
    """timm 0.5.4 Swin (``{"model": ...}``) -> timm >= 0.9 Swin names, buffers dropped."""
    state = unwrap_tensors(checkpoint)
    old_layout = "layers.0.downsample.reduction.weight" in state
    converted: dict[str, Tensor] = {}
    for key, value in drop(state, "head.").items():
        if key.endswith(("relative_position_index", "attn_mask")):
            continue
        if old_layout:
            key = _OLD_DOWNSAMPLE.sub(lambda m: f"layers.{int(m.group(1)) + 1}.downsample.", key)
        converted[key] = value
    return converted


_SOURCE = "CTransPath paper (Wang et al. 2022, Medical Image Analysis): Swin-T, 27.5 M"


@register_encoder(
    "ctranspath",
    embed_dim=768,
    preprocessing=Preprocessing(224, 224, IMAGENET_MEAN, IMAGENET_STD, "bilinear"),
    convert=convert_ctranspath,
    published_params=27_500_000,
    params_source=_SOURCE,
    weights_hint="ctranspath.pth, linked from github.com/Xiyue-Wang/TransPath",
    description="CTransPath (Wang et al. 2022): Swin-T + conv stem, SRCL on 15 M tiles",
)
def ctranspath(**overrides: Any) -> CTransPath:
    """CTransPath's Swin-T with the convolutional stem."""
    return CTransPath(**overrides)


@register_encoder(
    "chief",
    embed_dim=768,
    preprocessing=Preprocessing(224, 224, IMAGENET_MEAN, IMAGENET_STD, "bilinear"),
    convert=convert_ctranspath,
    published_params=27_500_000,
    params_source=_SOURCE + " (CHIEF retrains the same network)",
    weights_hint="CHIEF_CTransPath.pth, linked from github.com/hms-dbmi/CHIEF",
    description="CHIEF's tile encoder (Wang et al. 2024): CTransPath retrained on 15 M tiles",
)
def chief(**overrides: Any) -> CTransPath:
    """CHIEF's tile encoder: the CTransPath network with CHIEF's weights."""
    return CTransPath(**overrides)
