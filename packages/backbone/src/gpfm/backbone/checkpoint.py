"""Weights of the ViT: recognise a checkpoint's layout, convert it to ours, load strictly, save.

Layouts recognised by ``convert_checkpoint``:

- **GPFM release** (``{"teacher": state_dict}``): ``backbone.`` prefix, blocks stored in chunks
  as ``blocks.<chunk>.<i>.`` (DINOv2's ``block_chunks``), DINO / iBOT / expert heads beside the
  backbone (dropped).
- **DINOv2 hub**: ``register_tokens``, SwiGLU as ``mlp.w12`` / ``mlp.w3``.
- **timm** ``VisionTransformer``: our names already; ``head.*`` dropped; register models whose
  ``pos_embed`` has no class position get a zero one (timm adds none to the class token).
- **ours** (safetensors written by ``save_safetensors``).

Loading is strict: a missing or unexpected key is an error that lists them, because a loader that
skips what it does not recognise can silently load nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from gpfm.backbone.errors import BackboneError

logger = logging.getLogger(__name__)

_WRAPPERS = ("teacher", "state_dict", "model", "module")
_PREFIXES = ("module.", "backbone.", "model.", "encoder.", "trunk.")
_HEADS = re.compile(r"^(dino_head|ibot_head|head|fc_norm|.*_head)\.|^head\.")
_CHUNKED = re.compile(r"^blocks\.(\d+)\.(\d+)\.")


class CheckpointError(BackboneError, ValueError):
    """A checkpoint that cannot be converted to, or loaded into, the model asked for."""


def unwrap(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """The state dict inside a training checkpoint (``teacher`` first, as GPFM releases it)."""
    current: Mapping[str, Any] = checkpoint
    for _ in range(3):
        inner = next((current[k] for k in _WRAPPERS if isinstance(current.get(k), Mapping)), None)
        if inner is None:
            break
        current = inner
    tensors = {k: v for k, v in current.items() if isinstance(v, Tensor)}
    if not tensors:
        raise CheckpointError(
            f"no tensors found in the checkpoint (top-level keys: {list(checkpoint)[:10]})"
        )
    return tensors


def detect_layout(state_dict: Mapping[str, Tensor]) -> str:
    """``"gpfm"``, ``"dinov2"``, ``"timm"`` or ``"gpfm-backbone"`` (ours), from the key names."""
    keys = list(state_dict)
    if any(k.startswith("backbone.") for k in keys) or any(_CHUNKED.match(k) for k in keys):
        return "gpfm"
    if "register_tokens" in state_dict or any(".mlp.w12." in k for k in keys):
        return "dinov2"
    if "mask_token" in state_dict and any(k.startswith("blocks.") for k in keys):
        return "gpfm-backbone" if "head.weight" not in state_dict else "timm"
    if any(k.startswith("blocks.") for k in keys) and "pos_embed" in state_dict:
        return "timm"
    raise CheckpointError(
        "unrecognised checkpoint layout; expected GPFM, DINOv2, timm or gpfm-backbone keys, "
        f"found e.g. {keys[:8]}"
    )


def convert_checkpoint(checkpoint: Mapping[str, Any]) -> dict[str, Tensor]:
    """Any recognised layout (see the module docstring) -> our ``VisionTransformer`` state dict."""
    state = unwrap(checkpoint)
    for prefix in _PREFIXES:
        if any(k.startswith(prefix) for k in state):
            state = {(k[len(prefix) :] if k.startswith(prefix) else k): v for k, v in state.items()}
    layout = detect_layout(state)
    converted: dict[str, Tensor] = {}
    for key, value in state.items():
        if _HEADS.match(key):
            continue
        key = _CHUNKED.sub(r"blocks.\2.", key)
        key = key.replace(".mlp.w12.", ".mlp.fc1.").replace(".mlp.w3.", ".mlp.fc2.")
        if key == "register_tokens":
            key = "reg_token"
        converted[key] = value
    converted.setdefault("mask_token", torch.zeros(1, converted["cls_token"].shape[-1]))
    if converted["mask_token"].ndim == 3:  # some exports keep (1, 1, D)
        converted["mask_token"] = converted["mask_token"].reshape(1, -1)
    pos_embed = converted["pos_embed"]
    if not _has_class_position(pos_embed):
        cls_position = torch.zeros_like(pos_embed[:, :1])
        converted["pos_embed"] = torch.cat([cls_position, pos_embed], dim=1)
    logger.debug("converted a %s checkpoint with %d tensors", layout, len(converted))
    return converted


def _has_class_position(pos_embed: Tensor) -> bool:
    positions = pos_embed.shape[1]
    return math.isqrt(positions) ** 2 != positions


PosEmbedRule = Literal["dinov2", "size"]
"""How a position grid is resized: ``"dinov2"`` (DINOv2's and GPFM's own code: bicubic with
``scale_factor = (g + 0.1) / M``, no antialias) or ``"size"`` (timm's: bicubic to ``size=g``)."""


def resize_pos_grid(
    patch_pos: Tensor, grid_h: int, grid_w: int, rule: PosEmbedRule = "dinov2"
) -> Tensor:
    """Resize (1, D, M, M) position embeddings to (1, D, grid_h, grid_w), bicubic, in fp32.

    ``"dinov2"`` follows ``interpolate_pos_encoding`` of DINOv2 / GPFM
    (birkhoffkiki/GPFM ``pretrain/dinov2/models/vision_transformer.py:178-183``): the
    sampling positions come from the scale factor, not from the output size, so values differ
    from ``size=`` by up to a few per cent (every 98 px local crop, DINOv2 at 224 px).
    """
    side = patch_pos.shape[-1]
    if rule == "dinov2":
        scale = ((grid_h + 0.1) / side, (grid_w + 0.1) / side)
        resized = F.interpolate(patch_pos.float(), scale_factor=scale, mode="bicubic")
        if resized.shape[-2:] != (grid_h, grid_w):  # cannot happen for grids below ~10^5
            raise ValueError(f"resizing a {side}x{side} grid gave {tuple(resized.shape[-2:])}")
        return resized
    if rule == "size":
        return F.interpolate(
            patch_pos.float(), size=(grid_h, grid_w), mode="bicubic", align_corners=False
        )
    raise ValueError(f"position-embedding rule must be 'dinov2' or 'size', got {rule!r}")


def resample_pos_embed(pos_embed: Tensor, grid_size: int, rule: PosEmbedRule = "dinov2") -> Tensor:
    """Bicubically resize (1, 1 + g², D) position embeddings to a ``grid_size`` square grid."""
    side = math.isqrt(pos_embed.shape[1] - 1)
    if side == grid_size:
        return pos_embed
    patch = pos_embed[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
    patch = resize_pos_grid(patch, grid_size, grid_size, rule)
    patch = patch.permute(0, 2, 3, 1).reshape(1, grid_size * grid_size, -1).to(pos_embed.dtype)
    return torch.cat([pos_embed[:, :1], patch], dim=1)


def load_checkpoint_strict(model: nn.Module, checkpoint: Mapping[str, Any] | str | Path) -> None:
    """Convert ``checkpoint`` (a state dict or a file) and load it into ``model``, strictly.

    Position embeddings trained at another resolution are resampled to the model's grid.

    Raises:
        CheckpointError: keys missing from or unexpected in the checkpoint (listed), or shapes
            that differ (listed), or an unrecognised layout.
    """
    source = str(checkpoint) if isinstance(checkpoint, str | Path) else "checkpoint"
    raw = read_checkpoint(checkpoint) if isinstance(checkpoint, str | Path) else checkpoint
    state = convert_checkpoint(raw)
    expected = model.state_dict()
    grid = getattr(model, "grid_size", None)
    if grid is not None and "pos_embed" in state:
        rule: PosEmbedRule = getattr(model, "pos_embed_rule", "size")
        state["pos_embed"] = resample_pos_embed(state["pos_embed"], grid, rule)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = [
        f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k].shape
    ]
    if missing or unexpected or mismatched:
        raise CheckpointError(
            f"{source} does not match the model: "
            f"missing {_short(missing)}; unexpected {_short(unexpected)}; "
            f"shape mismatches {_short(mismatched)}. Check that the architecture (size, patch, "
            "registers, SwiGLU) is the one the weights were trained with."
        )
    model.load_state_dict(state, strict=True)


def _short(items: list[str], limit: int = 12) -> str:
    if not items:
        return "none"
    more = f" and {len(items) - limit} more" if len(items) > limit else ""
    return f"{items[:limit]}{more}"


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Tensors from a ``.safetensors`` file or a torch pickle (loaded with weights_only=True)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        return dict(load_file(path))
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"{path}: not a readable checkpoint: {error}") from error
    if not isinstance(loaded, Mapping):
        raise CheckpointError(f"{path}: holds a {type(loaded).__name__}, not a state dict")
    return dict(loaded)


def save_safetensors(
    model_or_state: nn.Module | Mapping[str, Tensor],
    path: str | Path,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Save weights to ``path`` as safetensors, atomically; ``metadata`` values become JSON."""
    path = Path(path)
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    tensors = {k: v.detach().contiguous().cpu() for k, v in state.items()}
    meta = {k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()}
    with atomic_path(path) as temporary:
        save_file(tensors, temporary, metadata=meta)
    return path


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``, renamed onto it only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
