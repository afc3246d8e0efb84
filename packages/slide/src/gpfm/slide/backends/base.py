"""The ``SlideReader`` protocol every backend satisfies, and helpers the backends share."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

import numpy as np
import tifffile
from PIL import Image

from gpfm.slide.errors import SlideError, UnsupportedSlideError

Size = tuple[int, int]
"""(width, height) in pixels."""

MAX_PIXELS_PER_BYTE = 2**20
"""A file must hold at least one byte per this many level-0 pixels its header claims.

Real slides hold about one byte per 10-1,000 pixels (JPEG of glass, or sparse tiles whose
offsets alone cost 8 bytes each); a header claiming a million times more than that is a lie that
would send low-resolution reads through ~10^12 pixels of nothing.
"""

VIRTUAL_BLOCK_PIXELS = 2**24
"""Level-0 pixels decoded at a time when reading a virtual (area-averaged) level (48 MiB RGB)."""

MAX_VIRTUAL_DOWNSAMPLE = 1024
"""The coarsest virtual level (one output pixel from 1024 x 1024 level-0 pixels)."""

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")


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
    """Integer downsamples 1, factor, factor², … while the level's long side stays >= min_size.

    Capped at ``MAX_VIRTUAL_DOWNSAMPLE`` so one pixel of any level comes from a bounded area.
    """
    downsamples = [1]
    while (
        max(width, height) / (downsamples[-1] * factor) >= min_size
        and downsamples[-1] * factor <= MAX_VIRTUAL_DOWNSAMPLE
    ):
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
    x, y = location
    if downsample == 1:
        return read_level0(x, y, width, height)
    # In blocks aligned to whole output pixels, so memory stays bounded and the result is the
    # same as reducing the whole region at once.
    side = max(1, math.isqrt(VIRTUAL_BLOCK_PIXELS) // downsample)
    out = np.empty((height, width, 3), dtype=np.uint8)
    for top in range(0, height, side):
        rows = min(side, height - top)
        for left in range(0, width, side):
            cols = min(side, width - left)
            level0 = read_level0(
                x + left * downsample, y + top * downsample, cols * downsample, rows * downsample
            )
            reduced = Image.fromarray(level0).reduce(downsample)
            out[top : top + rows, left : left + cols] = np.asarray(reduced)
    return out


def is_tiff(path: Path) -> bool:
    """True when the file starts with a TIFF or BigTIFF signature (SVS, NDPI, OME-TIFF, ...)."""
    try:
        with path.open("rb") as handle:
            return handle.read(4) in _TIFF_MAGIC
    except OSError:
        return False


def check_backed_by_file(path: Path, size: Size) -> None:
    """Refuse a header whose level-0 size (width, height) the file is far too small to hold.

    Raises:
        UnsupportedSlideError: fewer than one byte of file per ``MAX_PIXELS_PER_BYTE`` pixels.
    """
    width, height = size
    file_bytes = path.stat().st_size
    if width <= 0 or height <= 0 or width * height > MAX_PIXELS_PER_BYTE * max(1, file_bytes):
        raise UnsupportedSlideError(
            f"{path}: its header claims an image of {width} x {height} px, but the file holds "
            f"only {file_bytes} bytes: it is damaged or not a slide. Re-export or re-scan it."
        )


def check_tiff_extents(path: Path, tiff: tifffile.TiffFile | None = None) -> None:
    """Refuse a TIFF whose tiles or strips lie (partly) beyond the end of the file.

    A truncated file, or a damaged byte count, would otherwise make a reader allocate and read
    whatever size the file claims (OpenSlide aborts the process when that allocation fails).
    Files tifffile cannot parse are left to the caller's own reader.

    Raises:
        UnsupportedSlideError: naming the file, the page and the segment.
    """
    file_bytes = path.stat().st_size
    try:
        opened = tiff or tifffile.TiffFile(path)
    except Exception:
        return
    try:
        for number, page in enumerate(opened.pages):
            offsets = np.asarray(getattr(page, "dataoffsets", ()), dtype=np.uint64)
            counts = np.asarray(getattr(page, "databytecounts", ()), dtype=np.uint64)
            if offsets.shape != counts.shape:
                beyond = np.arange(1)
            else:
                beyond = np.flatnonzero(offsets + counts > file_bytes)
            if beyond.size:
                raise UnsupportedSlideError(
                    f"{path}: image {number} stores segment {int(beyond[0])} beyond the end of "
                    f"the file ({file_bytes} bytes): it is truncated or damaged. Copy it again "
                    "or re-export it."
                )
    finally:
        if tiff is None:
            opened.close()


@contextlib.contextmanager
def closed_on_error(path: Path, close: Callable[[], object], what: str) -> Iterator[None]:
    """Close a half-opened file if the block fails; turn unexpected errors into typed ones.

    A damaged header can make a format library raise anything (ValueError, IndexError, ...);
    the caller gets ``UnsupportedSlideError`` naming the file, and no handle is left open.
    """
    try:
        yield
    except BaseException as error:
        close()
        if isinstance(error, SlideError) or not isinstance(error, Exception):
            raise
        raise UnsupportedSlideError(f"{path}: {what}: {error!r}") from error


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
