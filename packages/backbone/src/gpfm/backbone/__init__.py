"""gpfm.backbone: GPFM's DINOv2-style ViT, its attention kernels, checkpoints and the encoder zoo.

Examples::

    model = create_vit("vit_large_patch14")       # GPFM's backbone, 224 px, 1024-d
    features = model(images)                      # {"cls", "patch", "registers"}
    load_checkpoint_strict(model, "gpfm.pth")     # GPFM / DINOv2 / timm / ours, strict
    encoder = load_encoder("uni", weights="hf-hub:MahmoodLab/UNI")   # see list_encoders()
    embeddings = encoder(torch.stack([encoder.transform(tile) for tile in tiles]))
"""

from typing import Any

from gpfm.backbone.attention import Attention, resolve_backend
from gpfm.backbone.checkpoint import (
    CheckpointError,
    convert_checkpoint,
    load_checkpoint_strict,
    read_checkpoint,
    save_safetensors,
)
from gpfm.backbone.errors import BackboneError
from gpfm.backbone.vit import VIT_ARCHITECTURES, VisionTransformer, count_parameters, create_vit

# The zoo imports timm and torchvision (a second or two): load it on first use.
_ZOO = {
    "Encoder",
    "EncoderSpec",
    "ImageReadError",
    "encode_images",
    "image_files",
    "MissingWeightsError",
    "Preprocessing",
    "UnknownEncoderError",
    "export_encoder",
    "get_encoder_spec",
    "list_encoders",
    "load_encoder",
    "read_encoder_config",
    "register_encoder",
    "unregister_encoder",
}
_WEIGHTS = {
    "ChecksumMismatchError",
    "WeightsError",
    "WeightsFile",
    "WeightsNotFoundError",
    "check_weights_reference",
    "resolve_weights",
}


def __getattr__(name: str) -> Any:
    if name in _ZOO:
        from gpfm.backbone import zoo

        return getattr(zoo, name)
    if name in _WEIGHTS:
        from gpfm.backbone import weights

        return getattr(weights, name)
    raise AttributeError(f"module 'gpfm.backbone' has no attribute {name!r}")


__all__ = [
    *sorted(_ZOO),
    *sorted(_WEIGHTS),
    "VIT_ARCHITECTURES",
    "Attention",
    "BackboneError",
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
