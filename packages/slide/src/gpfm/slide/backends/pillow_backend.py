"""Pillow backend: plain PNG and JPEG images (held in memory, with a virtual pyramid)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
from PIL import Image, UnidentifiedImageError

from gpfm.slide.backends.base import (
    Size,
    check_backed_by_file,
    level_size,
    paste_clipped,
    read_virtual_level,
    to_rgb_uint8,
    virtual_pyramid,
)
from gpfm.slide.errors import SlideReadError, UnsupportedSlideError
from gpfm.slide.resolution import first_mpp, parse_number

# Pillow's default for a huge image is a decompression-bomb error; slides are legitimately large.
Image.MAX_IMAGE_PIXELS = None

MAX_PIXELS = 2**28
"""The largest PNG or JPEG held in memory (16,384² px, 768 MiB as RGB); larger: a pyramidal TIFF."""


class PillowReader:
    """A PNG or JPEG image, decoded once on open."""

    name: ClassVar[str] = "pillow"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            with Image.open(self.path) as opened:
                image: Image.Image = opened
                check_backed_by_file(self.path, image.size)
                if image.size[0] * image.size[1] > MAX_PIXELS:
                    raise UnsupportedSlideError(
                        f"{self.path}: {image.size[0]} x {image.size[1]} px is too large to hold "
                        f"in memory as a plain image (limit {MAX_PIXELS} px); convert it to a "
                        "tiled pyramidal TIFF (e.g. vips tiffsave --tile --pyramid)."
                    )
                info = dict(image.info)
                if image.mode not in ("RGB", "RGBA", "L", "LA"):
                    image = image.convert("RGBA" if "transparency" in info else "RGB")
                pixels = np.asarray(image)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, MemoryError) as error:
            raise UnsupportedSlideError(f"{self.path}: not a readable image: {error}") from error
        self._pixels = to_rgb_uint8(pixels)
        height, width = self._pixels.shape[:2]
        self._virtual = virtual_pyramid(width, height)
        self.level_dimensions: tuple[Size, ...] = tuple(
            level_size(width, height, ds) for ds in self._virtual
        )
        self.level_downsamples: tuple[float, ...] = tuple(float(ds) for ds in self._virtual)
        self.properties: dict[str, str] = {
            str(k): str(v) for k, v in info.items() if k != "icc_profile"
        }
        dpi = info.get("dpi")
        dots_per_inch = parse_number(dpi[0]) if isinstance(dpi, tuple) and dpi else None
        mpp = 25_400.0 / dots_per_inch if dots_per_inch and dots_per_inch > 0 else None
        self.metadata_mpp = first_mpp({"image dpi": mpp}, self.path)

    def native_tile_size(self, level: int) -> Size | None:
        return None

    def _read_level0(self, x: int, y: int, width: int, height: int) -> np.ndarray:
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        paste_clipped(out, self._pixels, 0, 0, x, y)
        return out

    def read_region(self, location: tuple[int, int], level: int, size: Size) -> np.ndarray:
        try:
            return read_virtual_level(self._read_level0, location, self._virtual[level], size)
        except Exception as error:  # pragma: no cover - in-memory pixels do not fail to decode
            raise SlideReadError(f"{self.path}: failed to read {location}: {error}") from error

    def close(self) -> None:
        self._pixels = np.empty((0, 0, 3), dtype=np.uint8)
