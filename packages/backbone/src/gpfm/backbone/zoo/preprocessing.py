"""The resize / crop / normalisation each model's authors specify, as torchvision v2 transforms.

A ``Preprocessing`` is data (it is written into exported encoder folders); ``.transform()`` turns
it into a ``torchvision.transforms.v2`` pipeline that takes uint8 RGB — a ``(3, H, W)`` or
``(B, 3, H, W)`` tensor, an ``(H, W, 3)`` numpy array or a PIL image — and returns float32,
normalised, at the model's input size.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from torchvision.transforms import InterpolationMode, v2

Interpolation = Literal["bilinear", "bicubic"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_MODES = {"bilinear": InterpolationMode.BILINEAR, "bicubic": InterpolationMode.BICUBIC}


@dataclass(frozen=True)
class Preprocessing:
    """Resize, then center-crop, then scale to [0, 1] and normalise per channel.

    ``resize`` as an int resizes the shorter side to it (aspect kept; a ``crop`` is then
    required so that the output is square); as ``(h, w)`` it resizes to exactly that size.
    """

    resize: int | tuple[int, int]
    crop: int | None
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: Interpolation = "bilinear"

    def __post_init__(self) -> None:
        if self.interpolation not in _MODES:
            raise ValueError(f"interpolation must be one of {sorted(_MODES)}")
        if isinstance(self.resize, int) and self.crop is None:
            raise ValueError("resizing the shorter side needs a crop to give a square input")
        if not isinstance(self.resize, int) and len(self.resize) != 2:
            raise ValueError(f"resize must be an int or (height, width), got {self.resize!r}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError("mean and std need three values (RGB), std positive")

    @property
    def input_size(self) -> int:
        """Side of the square image the model receives, in pixels."""
        if self.crop is not None:
            return self.crop
        if isinstance(self.resize, int) or self.resize[0] != self.resize[1]:
            raise ValueError(f"resize {self.resize} without a crop does not give a square input")
        return self.resize[0]

    def transform(self) -> v2.Compose:
        """The torchvision v2 pipeline: uint8 RGB in, normalised float32 out."""
        size: int | list[int] = self.resize if isinstance(self.resize, int) else list(self.resize)
        steps: list[v2.Transform] = [
            v2.Lambda(_writable, np.ndarray),  # torch warns on read-only arrays (cached tiles)
            v2.ToImage(),
            v2.Resize(size, interpolation=_MODES[self.interpolation], antialias=True),
        ]
        if self.crop is not None:
            steps.append(v2.CenterCrop(self.crop))
        steps += [
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(mean=list(self.mean), std=list(self.std)),
        ]
        return v2.Compose(steps)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values (tuples become lists)."""
        data = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in data.items()}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        """Inverse of ``to_dict``.

        Raises:
            ValueError: a missing or malformed field.
        """
        try:
            resize = data["resize"]
            return cls(
                resize=resize if isinstance(resize, int) else _pair(resize),
                crop=data.get("crop"),
                mean=_triple(data["mean"]),
                std=_triple(data["std"]),
                interpolation=data.get("interpolation", "bilinear"),
            )
        except (KeyError, TypeError) as error:
            raise ValueError(f"malformed preprocessing {dict(data)!r}: {error}") from error


def _writable(array: np.ndarray) -> np.ndarray:
    """``array`` itself, or a copy when it is read-only (``torch.from_numpy`` would warn)."""
    return array if array.flags.writeable else np.array(array)


def _pair(values: Sequence[int]) -> tuple[int, int]:
    height, width = (int(v) for v in values)
    return height, width


def _triple(values: Sequence[float]) -> tuple[float, float, float]:
    first, second, third = (float(v) for v in values)
    return first, second, third


def square(size: int, interpolation: Interpolation = "bicubic") -> Preprocessing:
    """Resize to ``size`` x ``size`` (no crop), ImageNet mean/std: GPFM's own preprocessing."""
    return Preprocessing((size, size), None, IMAGENET_MEAN, IMAGENET_STD, interpolation)
