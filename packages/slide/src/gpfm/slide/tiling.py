"""A grid of square tiles at a physical resolution, kept where the tissue mask says so."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from gpfm.slide.slide import Slide
from gpfm.slide.tissue import TissueMask, segment_tissue

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Tiles:
    """Square tiles of one slide and everything needed to read them again.

    Attributes:
        coords: (N, 2) int64 top-left (x, y) of each tile in level-0 pixels.
        tissue_fraction: (N,) float32 fraction of each tile covered by tissue (from the mask).
        mpp: target resolution of a tile in µm/px.
        patch_size: tile side in pixels at ``mpp``.
        patch_size_level0: tile side in level-0 pixels.
        level: pyramid level the tiles are read from (then resized to ``patch_size``).
        level_downsample: downsample of ``level``.
        slide_mpp: level-0 resolution of the slide (µm/px), as used when tiling.
        slide_dimensions: (width, height) of level 0 in pixels.
        overlap: fraction of ``patch_size`` shared by neighbouring tiles, in [0, 1).
        min_tissue: tissue fraction a tile needed to be kept.
        slide_path: the slide's file, if known.
    """

    coords: np.ndarray
    tissue_fraction: np.ndarray
    mpp: float
    patch_size: int
    patch_size_level0: int
    level: int
    level_downsample: float
    slide_mpp: float
    slide_dimensions: tuple[int, int]
    overlap: float = 0.0
    min_tissue: float = 0.0
    slide_path: str | None = field(default=None)

    def __len__(self) -> int:
        return int(self.coords.shape[0])

    def __repr__(self) -> str:
        slide = f", slide={Path(self.slide_path).name!r}" if self.slide_path else ""
        return (
            f"Tiles({len(self)} tiles of {self.patch_size} px at {self.mpp:g} µm/px, "
            f"level {self.level} ({self.read_size} px read), overlap {self.overlap:g}, "
            f"min_tissue {self.min_tissue:g}{slide})"
        )

    @property
    def read_size(self) -> int:
        """Tile side in pixels of ``level`` (what is read before resizing to ``patch_size``)."""
        return max(1, round(self.patch_size_level0 / self.level_downsample))

    @property
    def step_level0(self) -> int:
        """Distance between neighbouring tiles' origins in level-0 pixels."""
        return grid_step(self.patch_size_level0, self.overlap)


def grid_step(patch_size_level0: int, overlap: float) -> int:
    """Stride in level-0 pixels of a grid of ``patch_size_level0`` tiles sharing ``overlap``."""
    return max(1, round(patch_size_level0 * (1.0 - overlap)))


def grid_coords(width: int, height: int, step: int) -> np.ndarray:
    """Top-left corners (N, 2) int64 of a grid with ``step`` over a width x height level 0.

    Every tile starts inside the slide; the last row and column may overhang its edge (the
    overhang reads as white glass), so no tissue at the border is lost.
    """
    xs = np.arange(0, width, step, dtype=np.int64)
    ys = np.arange(0, height, step, dtype=np.int64)
    grid_x, grid_y = np.meshgrid(xs, ys)
    return np.stack([grid_x.ravel(), grid_y.ravel()], axis=1)


def tissue_fractions(mask: TissueMask, coords: np.ndarray, patch_size_level0: int) -> np.ndarray:
    """Fraction of each tile's area that the mask marks as tissue, from an integral image.

    Tiles are mapped onto the mask grid (rounding to whole mask pixels); area outside the slide
    counts as glass. No pixel of the slide is read.
    """
    height, width = mask.mask.shape
    # int32 holds any count up to 2**31 mask pixels and halves the memory of int64.
    integral = np.zeros((height + 1, width + 1), dtype=np.int32)
    np.cumsum(mask.mask, axis=0, dtype=np.int32, out=integral[1:, 1:])
    np.cumsum(integral[1:, 1:], axis=1, dtype=np.int32, out=integral[1:, 1:])
    scale = 1.0 / mask.downsample
    x0 = np.rint(coords[:, 0] * scale).astype(np.int64)
    y0 = np.rint(coords[:, 1] * scale).astype(np.int64)
    x1 = np.rint((coords[:, 0] + patch_size_level0) * scale).astype(np.int64)
    y1 = np.rint((coords[:, 1] + patch_size_level0) * scale).astype(np.int64)
    x1, y1 = np.maximum(x1, x0 + 1), np.maximum(y1, y0 + 1)
    area = (x1 - x0) * (y1 - y0)
    cx0, cx1 = np.clip(x0, 0, width), np.clip(x1, 0, width)
    cy0, cy1 = np.clip(y0, 0, height), np.clip(y1, 0, height)
    inside = integral[cy1, cx1] - integral[cy0, cx1] - integral[cy1, cx0] + integral[cy0, cx0]
    return (inside / area).astype(np.float32)


def tile(
    slide: Slide,
    mpp: float = 0.5,
    patch_size: int = 224,
    overlap: float = 0.0,
    min_tissue: float = 0.5,
    tissue: TissueMask | None = None,
    native_level: bool = False,
) -> Tiles:
    """Tile a slide at a physical resolution, keeping tiles with enough tissue.

    Args:
        slide: an opened slide.
        mpp: target resolution of the tiles in µm/px (0.5 is "20x").
        patch_size: tile side in pixels at ``mpp``.
        overlap: fraction of ``patch_size`` neighbouring tiles share, 0 <= overlap < 1.
        min_tissue: keep tiles whose tissue fraction is at least this (0 keeps every tile).
        tissue: a precomputed tissue mask; segmented with default settings when omitted and
            ``min_tissue`` > 0.
        native_level: read the tiles without resizing from the pyramid level nearest to
            ``mpp`` and record that level's true resolution (``slide.mpp`` x its downsample)
            as the tiles' ``mpp``. Readers that cannot resize (CLAM) then read them exactly.
    """
    if mpp <= 0 or not math.isfinite(mpp):
        raise ValueError(f"mpp must be a positive number of µm per pixel, got {mpp!r}")
    if patch_size < 1:
        raise ValueError(f"patch_size must be at least 1 pixel, got {patch_size!r}")
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap is a fraction of patch_size in [0, 1), got {overlap!r}")
    if not 0.0 <= min_tissue <= 1.0:
        raise ValueError(f"min_tissue is a fraction in [0, 1], got {min_tissue!r}")
    downsample = mpp / slide.mpp
    if native_level:
        level = nearest_level(slide, downsample)
        downsample = float(slide.level_downsamples[level])
        if not math.isclose(slide.mpp * downsample, mpp, rel_tol=1e-3):
            logger.info(
                "%s: tiling at native level %d, %.4g µm/px (asked for %.4g µm/px)",
                slide.path,
                level,
                slide.mpp * downsample,
                mpp,
            )
        mpp = slide.mpp * downsample
    if downsample < 1.0:
        logger.warning(
            "%s: tiles at %.3g µm/px are finer than the scan (%.3g µm/px); they will be upsampled",
            slide.path,
            mpp,
            slide.mpp,
        )
    patch_size_level0 = max(1, round(patch_size * downsample))
    width, height = slide.dimensions
    coords = grid_coords(width, height, grid_step(patch_size_level0, overlap))
    if min_tissue > 0 and tissue is None:
        tissue = segment_tissue(slide)
    if tissue is not None:
        fractions = tissue_fractions(tissue, coords, patch_size_level0)
    else:
        fractions = np.ones(len(coords), dtype=np.float32)
    keep = fractions >= min_tissue if min_tissue > 0 else np.ones(len(coords), dtype=bool)
    if not native_level:
        level = slide.best_level_for_downsample(downsample)
    tiles = Tiles(
        coords=coords[keep],
        tissue_fraction=fractions[keep],
        mpp=float(mpp),
        patch_size=int(patch_size),
        patch_size_level0=patch_size_level0,
        level=level,
        level_downsample=float(slide.level_downsamples[level]),
        slide_mpp=float(slide.mpp),
        slide_dimensions=(int(width), int(height)),
        overlap=float(overlap),
        min_tissue=float(min_tissue),
        slide_path=str(slide.path),
    )
    logger.info("%s: %d of %d tiles kept", slide.path, len(tiles), len(coords))
    return tiles


def nearest_level(slide: Slide, downsample: float) -> int:
    """The pyramid level whose downsample is nearest to ``downsample`` (in ratio; ties: finer)."""
    distances = [abs(math.log(d / downsample)) for d in slide.level_downsamples]
    return min(range(len(distances)), key=lambda level: (round(distances[level], 9), level))


__all__ = ["Tiles", "grid_coords", "nearest_level", "tile", "tissue_fractions"]
