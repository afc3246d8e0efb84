"""UNI and UNI2-h (Mahmood Lab): DINOv2-trained timm ViTs, final-norm class token.

- ``uni``: timm ViT-L/16 (``vit_large_patch16_224``), 224 px, LayerScale 1e-5, 1024-d.
- ``uni2-h``: ViT-H/14 variant: 1536 wide, 24 blocks, 24 heads, SwiGLU (packed, hidden 4096,
  SiLU), 8 register tokens, no class position embedding, LayerScale 1e-5; 1536-d.

Both: resize the shorter side to 224 (bilinear), center crop 224, ImageNet mean/std, as in the
authors' ``get_encoder``. Weights are timm state dicts (``pytorch_model.bin``).
"""

from __future__ import annotations

from typing import Any

from timm.layers import SwiGLUPacked
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from gpfm.backbone.zoo.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from gpfm.backbone.zoo.registry import register_encoder
from gpfm.backbone.zoo.timm_vit import build_timm_vit, convert_timm, timm_cls, timm_tokens

UNI_PREPROCESSING = Preprocessing(224, 224, IMAGENET_MEAN, IMAGENET_STD, "bilinear")


@register_encoder(
    "uni",
    embed_dim=1024,
    preprocessing=UNI_PREPROCESSING,
    embedding=timm_cls,
    tokens=timm_tokens,
    convert=convert_timm,
    hub_id="MahmoodLab/UNI",
    hub_filename="pytorch_model.bin",
    published_params=303_300_000,
    params_source="timm vit_large_patch16_224 without classifier, model card (303.3 M); UNI "
    "adds LayerScale (49 k)",
    description="UNI (Chen et al. 2024): ViT-L/16 DINOv2 on Mass-100K",
)
def uni(**overrides: Any) -> VisionTransformer:
    """UNI: timm ViT-L/16 at 224 px with LayerScale 1e-5."""
    options: dict[str, Any] = {
        "img_size": 224,
        "patch_size": 16,
        "embed_dim": 1024,
        "depth": 24,
        "num_heads": 16,
        "init_values": 1e-5,
    }
    return build_timm_vit(**{**options, **overrides})


@register_encoder(
    "uni2-h",
    embed_dim=1536,
    preprocessing=UNI_PREPROCESSING,
    embedding=timm_cls,
    tokens=timm_tokens,
    convert=convert_timm,
    hub_id="MahmoodLab/UNI2-h",
    hub_filename="pytorch_model.bin",
    published_params=681_000_000,
    params_source="UNI2-h model card (681 M)",
    description="UNI2-h (Mahmood Lab 2025): ViT-H/14, 8 registers, SwiGLU, 200 M+ tiles",
)
def uni2_h(**overrides: Any) -> VisionTransformer:
    """UNI2-h: the authors' ``timm_kwargs`` on timm's ViT."""
    options: dict[str, Any] = {
        "img_size": 224,
        "patch_size": 14,
        "embed_dim": 1536,
        "depth": 24,
        "num_heads": 24,
        "init_values": 1e-5,
        "mlp_ratio": 2.66667 * 2,
        "mlp_layer": SwiGLUPacked,
        "act_layer": nn.SiLU,
        "reg_tokens": 8,
        "no_embed_class": True,
    }
    return build_timm_vit(**{**options, **overrides})
