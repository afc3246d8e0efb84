"""CONCH (Mahmood Lab): the visual tower of its CoCa model, ViT-B/16 at 448 px, 512-d embedding.

The tower (``conch_ViT-B-16``) is a timm ViT-B/16 trunk (448 px, no classifier) followed by two
attentional poolers: a contrastive one (1 learned query, d_model 512, 8 heads, keys and values
from the 768-d tokens) with a LayerNorm and a 512 x 512 projection, and a captioning one (256
queries, 768-d) used by the text decoder. The embedding the authors recommend for downstream
tasks is the contrastive pooler's normalised output *before* the projection
(``encode_image(proj_contrast=False, normalize=False)``); ``encode_image`` gives the projected,
L2-normalised one for image-text retrieval. Input: resize 448 (bicubic), center crop 448, OpenAI
CLIP mean/std.

The published checkpoint holds the whole CoCa model; the converter keeps the ``visual.`` part.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpfm.backbone.zoo.encoder import Tokens
from gpfm.backbone.zoo.layouts import take_prefix, unwrap_tensors
from gpfm.backbone.zoo.preprocessing import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, Preprocessing
from gpfm.backbone.zoo.registry import register_encoder
from gpfm.backbone.zoo.timm_vit import build_timm_vit, timm_tokens


class AttentionalPooler(nn.Module):
    """Learned queries attending to the tokens (CoCa): (B, N, context_dim) -> (B, Q, d_model)."""

    def __init__(
        self, d_model: int, context_dim: int, n_head: int = 8, n_queries: int = 256
    ) -> None:
        super().__init__()
        self.query = nn.Parameter(torch.randn(n_queries, d_model))
        self.attn = nn.MultiheadAttention(d_model, n_head, kdim=context_dim, vdim=context_dim)
        self.ln_q = nn.LayerNorm(d_model)
        self.ln_k = nn.LayerNorm(context_dim)

    def forward(self, tokens: Tensor) -> Tensor:
        keys = self.ln_k(tokens).transpose(0, 1)  # (N, B, C): MultiheadAttention is sequence-first
        query = self.ln_q(self.query).unsqueeze(1).expand(-1, tokens.shape[0], -1)
        pooled, _ = self.attn(query, keys, keys, need_weights=False)
        return pooled.transpose(0, 1)


class ConchVisual(nn.Module):
    """CONCH's visual tower, with the parameter names of the published ``visual.`` keys."""

    def __init__(
        self,
        image_size: int = 448,
        patch_size: int = 16,
        width: int = 768,
        layers: int = 12,
        heads: int = 12,
        embed_dim: int = 512,
        embed_dim_caption: int = 768,
        pooler_heads: int = 8,
        caption_queries: int = 256,
    ) -> None:
        super().__init__()
        self.trunk = build_timm_vit(
            img_size=image_size,
            patch_size=patch_size,
            embed_dim=width,
            depth=layers,
            num_heads=heads,
        )
        self.attn_pool_contrast = AttentionalPooler(embed_dim, width, pooler_heads, n_queries=1)
        self.ln_contrast = nn.LayerNorm(embed_dim)
        self.proj_contrast = nn.Parameter(width**-0.5 * torch.randn(embed_dim, embed_dim))
        self.attn_pool_caption = AttentionalPooler(
            embed_dim_caption, width, pooler_heads, n_queries=caption_queries
        )
        self.ln_caption = nn.LayerNorm(embed_dim_caption)

    def forward(self, images: Tensor) -> Tensor:
        """The recommended embedding: pooled, normalised, not projected (B, 512)."""
        return self.encode_image(images, proj_contrast=False, normalize=False)

    def encode_image(
        self, images: Tensor, proj_contrast: bool = True, normalize: bool = True
    ) -> Tensor:
        """CONCH's ``encode_image``: projected and L2-normalised by default (retrieval)."""
        tokens = self.trunk.forward_features(images)
        pooled = self.ln_contrast(self.attn_pool_contrast(tokens)[:, 0])
        if proj_contrast:
            pooled = pooled @ self.proj_contrast
        return F.normalize(pooled, dim=-1) if normalize else pooled

    def forward_tokens(self, images: Tensor) -> Tokens:
        """The trunk's final-norm tokens (class and 28 x 28 patches at 448 px)."""
        return timm_tokens(self.trunk, images)


def convert_conch(checkpoint: Mapping[str, Any], model: nn.Module) -> dict[str, Tensor]:
    """CONCH's CoCa checkpoint -> ``ConchVisual``: keep ``visual.*`` (drop the text towers)."""
    state = unwrap_tensors(checkpoint)
    if any(k.startswith("visual.") for k in state):
        return take_prefix(state, "visual.")
    return state


@register_encoder(
    "conch",
    embed_dim=512,
    preprocessing=Preprocessing(448, 448, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, "bicubic"),
    convert=convert_conch,
    hub_id="MahmoodLab/CONCH",
    hub_filename="pytorch_model.bin",
    published_params=90_000_000,
    params_source="CONCH paper (Lu et al. 2024): ViT-B/16 image encoder, 90 M",
    description="CONCH (Lu et al. 2024): CoCa ViT-B/16 visual tower, 1.17 M image-caption pairs",
)
def conch(**overrides: Any) -> ConchVisual:
    """CONCH's visual tower (``conch_ViT-B-16``)."""
    return ConchVisual(**overrides)
