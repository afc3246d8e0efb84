"""The encoder zoo: named pathology foundation models with their authors' preprocessing.

    list_encoders()                                       # ["chief", "conch", "ctranspath", ...]
    encoder = load_encoder("uni", weights="hf-hub:MahmoodLab/UNI")
    encoder = load_encoder("vit_small_patch16", random_init=True)      # tests, demos
    encoder = load_encoder("runs/42/encoder")             # a folder exported by training
    features = encoder(torch.stack([encoder.transform(tile) for tile in tiles]))

``register_encoder`` adds your own model with one decorated function (see ``registry``).
"""

from gpfm.backbone.zoo.encoder import Encoder
from gpfm.backbone.zoo.exported import export_encoder, read_encoder_config
from gpfm.backbone.zoo.images import ImageReadError, encode_images, image_files
from gpfm.backbone.zoo.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    Preprocessing,
)
from gpfm.backbone.zoo.registry import (
    EncoderSpec,
    MissingWeightsError,
    UnknownEncoderError,
    get_encoder_spec,
    list_encoders,
    load_encoder,
    register_encoder,
    unregister_encoder,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "Encoder",
    "EncoderSpec",
    "ImageReadError",
    "MissingWeightsError",
    "Preprocessing",
    "UnknownEncoderError",
    "encode_images",
    "export_encoder",
    "get_encoder_spec",
    "image_files",
    "list_encoders",
    "load_encoder",
    "read_encoder_config",
    "register_encoder",
    "unregister_encoder",
]
