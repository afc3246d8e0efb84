"""gpfm.backbone: GPFM's DINOv2-style ViT, its attention kernels, checkpoints and the encoder zoo.

model = create_vit("vit_large_patch14")          # GPFM's backbone, 224 px, 1024-d
features = model(images)                         # {"cls", "patch", "registers"}
load_checkpoint_strict(model, "gpfm.pth")        # GPFM / DINOv2 / timm / ours, strict
save_safetensors(model, "weights.safetensors")
"""

from gpfm.backbone.attention import Attention, resolve_backend
from gpfm.backbone.checkpoint import (
    CheckpointError,
    convert_checkpoint,
    load_checkpoint_strict,
    read_checkpoint,
    save_safetensors,
)
from gpfm.backbone.vit import VIT_ARCHITECTURES, VisionTransformer, count_parameters, create_vit

__all__ = [
    "VIT_ARCHITECTURES",
    "Attention",
    "CheckpointError",
    "VisionTransformer",
    "convert_checkpoint",
    "count_parameters",
    "create_vit",
    "load_checkpoint_strict",
    "read_checkpoint",
    "resolve_backend",
    "save_safetensors",
]
