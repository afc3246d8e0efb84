"""Phikon and Phikon-v2 (Owkin), published in Hugging Face ``transformers`` layouts.

- ``phikon``: ``ViTModel`` ViT-B/16 (iBOT), 224 px, LayerNorm eps 1e-12 (its ``config.json``);
  built as a timm ViT with the same computation; embedding = ``last_hidden_state[:, 0]``, the
  final-norm class token, 768-d. Input (its ``ViTImageProcessor``): resize to 224 x 224
  (bilinear), ImageNet mean/std.
- ``phikon-v2``: ``Dinov2Model`` ViT-L/16 (DINOv2), 224 px, LayerScale, no registers; built on
  our ViT; embedding = final-norm class token, 1024-d. Input: resize 224 (bicubic), center crop
  224, ImageNet mean/std.

The converters map the ``transformers`` names (separate query / key / value projections,
``layernorm_before`` ...) onto ours, so ``transformers`` is not needed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from functools import partial
from typing import Any

from timm.models.vision_transformer import VisionTransformer as TimmVisionTransformer
from torch import Tensor, nn

from gpfm.backbone.checkpoint import resample_pos_embed
from gpfm.backbone.vit import VisionTransformer, create_vit
from gpfm.backbone.zoo.gpfm_vit import vit_cls, vit_tokens
from gpfm.backbone.zoo.layouts import drop, fuse_qkv, rename, unwrap_tensors
from gpfm.backbone.zoo.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing, square
from gpfm.backbone.zoo.registry import register_encoder
from gpfm.backbone.zoo.timm_vit import build_timm_vit, timm_cls, timm_tokens

logger = logging.getLogger(__name__)

_LAYER = re.compile(r"^encoder\.layer\.(\d+)\.")
_V5_LAYER = re.compile(r"^layers\.(\d+)\.")
# transformers >= 5 names its modules differently in memory (``save_pretrained`` still writes
# the published names); a state dict taken from such a model is read too.
_V5_NAMES = (
    (".attention.q_proj.", ".attention.attention.query."),
    (".attention.k_proj.", ".attention.attention.key."),
    (".attention.v_proj.", ".attention.attention.value."),
    (".attention.o_proj.", ".attention.output.dense."),
)


def _hf_vit_state(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """Tensors of a ``ViTModel`` / ``Dinov2Model`` checkpoint, published names, no heads."""
    state = unwrap_tensors(checkpoint)
    for prefix in ("vit.", "dinov2."):  # saved from a *ForImageClassification model
        if any(k.startswith(prefix) for k in state):
            state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    state = {_V5_LAYER.sub(r"encoder.layer.\1.", k): v for k, v in state.items()}
    return rename(drop(state, "pooler.", "classifier."), _V5_NAMES)


def _fuse_layers(state: dict[str, Tensor]) -> dict[str, Tensor]:
    depth = 1 + max(int(m.group(1)) for k in state if (m := _LAYER.match(k)))
    for i in range(depth):
        base = f"encoder.layer.{i}.attention.attention"
        fuse_qkv(state, f"{base}.query", f"{base}.key", f"{base}.value", f"blocks.{i}.attn.qkv")
    return {_LAYER.sub(r"blocks.\1.", k): v for k, v in state.items()}


_VIT_NAMES = (
    ("embeddings.cls_token", "cls_token"),
    ("embeddings.position_embeddings", "pos_embed"),
    ("embeddings.patch_embeddings.projection.", "patch_embed.proj."),
    (".attention.output.dense.", ".attn.proj."),
    (".layernorm_before.", ".norm1."),
    (".layernorm_after.", ".norm2."),
    (".intermediate.dense.", ".mlp.fc1."),
    (".output.dense.", ".mlp.fc2."),
)


def convert_phikon(checkpoint: Mapping[str, Any], model: nn.Module) -> dict[str, Tensor]:
    """``transformers`` ``ViTModel`` names -> timm ``VisionTransformer`` names."""
    state = _fuse_layers(drop(_hf_vit_state(checkpoint), "embeddings.mask_token"))
    state = rename(state, _VIT_NAMES)
    if "layernorm.weight" in state:
        state["norm.weight"] = state.pop("layernorm.weight")
        state["norm.bias"] = state.pop("layernorm.bias")
    return state


@register_encoder(
    "phikon",
    embed_dim=768,
    preprocessing=square(224, "bilinear"),
    embedding=timm_cls,
    tokens=timm_tokens,
    convert=convert_phikon,
    hub_id="owkin/phikon",
    hub_filename="pytorch_model.bin",
    published_params=86_000_000,
    params_source="Phikon paper (Filiot et al. 2023): ViT-B, 86 M",
    description="Phikon (Filiot et al. 2023): ViT-B/16 iBOT on 40 M TCGA tiles",
)
def phikon(**overrides: Any) -> TimmVisionTransformer:
    """Phikon's ``ViTModel`` as a timm ViT-B/16 (LayerNorm eps 1e-12)."""
    options: dict[str, Any] = {
        "img_size": 224,
        "patch_size": 16,
        "embed_dim": 768,
        "depth": 12,
        "num_heads": 12,
        "norm_layer": partial(nn.LayerNorm, eps=1e-12),
    }
    return build_timm_vit(**{**options, **overrides})


_DINOV2_NAMES = (
    ("embeddings.cls_token", "cls_token"),
    ("embeddings.mask_token", "mask_token"),
    ("embeddings.position_embeddings", "pos_embed"),
    ("embeddings.patch_embeddings.projection.", "patch_embed.proj."),
    (".attention.output.dense.", ".attn.proj."),
    (".layer_scale1.lambda1", ".ls1.gamma"),
    (".layer_scale2.lambda1", ".ls2.gamma"),
    ("layernorm.", "norm."),
)


def convert_phikon_v2(checkpoint: Mapping[str, Any], model: nn.Module) -> dict[str, Tensor]:
    """``transformers`` ``Dinov2Model`` names -> our ViT's; position grid resampled to the model's.

    (``Dinov2Config`` defaults to a 518 px grid; ``Dinov2Model`` interpolates it at run time.)
    """
    state = rename(_fuse_layers(_hf_vit_state(checkpoint)), _DINOV2_NAMES)
    if "mask_token" in state and state["mask_token"].ndim == 3:
        state["mask_token"] = state["mask_token"].reshape(1, -1)
    grid = getattr(model, "grid_size", None)
    if isinstance(grid, int) and "pos_embed" in state:
        if state["pos_embed"].shape[1] != 1 + grid**2:
            logger.info("resampling Phikon-v2 position embeddings to a %d x %d grid", grid, grid)
        state["pos_embed"] = resample_pos_embed(state["pos_embed"], grid, rule="size")
    return state


@register_encoder(
    "phikon-v2",
    embed_dim=1024,
    preprocessing=Preprocessing(224, 224, IMAGENET_MEAN, IMAGENET_STD, "bicubic"),
    embedding=vit_cls,
    tokens=vit_tokens,
    convert=convert_phikon_v2,
    hub_id="owkin/phikon-v2",
    hub_filename="model.safetensors",
    published_params=303_000_000,
    params_source="owkin/phikon-v2 model.safetensors: 1.21 GB of float32 (~303 M)",
    description="Phikon-v2 (Filiot et al. 2024): ViT-L/16 DINOv2 on 460 M public tiles",
)
def phikon_v2(**overrides: Any) -> VisionTransformer:
    """Phikon-v2's ``Dinov2Model`` on our ViT-L/16 (224 px, LayerScale, no registers).

    Position embeddings are resized as transformers' ``Dinov2Model`` does (``size=``), not by
    DINOv2's original rule, so that outputs equal the published model's at every input size.
    """
    options: dict[str, Any] = {"img_size": 224, "init_values": 1e-5, "num_register_tokens": 0}
    options["pos_embed_rule"] = "size"  # transformers' Dinov2Model rule
    return create_vit("vit_large_patch16", **{**options, **overrides})
