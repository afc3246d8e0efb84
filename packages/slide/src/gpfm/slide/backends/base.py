"""The ``SlideReader`` protocol every backend satisfies, and helpers the backends share."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np
from PIL import Image

Size = tuple[int, int]
"""(width, height) in pixels."""


@runtime_checkable
class SlideReader(Protocol):
    """One opened slide file, as a backend sees it.

    ``read_region`` takes its location in level-0 pixels and its size in pixels of ``level``,
    returns uint8 RGB of shape (height, width, 3), and paints anything outside the image white.
    """

    name: ClassVar[str]
    path: Path
    level_dimensions: tuple[Size, ...]
    level_downsamples: tuple[float, ...]
    metadata_mpp: float | None
    properties: dict[str, str]

    def native_tile_size(self, level: int) -> Size | None:
        """Size of the file's stored tiles at ``level``, or None if it stores none."""
        ...

    def read_region(self, location: tuple[int, int], level: int, size: Size) -> np.ndarray: ...

    def close(self) -> None: ...


def composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """Non-premultiplied RGBA (H, W, 4) uint8 -> RGB on a white background."""
    alpha = rgba[..., 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    rgb = rgba[..., :3].astype(np.uint16) * alpha + 255 * (255 - alpha.astype(np.uint16))
    return ((rgb + 127) // 255).astype(np.uint8)


def to_rgb_uint8(pixels: np.ndarray) -> np.ndarray:
    """Grey, grey+alpha, RGB or RGBA pixels of any integer or float dtype -> uint8 RGB."""
    if pixels.dtype != np.uint8:
        if np.issubdtype(pixels.dtype, np.integer):
            shift = 8 * (pixels.dtype.itemsize - 1)
            pixels = (pixels >> shift).astype(np.uint8)
        else:
            pixels = (np.clip(pixels, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)
    if pixels.ndim == 2:
        pixels = pixels[..., None]
    channels = pixels.shape[-1]
    if channels == 1:
        return np.repeat(pixels, 3, axis=-1)
    if channels == 2:
        grey_alpha = np.concatenate([np.repeat(pixels[..., :1], 3, axis=-1), pixels[..., 1:]], -1)
        return composite_on_white(grey_alpha)
    if channels == 4:
        return composite_on_white(pixels)
    return np.ascontiguousarray(pixels[..., :3])


def virtual_pyramid(width: int, height: int, factor: int = 4, min_size: int = 512) -> list[int]:
    """Integer downsamples 1, factor, factor², … while the level's long side stays >= min_size."""
    downsamples = [1]
    while max(width, height) / (downsamples[-1] * factor) >= min_size:
        downsamples.append(downsamples[-1] * factor)
    return downsamples


def level_size(width: int, height: int, downsample: float) -> Size:
    return max(1, math.ceil(width / downsample)), max(1, math.ceil(height / downsample))


def read_virtual_level(
    read_level0: Callable[[int, int, int, int], np.ndarray],
    location: tuple[int, int],
    downsample: int,
    size: Size,
) -> np.ndarray:
    """Read ``size`` pixels of a virtual level by area-averaging the level-0 pixels under them.

    ``read_level0(x, y, width, height)`` returns level-0 RGB with white outside the image.
    """
    width, height = size
    if downsample == 1:
        return read_level0(location[0], location[1], width, height)
    level0 = read_level0(location[0], location[1], width * downsample, height * downsample)
    return np.asarray(Image.fromarray(level0).reduce(downsample))


def paste_clipped(
    out: np.ndarray, piece: np.ndarray, piece_x: int, piece_y: int, out_x: int, out_y: int
) -> None:
    """Copy ``piece`` (whose top-left is at (piece_x, piece_y)) into ``out`` (at (out_x, out_y)).

    Both positions are in one pixel frame; only the overlap is copied.
    """
    out_h, out_w = out.shape[:2]
    x0, y0 = max(piece_x, out_x), max(piece_y, out_y)
    x1 = min(piece_x + piece.shape[1], out_x + out_w)
    y1 = min(piece_y + piece.shape[0], out_y + out_h)
    if x1 <= x0 or y1 <= y0:
        return
    out[y0 - out_y : y1 - out_y, x0 - out_x : x1 - out_x] = piece[
        y0 - piece_y : y1 - piece_y, x0 - piece_x : x1 - piece_x
    ]
