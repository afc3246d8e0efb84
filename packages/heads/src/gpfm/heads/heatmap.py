"""Attention heatmaps: per-tile scores painted onto a low-resolution map of the slide, coloured,
and written as a PNG to lay over a slide thumbnail (in QuPath, a browser, or any viewer)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np

from gpfm.heads._png import encode_png
from gpfm.heads.errors import InvalidInputError
from gpfm.heads.features import atomic_path

# Blue (low) through light grey to red (high): readable over pink H&E.
_COLORMAP_ANCHORS = np.array(
    [[40, 60, 190], [110, 150, 240], [225, 225, 225], [240, 140, 100], [180, 10, 40]],
    dtype=np.float64,
)


def _normalize(scores: np.ndarray, how: str) -> np.ndarray:
    if how == "none":
        return scores
    if how == "rank":  # percentile of each score among the slide's tiles, in [0, 1]
        if len(scores) == 1:
            return np.ones(1)
        order = np.argsort(np.argsort(scores, kind="stable"), kind="stable")
        return order / (len(scores) - 1)
    if how == "minmax":
        span = scores.max() - scores.min()
        return (scores - scores.min()) / span if span > 0 else np.ones_like(scores)
    raise InvalidInputError(f"normalize must be 'rank', 'minmax' or 'none', got {how!r}")


def attention_to_heatmap(
    scores: np.ndarray,
    coords: np.ndarray,
    *,
    patch_size_level0: int,
    slide_dimensions: tuple[int, int],
    downsample: float = 32.0,
    normalize: Literal["rank", "minmax", "none"] = "rank",
) -> np.ndarray:
    """Paint per-tile scores onto a map of the slide.

    Args:
        scores: (N,) one score per tile (e.g. ``MILOutput.attention[0]``).
        coords: (N, 2) top-left (x, y) of each tile in level-0 pixels (as in coords and
            feature files).
        patch_size_level0: tile side in level-0 pixels (the coords file's attribute).
        slide_dimensions: (width, height) of the slide in level-0 pixels.
        downsample: level-0 pixels per heatmap pixel.
        normalize: ``rank`` maps scores to their percentile among the tiles (CLAM's heatmaps),
            ``minmax`` to [0, 1] linearly, ``none`` keeps them.

    Returns:
        float32 (ceil(height / downsample), ceil(width / downsample)); each pixel is the mean
        normalised score of the tiles covering it, NaN where no tile does.
    """
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    coords = np.asarray(coords)
    if coords.shape != (len(values), 2):
        raise InvalidInputError(
            f"coords must be (N, 2) with N = {len(values)} scores, got {coords.shape}"
        )
    if len(values) == 0 or not np.isfinite(values).all():
        raise InvalidInputError("scores must be a non-empty array of finite values")
    if patch_size_level0 <= 0 or downsample <= 0:
        raise InvalidInputError("patch_size_level0 and downsample must be positive")
    values = _normalize(values, normalize)
    width = math.ceil(slide_dimensions[0] / downsample)
    height = math.ceil(slide_dimensions[1] / downsample)
    x0 = np.clip(np.floor(coords[:, 0] / downsample).astype(np.int64), 0, width)
    y0 = np.clip(np.floor(coords[:, 1] / downsample).astype(np.int64), 0, height)
    x1 = np.clip(
        np.ceil((coords[:, 0] + patch_size_level0) / downsample).astype(np.int64), 0, width
    )
    y1 = np.clip(
        np.ceil((coords[:, 1] + patch_size_level0) / downsample).astype(np.int64), 0, height
    )
    # Add each tile as a rectangle through a 2-D difference array, then integrate once.
    total = np.zeros((height + 1, width + 1))
    count = np.zeros((height + 1, width + 1))
    for grid, weight in ((total, values), (count, np.ones_like(values))):
        np.add.at(grid, (y0, x0), weight)
        np.add.at(grid, (y0, x1), -weight)
        np.add.at(grid, (y1, x0), -weight)
        np.add.at(grid, (y1, x1), weight)
    total = total.cumsum(0).cumsum(1)[:height, :width]
    count = np.rint(count.cumsum(0).cumsum(1)[:height, :width])
    heatmap = np.full((height, width), np.nan, dtype=np.float32)
    covered = count > 0
    heatmap[covered] = total[covered] / count[covered]
    return heatmap


def heatmap_to_rgba(heatmap: np.ndarray, *, alpha: float = 0.6) -> np.ndarray:
    """Colour a heatmap with values in [0, 1]: blue (0) → grey → red (1).

    Returns:
        uint8 (H, W, 4); opacity ``alpha`` where there is a value, transparent at NaN.
    """
    values = np.asarray(heatmap, dtype=np.float64)
    if values.ndim != 2:
        raise InvalidInputError(f"heatmap must be 2-D, got shape {values.shape}")
    known = np.isfinite(values)
    position = np.clip(np.where(known, values, 0.0), 0, 1) * (len(_COLORMAP_ANCHORS) - 1)
    low = np.minimum(position.astype(np.int64), len(_COLORMAP_ANCHORS) - 2)
    fraction = (position - low)[..., None]
    rgb = _COLORMAP_ANCHORS[low] * (1 - fraction) + _COLORMAP_ANCHORS[low + 1] * fraction
    opacity = np.where(known, alpha * 255, 0)[..., None]
    return np.concatenate([rgb, opacity], axis=-1).round().astype(np.uint8)


def write_heatmap_png(
    path: str | Path,
    heatmap: np.ndarray,
    *,
    background: np.ndarray | None = None,
    alpha: float = 0.6,
) -> Path:
    """Write a coloured heatmap as a PNG (atomically), alone or over a background image.

    Args:
        path: destination ``.png``.
        heatmap: (h, w) values in [0, 1], NaN where there is no tile.
        background: optional uint8 (H, W, 3) image of the same slide region, e.g. a thumbnail;
            the heatmap is stretched to its size (nearest pixel) and blended with ``alpha``.
            Without it the PNG is RGBA, transparent where there is no tile.
        alpha: opacity of the heatmap colours.
    """
    rgba = heatmap_to_rgba(heatmap, alpha=alpha)
    if background is not None:
        base = np.asarray(background)
        if base.dtype != np.uint8 or base.ndim != 3 or base.shape[2] != 3:
            raise InvalidInputError(
                f"background must be uint8 (H, W, 3), got {base.dtype} {base.shape}"
            )
        rows = np.arange(base.shape[0]) * rgba.shape[0] // base.shape[0]
        cols = np.arange(base.shape[1]) * rgba.shape[1] // base.shape[1]
        over = rgba[rows][:, cols].astype(np.float64)
        weight = over[..., 3:] / 255.0
        image = (over[..., :3] * weight + base * (1 - weight)).round().astype(np.uint8)
    else:
        image = rgba
    path = Path(path)
    with atomic_path(path) as temporary:
        temporary.write_bytes(encode_png(image))
    return path


__all__ = ["attention_to_heatmap", "heatmap_to_rgba", "write_heatmap_png"]
