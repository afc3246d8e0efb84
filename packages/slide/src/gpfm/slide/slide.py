"""``Slide``: one whole-slide image with a known resolution, whatever its file format."""

from __future__ import annotations

import logging
import math
from pathlib import Path
from types import TracebackType
from typing import Self

import numpy as np
from PIL import Image

from gpfm.slide.backends import BACKENDS, SlideReader
from gpfm.slide.backends.base import Size
from gpfm.slide.errors import SlideReadError, UnsupportedSlideError
from gpfm.slide.resolution import resolve_mpp

logger = logging.getLogger(__name__)

READ_BLOCK = 2048
"""Side in pixels of the blocks ``read_downsampled`` reads at a time (16 MiB as RGBA)."""

_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg"}
_TIFF_SUFFIXES = (".tif", ".tiff", ".btf", ".tf8")


class Slide:
    """A whole-slide image: pyramid geometry, resolution and RGB pixel access.

    Coordinates follow OpenSlide: locations are (x, y) in level-0 pixels, sizes (width, height)
    in pixels of the level read. ``mpp`` is the level-0 resolution in µm per pixel.
    """

    def __init__(self, reader: SlideReader, mpp: float) -> None:
        self.reader = reader
        self.mpp = mpp

    @property
    def path(self) -> Path:
        return self.reader.path

    @property
    def backend(self) -> str:
        return self.reader.name

    @property
    def dimensions(self) -> Size:
        """(width, height) of level 0 in pixels."""
        return self.reader.level_dimensions[0]

    @property
    def level_count(self) -> int:
        return len(self.reader.level_dimensions)

    @property
    def level_dimensions(self) -> tuple[Size, ...]:
        return self.reader.level_dimensions

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return self.reader.level_downsamples

    @property
    def properties(self) -> dict[str, str]:
        return self.reader.properties

    def level_mpp(self, level: int) -> float:
        """µm per pixel at ``level``."""
        return self.mpp * self.level_downsamples[level]

    def native_tile_size(self, level: int) -> Size | None:
        """(width, height) of the tiles the file stores at ``level``, if it stores tiles."""
        return self.reader.native_tile_size(level)

    def best_level_for_downsample(self, downsample: float) -> int:
        """The lowest-resolution level whose downsample does not exceed ``downsample``.

        Reading there and resizing down never upsamples (a 0.1% tolerance absorbs the rounding
        in stored level sizes).
        """
        best = 0
        for level, level_downsample in enumerate(self.level_downsamples):
            if level_downsample <= downsample * 1.001:
                best = level
        return best

    def read_region(self, location: tuple[int, int], level: int, size: Size) -> np.ndarray:
        """RGB pixels (height, width, 3) uint8 of a region; transparency composited to white.

        Args:
            location: (x, y) top-left in level-0 pixels.
            level: pyramid level to read, 0 <= level < level_count.
            size: (width, height) in pixels of ``level``.

        Raises:
            SlideReadError: the pixel data failed to decode (the message names file and region).
        """
        if not 0 <= level < self.level_count:
            raise ValueError(f"{self.path}: level {level} out of range 0..{self.level_count - 1}")
        width, height = (int(v) for v in size)
        if width <= 0 or height <= 0:
            raise ValueError(f"{self.path}: region size must be positive, got {size}")
        x, y = (int(v) for v in location)
        return self.reader.read_region((x, y), level, (width, height))

    def read_downsampled(self, downsample: float, band_height: int = 512) -> np.ndarray:
        """The whole slide at ``downsample`` level-0 pixels per output pixel, as RGB uint8.

        Reads the best pyramid level in blocks of at most ``READ_BLOCK`` x ``READ_BLOCK`` pixels
        of that level and area-resizes each (JPEG tiles two or more times finer than the output
        are decoded at reduced scale instead: ``gpfm.slide.lowres``), so memory stays near the
        size of the output whatever the slide's size. Output shape: (ceil(H/downsample),
        ceil(W/downsample), 3). ``band_height`` caps the output rows of a block.

        Raises:
            SlideReadError: pixel data failed to decode, or the slide has no level fine enough
                for one output pixel to come from at most ``READ_BLOCK`` x ``READ_BLOCK`` pixels.
        """
        if not (math.isfinite(downsample) and downsample > 0):
            raise ValueError(f"downsample must be a positive number, got {downsample}")
        width0, height0 = self.dimensions
        out_w, out_h = math.ceil(width0 / downsample), math.ceil(height0 / downsample)
        level = self.best_level_for_downsample(downsample)
        level_ds = self.level_downsamples[level]
        scale = downsample / level_ds  # level pixels per output pixel
        if scale >= 2 and self.native_tile_size(level) is not None:
            # JPEG tiles decode at 1/2-1/8 scale for far less than a full decode.
            from gpfm.slide.lowres import read_downsampled_jpeg

            reduced = read_downsampled_jpeg(self, level, downsample)
            if reduced is not None:
                return reduced
        if scale > READ_BLOCK:
            width, height = self.level_dimensions[level]
            raise SlideReadError(
                f"{self.path}: cannot read it at a downsample of {downsample:.4g} in bounded "
                f"memory: its coarsest usable level ({level}, {width} x {height} px) needs "
                f"{scale:.0f} x {scale:.0f} px per output pixel. Add a pyramid to the file "
                "(e.g. vips tiffsave --tile --pyramid)."
            )
        step_x = max(1, math.floor(READ_BLOCK / scale))  # output pixels per block side
        step_y = min(step_x, max(1, band_height))
        out = np.empty((out_h, out_w, 3), dtype=np.uint8)
        for top in range(0, out_h, step_y):
            rows = min(step_y, out_h - top)
            src_top = round(top * scale)
            src_bottom = max(src_top + 1, round((top + rows) * scale))
            for left in range(0, out_w, step_x):
                cols = min(step_x, out_w - left)
                src_left = round(left * scale)
                src_right = max(src_left + 1, round((left + cols) * scale))
                block = self.read_region(
                    (round(src_left * level_ds), round(src_top * level_ds)),
                    level,
                    (src_right - src_left, src_bottom - src_top),
                )
                if block.shape[:2] != (rows, cols):
                    resized = Image.fromarray(block).resize((cols, rows), Image.Resampling.BOX)
                    block = np.asarray(resized)
                out[top : top + rows, left : left + cols] = block
        return out

    def thumbnail(self, max_size: int = 1024) -> np.ndarray:
        """The whole slide, RGB uint8, scaled so that its long side is at most ``max_size`` px."""
        downsample = max(1.0, max(self.dimensions) / max_size)
        return self.read_downsampled(downsample)

    def close(self) -> None:
        self.reader.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        width, height = self.dimensions
        return (
            f"Slide({str(self.path)!r}, {width}x{height} px, {self.mpp:.4g} µm/px, "
            f"{self.level_count} levels, backend={self.backend!r})"
        )


def _candidate_backends(path: Path) -> list[str]:
    name = path.name.lower()
    if path.suffix.lower() in _IMAGE_SUFFIXES:
        return ["pillow"]
    if name.endswith((".ome.tif", ".ome.tiff")):
        return ["tifffile", "openslide"]  # OpenSlide would ignore the OME resolution
    if name.endswith(_TIFF_SUFFIXES):
        return ["openslide", "tifffile"]
    return ["openslide"]


def open_slide(path: str | Path, mpp: float | None = None, backend: str | None = None) -> Slide:
    """Open a whole-slide image.

    Args:
        path: SVS, NDPI, MRXS, SCN, generic tiled TIFF, DICOM (OpenSlide); flat TIFF and OME-TIFF
            (tifffile); PNG or JPEG (Pillow).
        mpp: level-0 resolution in µm/px, overriding the file's metadata (needed when the file
            records none, e.g. a plain TIFF or PNG).
        backend: "openslide", "tifffile" or "pillow"; by default chosen from the file, with
            tifffile as the fallback for TIFF files OpenSlide cannot open.

    Raises:
        UnsupportedSlideError: missing, corrupt or unsupported file.
        MissingResolutionError: no usable resolution in the file and no ``mpp`` given.
    """
    path = Path(path)
    if not path.is_file():
        raise UnsupportedSlideError(f"{path}: no such file")
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"backend must be one of {sorted(BACKENDS)}, got {backend!r}")
    names = [backend] if backend else _candidate_backends(path)
    failures: list[str] = []
    for name in names:
        try:
            reader = BACKENDS[name](path)
        except UnsupportedSlideError as error:
            failures.append(f"{name}: {error}")
            logger.debug("%s", error)
            continue
        try:
            return Slide(reader, resolve_mpp(reader.metadata_mpp, mpp, path))
        except BaseException:
            reader.close()
            raise
    raise UnsupportedSlideError(
        f"{path}: cannot open it as a slide ({'; '.join(failures)}). Check that the file is "
        "complete and in a supported format "
        "(SVS, NDPI, MRXS, SCN, TIFF/OME-TIFF, DICOM, PNG, JPEG)."
    )


__all__ = ["Slide", "SlideReadError", "open_slide"]
