"""A folder exported by training is an encoder: weights in safetensors + architecture in JSON.

Layout (``export_encoder`` writes it, ``load_encoder(folder)`` reads it)::

    my-encoder/
      encoder.json         what the network is and how to feed it
      model.safetensors    the ViT's state dict, our parameter names

``encoder.json`` (format version 1)::

    {
      "format": "gpfm-encoder",
      "format_version": 1,
      "name": "gpfm-run-42",                   # the encoder's name in feature files
      "architecture": "vit_large_patch14",     # informative; "vit" below is authoritative
      "vit": {"img_size": 224, "patch_size": 14, "embed_dim": 1024, "depth": 24,
              "num_heads": 16, "ffn_layer": "mlp", "ffn_hidden_dim": 4096,
              "init_values": 1e-05, "num_register_tokens": 0, "qkv_bias": true,
              "proj_bias": true, "ffn_bias": true, "norm_eps": 1e-06,
              "dynamic_img_size": true},      # keyword arguments of VisionTransformer
      "embedding": "cls",                      # or "cls+mean": class + mean patch token (2 D)
      "embed_dim": 1024,
      "preprocessing": {"resize": [224, 224], "crop": null, "interpolation": "bicubic",
                        "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
      "weights": "model.safetensors",
      "weights_sha256": "<64 hex digits>",     # checked on every load
      "metadata": {...}                        # free-form provenance (config, step, versions)
    }
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch

from gpfm.backbone.checkpoint import (
    CheckpointError,
    atomic_path,
    read_checkpoint,
    save_safetensors,
)
from gpfm.backbone.vit import LayerScale, SwiGLU, VisionTransformer
from gpfm.backbone.weights import EXPORT_CONFIG, WeightsError, file_sha256, resolve_weights
from gpfm.backbone.zoo.encoder import Encoder
from gpfm.backbone.zoo.gpfm_vit import vit_cls, vit_cls_mean, vit_tokens
from gpfm.backbone.zoo.preprocessing import Preprocessing, square
from gpfm.backbone.zoo.registry import materialize

logger = logging.getLogger(__name__)

FORMAT = "gpfm-encoder"
FORMAT_VERSION = 1
WEIGHTS_NAME = "model.safetensors"
Embedding = Literal["cls", "cls+mean"]
_EMBEDDINGS = {"cls": vit_cls, "cls+mean": vit_cls_mean}
_VIT_KEYS = frozenset(
    {
        "img_size",
        "patch_size",
        "in_chans",
        "embed_dim",
        "depth",
        "num_heads",
        "mlp_ratio",
        "ffn_layer",
        "ffn_hidden_dim",
        "init_values",
        "num_register_tokens",
        "qkv_bias",
        "proj_bias",
        "ffn_bias",
        "norm_eps",
        "dynamic_img_size",
        "pos_embed_rule",
    }
)


def vit_config(model: VisionTransformer) -> dict[str, Any]:
    """The ``VisionTransformer`` keyword arguments that rebuild ``model``'s architecture."""
    block: Any = model.blocks[0]
    return {
        "img_size": model.img_size,
        "patch_size": model.patch_size,
        "in_chans": model.patch_embed.proj.in_channels,
        "embed_dim": model.embed_dim,
        "depth": model.depth,
        "num_heads": model.num_heads,
        "ffn_layer": "swiglu" if isinstance(block.mlp, SwiGLU) else "mlp",
        "ffn_hidden_dim": block.mlp.fc2.in_features,
        # any non-zero value rebuilds LayerScale; the trained scales come with the weights
        "init_values": 1e-5 if isinstance(block.ls1, LayerScale) else None,
        "num_register_tokens": model.num_register_tokens,
        "qkv_bias": block.attn.qkv.bias is not None,
        "proj_bias": block.attn.proj.bias is not None,
        "ffn_bias": block.mlp.fc1.bias is not None,
        "norm_eps": model.norm.eps,
        "dynamic_img_size": model.dynamic_img_size,
        "pos_embed_rule": model.pos_embed_rule,
    }


def export_encoder(
    model: VisionTransformer,
    folder: str | os.PathLike[str],
    *,
    name: str,
    architecture: str | None = None,
    preprocessing: Preprocessing | None = None,
    embedding: Embedding = "cls",
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``model`` as an encoder folder that ``load_encoder(folder)`` reads back.

    Args:
        model: our ViT (e.g. the teacher backbone at the end of training).
        folder: created if needed; an existing export there is replaced.
        name: the encoder's name (recorded in feature files).
        architecture: the ``create_vit`` name it was built from, for the record.
        preprocessing: default: resize to the model's ``img_size`` (bicubic), ImageNet
            mean/std, as GPFM.
        embedding: ``"cls"`` (class token, D) or ``"cls+mean"`` (class + mean patch, 2 D).
        metadata: JSON-serialisable provenance (training config, step, versions).

    Returns:
        The folder.
    """
    if embedding not in _EMBEDDINGS:
        raise ValueError(f"embedding must be one of {sorted(_EMBEDDINGS)}, got {embedding!r}")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if not isinstance(model, VisionTransformer):
        raise TypeError(
            f"model must be a gpfm.backbone VisionTransformer, got {type(model).__name__}"
        )
    weights = save_safetensors(
        model, folder / WEIGHTS_NAME, metadata={"format": FORMAT, "name": name}
    )
    config = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "architecture": architecture,
        "vit": vit_config(model),
        "embedding": embedding,
        "embed_dim": model.embed_dim * (2 if embedding == "cls+mean" else 1),
        "preprocessing": (preprocessing or square(model.img_size)).to_dict(),
        "weights": WEIGHTS_NAME,
        "weights_sha256": file_sha256(weights),
        "metadata": dict(metadata or {}),
    }
    _write_json_atomically(folder / EXPORT_CONFIG, config)
    logger.info("exported encoder %s to %s", name, folder)
    return folder


def read_encoder_config(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The validated ``encoder.json`` of an exported folder.

    Raises:
        WeightsError: no ``encoder.json``, or one that is not of this format (what is wrong
            is named).
    """
    path = Path(folder) / EXPORT_CONFIG
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise WeightsError(
            f"{folder} is not an exported encoder: it has no {EXPORT_CONFIG}"
        ) from None
    except (OSError, ValueError) as error:
        raise WeightsError(f"{path}: not readable JSON: {error}") from error
    problems = []
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        raise WeightsError(f"{path}: 'format' must be {FORMAT!r}")
    if (
        not isinstance(config.get("format_version"), int)
        or config["format_version"] > FORMAT_VERSION
    ):
        problems.append(
            f"'format_version' {config.get('format_version')!r} is not <= {FORMAT_VERSION}"
        )
    vit = config.get("vit")
    if not isinstance(vit, dict) or not vit:
        problems.append("'vit' must hold the VisionTransformer arguments")
    elif unknown := sorted(set(vit) - _VIT_KEYS):
        problems.append(f"unknown 'vit' arguments {unknown}")
    if config.get("embedding") not in _EMBEDDINGS:
        problems.append(f"'embedding' must be one of {sorted(_EMBEDDINGS)}")
    if not isinstance(config.get("name"), str) or not config["name"]:
        problems.append("'name' must be a non-empty string")
    try:
        Preprocessing.from_dict(config.get("preprocessing") or {})
    except ValueError as error:
        problems.append(f"'preprocessing': {error}")
    if problems:
        raise WeightsError(f"{path}: " + "; ".join(problems))
    return config


def load_exported_encoder(
    folder: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    sha256: str | None = None,
) -> Encoder:
    """The encoder in a folder written by ``export_encoder``, weights verified and loaded strictly.

    Raises:
        WeightsError: an invalid ``encoder.json``, a missing weights file, or a SHA-256 that
            differs from the recorded one (``ChecksumMismatchError``).
        CheckpointError: weights that do not fit the recorded architecture.
    """
    config = read_encoder_config(folder)
    found = resolve_weights(folder, sha256=sha256 or config.get("weights_sha256"))
    with torch.device("meta"):
        model = VisionTransformer(**config["vit"])
    embedding = config["embedding"]
    embed_dim = model.embed_dim * (2 if embedding == "cls+mean" else 1)
    if config.get("embed_dim", embed_dim) != embed_dim:
        raise CheckpointError(
            f"{folder}: 'embed_dim' {config['embed_dim']} contradicts the architecture and "
            f"embedding ({embed_dim})"
        )
    device = torch.device(device)
    if device.type == "meta":
        weights = None
        model = model.to(dtype=dtype) if dtype is not None else model
    else:
        materialize(
            model, read_checkpoint(found.path), device=device, dtype=dtype, source=str(found.path)
        )
        weights = found
    return Encoder(
        config["name"],
        model.eval(),
        embed_dim,
        Preprocessing.from_dict(config["preprocessing"]),
        embedding=_EMBEDDINGS[embedding],
        tokens=vit_tokens,
        weights=weights,
    )


def _write_json_atomically(path: Path, data: Mapping[str, Any]) -> None:
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=2) + "\n")
