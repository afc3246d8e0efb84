"""Virchow2 (Paige): timm ViT-H/14 with 4 registers and SwiGLU; class + mean patch token.

Architecture (the published ``config.json``): ``vit_huge_patch14_224`` — 1280 wide, 32 blocks,
16 heads — with ``mlp_ratio`` 5.3375, ``SwiGLUPacked`` and SiLU, 4 register tokens, LayerScale
1e-5. The recommended embedding concatenates the class token with the mean of the 256 patch
tokens (registers excluded): 2560-d. Input: resize 224 (bicubic), center crop 224, ImageNet
mean/std (the model's timm ``pretrained_cfg``, crop_pct 1.0).
"""

from __future__ import annotations

from typing import Any

from timm.layers import SwiGLUPacked
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from gpfm.backbone.zoo.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from gpfm.backbone.zoo.registry import register_encoder
from gpfm.backbone.zoo.timm_vit import build_timm_vit, convert_timm, timm_cls_mean, timm_tokens


@register_encoder(
    "virchow2",
    embed_dim=2560,
    preprocessing=Preprocessing(224, 224, IMAGENET_MEAN, IMAGENET_STD, "bicubic"),
    embedding=timm_cls_mean,
    tokens=timm_tokens,
    convert=convert_timm,
    hub_id="paige-ai/Virchow2",
    hub_filename="pytorch_model.bin",
    published_params=632_000_000,
    params_source="Virchow2 paper (Zimmermann et al. 2024, arXiv 2408.00738): ViT-H, 632 M",
    description="Virchow2 (Zimmermann et al. 2024): ViT-H/14, 4 registers, 3.1 M slides",
)
def virchow2(**overrides: Any) -> VisionTransformer:
    """Virchow2: the published timm configuration."""
    options: dict[str, Any] = {
        "img_size": 224,
        "patch_size": 14,
        "embed_dim": 1280,
        "depth": 32,
        "num_heads": 16,
        "init_values": 1e-5,
        "mlp_ratio": 5.3375,
        "mlp_layer": SwiGLUPacked,
        "act_layer": nn.SiLU,
        "reg_tokens": 4,
    }
    return build_timm_vit(**{**options, **overrides})
