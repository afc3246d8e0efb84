"""Prov-GigaPath tile encoder: timm ``vit_giant_patch14_dinov2`` with 16 px patches; class token.

The published ``config.json`` overrides timm's DINOv2 ViT-g (1536 wide, 40 blocks, 24 heads,
SwiGLU packed with SiLU, LayerScale 1e-5) with ``patch_size`` 16, ``img_size`` 224 and
``mlp_ratio`` 5.33334 (hidden 4096 per gate). Embedding: final-norm class token, 1536-d. Input
(the authors' demo): resize 256 (bicubic), center crop 224, ImageNet mean/std.
"""

from __future__ import annotations

from typing import Any

from timm.layers import SwiGLUPacked
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from gpfm.backbone.zoo.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from gpfm.backbone.zoo.registry import register_encoder
from gpfm.backbone.zoo.timm_vit import build_timm_vit, convert_timm, timm_cls, timm_tokens


@register_encoder(
    "prov-gigapath",
    embed_dim=1536,
    preprocessing=Preprocessing(256, 224, IMAGENET_MEAN, IMAGENET_STD, "bicubic"),
    embedding=timm_cls,
    tokens=timm_tokens,
    convert=convert_timm,
    hub_id="prov-gigapath/prov-gigapath",
    hub_filename="pytorch_model.bin",
    published_params=1_134_953_984,
    params_source="Prov-GigaPath demo 3_load_tile_encoder.py output ('param # 1134953984')",
    description="Prov-GigaPath tile encoder (Xu et al. 2024): ViT-g/16, 1.3 B tiles",
)
def prov_gigapath(**overrides: Any) -> VisionTransformer:
    """Prov-GigaPath's tile encoder."""
    options: dict[str, Any] = {
        "img_size": 224,
        "patch_size": 16,
        "embed_dim": 1536,
        "depth": 40,
        "num_heads": 24,
        "init_values": 1e-5,
        "mlp_ratio": 5.33334,
        "mlp_layer": SwiGLUPacked,
        "act_layer": nn.SiLU,
    }
    return build_timm_vit(**{**options, **overrides})
