"""H-optimus-0 (Bioptimus): timm ``vit_giant_patch14_reg4_dinov2`` at 224 px; class token.

ViT-g/14: 1536 wide, 40 blocks, 24 heads, SwiGLU packed (hidden 4096 per gate) with SiLU,
4 registers, no class position embedding, LayerScale 1e-5. Embedding: final-norm class token,
1536-d. Input: 224 px tiles at 0.5 µm/px, normalised with the authors' own mean/std (computed on
their data); tiles of another size are resized (bicubic) and center-cropped to 224.
"""

from __future__ import annotations

from typing import Any

from timm.layers import SwiGLUPacked
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from gpfm.backbone.zoo.preprocessing import Preprocessing
from gpfm.backbone.zoo.registry import register_encoder
from gpfm.backbone.zoo.timm_vit import build_timm_vit, convert_timm, timm_cls, timm_tokens

H_OPTIMUS_MEAN = (0.707223, 0.578729, 0.703617)
H_OPTIMUS_STD = (0.211883, 0.230117, 0.177517)


@register_encoder(
    "h-optimus-0",
    embed_dim=1536,
    preprocessing=Preprocessing(224, 224, H_OPTIMUS_MEAN, H_OPTIMUS_STD, "bicubic"),
    embedding=timm_cls,
    tokens=timm_tokens,
    convert=convert_timm,
    hub_id="bioptimus/H-optimus-0",
    hub_filename="pytorch_model.bin",
    published_params=1_130_000_000,
    params_source="timm port vit_giant_patch14_reg4_224.h-optimus-v0 model card (1.13 B)",
    description="H-optimus-0 (Saillard et al. 2024): ViT-g/14, 4 registers, 500 K slides",
)
def h_optimus_0(**overrides: Any) -> VisionTransformer:
    """H-optimus-0: timm's DINOv2 ViT-g/14 with 4 registers at 224 px."""
    options: dict[str, Any] = {
        "img_size": 224,
        "patch_size": 14,
        "embed_dim": 1536,
        "depth": 40,
        "num_heads": 24,
        "init_values": 1e-5,
        "mlp_ratio": 2.66667 * 2,
        "mlp_layer": SwiGLUPacked,
        "act_layer": nn.SiLU,
        "reg_tokens": 4,
        "no_embed_class": True,
    }
    return build_timm_vit(**{**options, **overrides})
