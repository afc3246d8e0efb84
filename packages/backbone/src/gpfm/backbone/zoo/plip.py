"""PLIP (Huang et al. 2023): CLIP ViT-B/32 vision tower + visual projection, 512-d.

The tower is OpenAI CLIP's: patch 32 (no patch bias), a LayerNorm before the blocks
(``pre_layrnorm``), quick-GELU MLPs, LayerNorm eps 1e-5, and the class token after the final
LayerNorm (``post_layernorm``) projected by a 768 x 512 matrix without bias — exactly
``CLIPModel.get_image_features``. Built here as a timm ViT (``pre_norm``) plus the projection.
Input (its ``CLIPImageProcessor``): resize 224 (bicubic), center crop 224, OpenAI CLIP mean/std.
The converter maps the ``transformers`` ``CLIPModel`` names and drops the text tower.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import partial
from typing import Any

from torch import Tensor, nn

from gpfm.backbone.zoo.encoder import Tokens
from gpfm.backbone.zoo.layouts import drop, fuse_qkv, rename, take_prefix, unwrap_tensors
from gpfm.backbone.zoo.preprocessing import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, Preprocessing
from gpfm.backbone.zoo.registry import register_encoder
from gpfm.backbone.zoo.timm_vit import build_timm_vit, timm_tokens


class ClipVision(nn.Module):
    """CLIP's vision tower and projection: ``forward`` = ``get_image_features``."""

    def __init__(
        self,
        image_size: int = 224,
        patch_size: int = 32,
        width: int = 768,
        layers: int = 12,
        heads: int = 12,
        projection_dim: int = 512,
    ) -> None:
        super().__init__()
        self.trunk = build_timm_vit(
            img_size=image_size,
            patch_size=patch_size,
            embed_dim=width,
            depth=layers,
            num_heads=heads,
            pre_norm=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-5),
            act_layer="quick_gelu",
        )
        self.proj = nn.Linear(width, projection_dim, bias=False)

    def forward(self, images: Tensor) -> Tensor:
        """Projected image embedding (B, 512), not normalised (PLIP's image features)."""
        cls: Tensor = self.trunk(images)  # final-norm class token
        return self.proj(cls)

    def forward_tokens(self, images: Tensor) -> Tokens:
        """Final-norm tokens (class and 7 x 7 patches at 224 px), before the projection."""
        return timm_tokens(self.trunk, images)


_LAYER = re.compile(r"^encoder\.layers\.(\d+)\.")
_CLIP_NAMES = (
    ("embeddings.patch_embedding.", "trunk.patch_embed.proj."),
    ("pre_layrnorm.", "trunk.norm_pre."),
    ("post_layernorm.", "trunk.norm."),
    (".self_attn.out_proj.", ".attn.proj."),
    (".layer_norm1.", ".norm1."),
    (".layer_norm2.", ".norm2."),
)


def convert_plip(checkpoint: Mapping[str, Any], model: nn.Module) -> dict[str, Tensor]:
    """``transformers`` ``CLIPModel`` (or ``CLIPVisionModelWithProjection``) -> ``ClipVision``."""
    state = unwrap_tensors(checkpoint)
    vision = take_prefix(state, "vision_model.")
    vision = drop(vision, "embeddings.position_ids")
    depth = 1 + max(int(m.group(1)) for k in vision if (m := _LAYER.match(k)))
    for i in range(depth):
        base = f"encoder.layers.{i}.self_attn"
        fuse_qkv(
            vision,
            f"{base}.q_proj",
            f"{base}.k_proj",
            f"{base}.v_proj",
            f"trunk.blocks.{i}.attn.qkv",
        )
    vision = {_LAYER.sub(r"trunk.blocks.\1.", k): v for k, v in vision.items()}
    converted = rename(vision, _CLIP_NAMES)
    converted["trunk.cls_token"] = converted.pop("embeddings.class_embedding").reshape(1, 1, -1)
    position = converted.pop("embeddings.position_embedding.weight")
    converted["trunk.pos_embed"] = position.unsqueeze(0)
    converted["proj.weight"] = state["visual_projection.weight"]
    return converted


@register_encoder(
    "plip",
    embed_dim=512,
    preprocessing=Preprocessing(224, 224, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, "bicubic"),
    convert=convert_plip,
    hub_id="vinid/plip",
    hub_filename="pytorch_model.bin",
    published_params=87_850_000,
    params_source="OpenCLIP model profile: ViT-B-32 image tower with projection, 87.85 M",
    description="PLIP (Huang et al. 2023): CLIP ViT-B/32 fine-tuned on OpenPath (208 K pairs)",
)
def plip(**overrides: Any) -> ClipVision:
    """PLIP's CLIP ViT-B/32 vision tower with its 512-d projection."""
    return ClipVision(**overrides)
