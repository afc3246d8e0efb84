"""Datasets of patches for pretraining: image folders, file lists and synthetic H&E-like patches."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from gpfm.backbone.images import IMAGE_SUFFIXES
from gpfm.distill.errors import DistillDataError

logger = logging.getLogger(__name__)


class ImageFileDataset(Dataset[Any]):
    """Images from a folder (searched recursively) or an explicit list of files / a list file.

    Args:
        source: a folder, a text file with one image path per line (relative paths are taken
            from the list file's folder), or a sequence of paths.
        transform: applied to each RGB PIL image (e.g. ``MultiCropAugmentation``).
    """

    def __init__(
        self,
        source: str | Path | Sequence[str | Path],
        transform: Callable[[Image.Image], Any] | None = None,
    ) -> None:
        self.paths = _resolve_paths(source)
        if not self.paths:
            raise DistillDataError(f"{source}: no images found ({', '.join(IMAGE_SUFFIXES)})")
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Any:
        path = self.paths[index]
        try:
            with Image.open(path) as image:
                rgb = image.convert("RGB")
        except OSError as error:
            raise OSError(f"{path}: cannot read the image: {error}") from error
        return self.transform(rgb) if self.transform else rgb


def _resolve_paths(source: str | Path | Sequence[str | Path]) -> list[Path]:
    if isinstance(source, str | Path):
        source = Path(source)
        if source.is_dir():
            return sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if source.is_file() and source.suffix.lower() not in IMAGE_SUFFIXES:
            lines = [line.strip() for line in source.read_text().splitlines() if line.strip()]
            return [p if p.is_absolute() else source.parent / p for p in map(Path, lines)]
        raise FileNotFoundError(f"{source}: not a folder of images or a list file")
    return [Path(p) for p in source]


def synthetic_patch(size: int, rng: np.random.Generator) -> np.ndarray:
    """One H&E-like RGB uint8 patch (size x size): pink stroma, purple nuclei, some glass."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    # Stroma density from a few random waves; nuclei as dark discs.
    density = np.zeros((size, size), np.float32)
    for _ in range(4):
        fx, fy, phase = rng.uniform(1, 6), rng.uniform(1, 6), rng.uniform(0, 2 * np.pi)
        density += np.sin(2 * np.pi * (fx * xx + fy * yy) + phase)
    eosin = np.clip(0.55 + 0.15 * density / 4 + rng.normal(0, 0.05, (size, size)), 0, 1)
    haem = np.zeros((size, size), np.float32)
    for _ in range(int(rng.integers(5, 40))):
        cx, cy = rng.uniform(0, 1, 2)
        radius = rng.uniform(0.015, 0.05)
        haem[(xx - cx) ** 2 + (yy - cy) ** 2 < radius**2] = rng.uniform(0.7, 1.0)
    glass = density < rng.uniform(-4, -1.5)
    optical = eosin[..., None] * np.array([0.07, 0.6, 0.25]) + haem[..., None] * np.array(
        [0.9, 1.0, 0.4]
    )
    rgb = 255 * np.exp(-optical)
    rgb[glass] = 240
    return np.clip(rgb + rng.normal(0, 3, rgb.shape), 0, 255).astype(np.uint8)


class SyntheticPatchDataset(Dataset[Any]):
    """``length`` deterministic H&E-like patches (item i is the same for a given seed)."""

    def __init__(
        self,
        length: int,
        size: int = 256,
        seed: int = 0,
        transform: Callable[[Image.Image], Any] | None = None,
    ) -> None:
        self.length = length
        self.size = size
        self.seed = seed
        self.transform = transform

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> Any:
        if not 0 <= index < self.length:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, index])
        image = Image.fromarray(synthetic_patch(self.size, rng))
        return self.transform(image) if self.transform else image
