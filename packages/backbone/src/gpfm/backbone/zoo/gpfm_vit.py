"""GPFM, DINOv2 and every ``create_vit`` architecture, on our own ViT.

- ``gpfm``: DINOv2-style ViT-L/14 at 224 px, LayerScale 1e-5, GELU MLP, no registers; embedding
  = final-norm class token (1024-d). Input: the tile resized to 224 x 224 (bicubic), ImageNet
  mean/std (GPFM's ``build_transform``). Published as ``{"teacher": ...}`` with ``backbone.``
  keys in 4 block chunks; ``convert_checkpoint`` reads it.
- ``dinov2-vits14`` / ``-vitb14`` / ``-vitl14``: Meta's DINOv2 at their 518 px position grid
  (interpolated for 224 px inputs); DINOv2's evaluation preprocessing (resize 256 bicubic,
  center crop 224).
- ``vit_{tiny,small,base,large,giant}_patch{14,16}``: our architectures as encoders (random or
  your own weights), input resized to 224 x 224, ImageNet mean/std.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor, nn

from gpfm.backbone.checkpoint import PosEmbedRule, convert_checkpoint, resample_pos_embed
from gpfm.backbone.vit import VIT_ARCHITECTURES, VisionTransformer, create_vit
from gpfm.backbone.zoo.encoder import Tokens
from gpfm.backbone.zoo.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, square
from gpfm.backbone.zoo.registry import register_encoder


def vit_cls(model: nn.Module, batch: Tensor) -> Tensor:
    """Embedding of our ViT: the final-norm class token."""
    network: Any = model
    features = network.forward_features(batch)
    cls: Tensor = features["cls"]
    return cls


def vit_cls_mean(model: nn.Module, batch: Tensor) -> Tensor:
    """Embedding of our ViT: class token concatenated with the mean patch token (2 x D)."""
    network: Any = model
    features = network.forward_features(batch)
    return torch.cat([features["cls"], features["patch"].mean(dim=1)], dim=-1)


def vit_tokens(model: nn.Module, batch: Tensor) -> Tokens:
    """Tokens of our ViT: ``{"cls", "patch", "registers"}`` after the final norm."""
    network: Any = model
    features = network.forward_features(batch)
    return dict(features)


def convert_dinov2_style(checkpoint: Mapping[str, Any], model: nn.Module) -> dict[str, Tensor]:
    """GPFM's release, DINOv2's hub files, timm's DINOv2 ports or ours -> our ViT's names.

    Position embeddings trained on another grid are resampled (bicubic) to the model's, by
    the model's rule (DINOv2's ``scale_factor`` rule for our ViT).
    """
    state = convert_checkpoint(checkpoint)
    grid = getattr(model, "grid_size", None)
    if isinstance(grid, int) and "pos_embed" in state:
        rule: PosEmbedRule = getattr(model, "pos_embed_rule", "dinov2")
        state["pos_embed"] = resample_pos_embed(state["pos_embed"], grid, rule)
    return state


@register_encoder(
    "gpfm",
    embed_dim=1024,
    preprocessing=square(224, "bicubic"),
    embedding=vit_cls,
    tokens=vit_tokens,
    convert=convert_dinov2_style,
    hub_id="majiabo/GPFM",
    hub_filename="GPFM.pth",
    published_params=304_400_000,
    params_source="DINOv2 ViT-L/14, timm vit_large_patch14_dinov2.lvd142m card (304.4 M at "
    "518 px; GPFM's 224 px grid has 1,113 fewer position rows)",
    weights_hint="GPFM.pth from github.com/birkhoffkiki/GPFM releases",
    description="GPFM (Ma et al. 2025): DINOv2 ViT-L/14 distilled from UNI, Phikon and CONCH",
)
def gpfm(**overrides: Any) -> VisionTransformer:
    """GPFM's backbone: ViT-L/14, 224 px, LayerScale 1e-5, GELU MLP, no registers."""
    options = {"img_size": 224, "init_values": 1e-5, "num_register_tokens": 0, "ffn_layer": "mlp"}
    return create_vit("vit_large_patch14", **{**options, **overrides})


_DINOV2_EVAL = Preprocessing(256, 224, IMAGENET_MEAN, IMAGENET_STD, "bicubic")
_DINOV2 = {
    "dinov2-vits14": ("vit_small_patch14", 384, "facebook/dinov2 ViT-S/14", 22_100_000),
    "dinov2-vitb14": ("vit_base_patch14", 768, "facebook/dinov2 ViT-B/14", 86_600_000),
    "dinov2-vitl14": ("vit_large_patch14", 1024, "facebook/dinov2 ViT-L/14", 304_400_000),
}


def _register_dinov2(name: str, architecture: str, dim: int, label: str, params: int) -> None:
    timm_name = f"{architecture}_dinov2.lvd142m"

    @register_encoder(
        name,
        embed_dim=dim,
        preprocessing=_DINOV2_EVAL,
        embedding=vit_cls,
        tokens=vit_tokens,
        convert=convert_dinov2_style,
        hub_id=f"timm/{timm_name}",
        hub_filename="model.safetensors",
        published_params=params,
        params_source=f"timm {timm_name} model card ({params / 1e6:.1f} M)",
        description=f"{label} (Oquab et al. 2023), natural images, LVD-142M",
    )
    def build(**overrides: Any) -> VisionTransformer:
        options = {"img_size": 518, "init_values": 1e-5, "num_register_tokens": 0}
        return create_vit(architecture, **{**options, **overrides})


for _name, (_architecture, _dim, _label, _params) in _DINOV2.items():
    _register_dinov2(_name, _architecture, _dim, _label, _params)


def _register_architecture(architecture: str) -> None:
    config = VIT_ARCHITECTURES[architecture]

    @register_encoder(
        architecture,
        embed_dim=config["embed_dim"],
        preprocessing=square(224, "bicubic"),
        embedding=vit_cls,
        tokens=vit_tokens,
        convert=convert_dinov2_style,
        params_source="timm's VisionTransformer of the same configuration",
        weights_hint="weights trained with gpfm, or any DINOv2 / timm checkpoint of this size",
        description=f"our {architecture} (patch {config['patch_size']}), no pretrained weights",
    )
    def build(**overrides: Any) -> VisionTransformer:
        return create_vit(architecture, **overrides)


for _architecture in VIT_ARCHITECTURES:
    _register_architecture(_architecture)
