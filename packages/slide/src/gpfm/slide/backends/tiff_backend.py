"""tifffile backend: flat (non-pyramidal) TIFF, strip-based TIFF and OME-TIFF, read lazily.

Only the strips or tiles under a requested region are decoded (and kept in a small cache). A file
without a stored pyramid gets a virtual one whose levels are area-averaged from level 0.
"""

from __future__ import annotations

import logging
import math
import threading
import xml.etree.ElementTree as ElementTree
from collections import OrderedDict
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import tifffile

from gpfm.slide.backends.base import (
    Size,
    check_backed_by_file,
    check_tiff_extents,
    closed_on_error,
    level_size,
    paste_clipped,
    read_virtual_level,
    to_rgb_uint8,
    virtual_pyramid,
)
from gpfm.slide.errors import SlideReadError, UnsupportedSlideError
from gpfm.slide.resolution import (
    aperio_mpp_text,
    first_mpp,
    mpp_from_physical_size,
    mpp_from_resolution_tag,
    parse_number,
)

logger = logging.getLogger(__name__)

_CACHE_BYTES = 256 * 2**20
_MAX_SEGMENT_BYTES = 256 * 2**20  # a strip or tile decoded larger than this is refused


class _PageReader:
    """Decodes the segments (strips or tiles) of one TIFF page that cover a region."""

    def __init__(
        self, path: Path, tiff: tifffile.TiffFile, page: Any, lock: threading.Lock
    ) -> None:
        self._tiff = tiff
        self._page = page
        self._lock = lock
        self.width = int(page.imagewidth)
        self.height = int(page.imagelength)
        if page.is_tiled:
            self.segment_size: Size = (int(page.tilewidth), int(page.tilelength))
        else:
            self.segment_size = (
                self.width,
                int(min(page.rowsperstrip or self.height, self.height)),
            )
        seg_w, seg_h = self.segment_size
        if not (seg_w > 0 and seg_h > 0 and seg_w * seg_h * 4 <= _MAX_SEGMENT_BYTES):
            raise UnsupportedSlideError(
                f"{path}: it stores its pixels in strips or tiles of "
                f"{seg_w} x {seg_h} px, too large to decode in bounded memory; re-save it "
                "tiled (e.g. 256 x 256 px tiles)."
            )
        self._grid_width = math.ceil(self.width / self.segment_size[0])
        self._per_plane = self._grid_width * math.ceil(self.height / self.segment_size[1])
        self._planes = int(page.samplesperpixel) if page.planarconfig == 2 else 1
        self._cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self._cache_bytes = 0

    def _decode(self, index: int) -> np.ndarray:
        page = self._page
        with self._lock:
            self._tiff.filehandle.seek(page.dataoffsets[index])
            data = self._tiff.filehandle.read(page.databytecounts[index])
        segment, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
        if segment is None:
            raise ValueError(f"segment {index} is empty")
        return np.asarray(segment)[0]

    def segment(self, col: int, row: int) -> np.ndarray:
        """The decoded segment at grid position (col, row): (h, w, samples) as stored."""
        key = (col, row)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None:
                self._cache.move_to_end(key)
                return cached
        index = row * self._grid_width + col
        planes = [self._decode(index + plane * self._per_plane) for plane in range(self._planes)]
        pixels = to_rgb_uint8(planes[0] if len(planes) == 1 else np.concatenate(planes, axis=-1))
        with self._lock:
            self._cache[key] = pixels
            self._cache_bytes += pixels.nbytes
            while self._cache_bytes > _CACHE_BYTES and len(self._cache) > 1:
                _, evicted = self._cache.popitem(last=False)
                self._cache_bytes -= evicted.nbytes
        return pixels

    def read(self, x: int, y: int, width: int, height: int) -> np.ndarray:
        """RGB pixels of the region (x, y, width, height) of this page; white outside it."""
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        seg_w, seg_h = self.segment_size
        cols = range(max(0, x // seg_w), min(self._grid_width, math.ceil((x + width) / seg_w)))
        rows_total = math.ceil(self.height / seg_h)
        rows = range(max(0, y // seg_h), min(rows_total, math.ceil((y + height) / seg_h)))
        for row in rows:
            for col in cols:
                piece = self.segment(col, row)
                # Edge segments are padded to full size: crop to the image.
                piece = piece[: self.height - row * seg_h, : self.width - col * seg_w]
                paste_clipped(out, piece, col * seg_w, row * seg_h, x, y)
        return out


class TiffFileReader:
    """A TIFF or OME-TIFF opened with tifffile."""

    name: ClassVar[str] = "tifffile"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._tiff = tifffile.TiffFile(self.path)
        except Exception as error:
            raise UnsupportedSlideError(
                f"{self.path}: not a readable TIFF file: {error}"
            ) from error
        with closed_on_error(self.path, self._tiff.close, "not a readable TIFF file"):
            self._open_levels()

    def _open_levels(self) -> None:
        series = self._tiff.series[0]
        self._lock = threading.Lock()
        self.properties: dict[str, str] = {}
        stored_levels = [level.keyframe for level in series.levels]
        self._pages = [
            _PageReader(self.path, self._tiff, page, self._lock) for page in stored_levels
        ]
        base = self._pages[0]
        check_backed_by_file(self.path, (base.width, base.height))
        check_tiff_extents(self.path, self._tiff)
        try:
            base.segment(0, 0)
        except Exception as error:
            raise UnsupportedSlideError(
                f"{self.path}: tifffile cannot decode its pixel data "
                f"(compression {stored_levels[0].compression!r}): {error}"
            ) from error
        if len(self._pages) > 1:
            self._virtual: list[int] = []
            dims = [(page.width, page.height) for page in self._pages]
            self.level_dimensions: tuple[Size, ...] = tuple(dims)
            self.level_downsamples: tuple[float, ...] = tuple(
                base.width / w for w, _ in self.level_dimensions
            )
        else:
            self._virtual = virtual_pyramid(base.width, base.height)
            self.level_dimensions = tuple(
                level_size(base.width, base.height, ds) for ds in self._virtual
            )
            self.level_downsamples = tuple(float(ds) for ds in self._virtual)
        self.metadata_mpp = self._metadata_mpp(stored_levels[0])

    def _metadata_mpp(self, page: Any) -> float | None:
        candidates: dict[str, float | str | None] = {}
        if self._tiff.is_ome and self._tiff.ome_metadata:
            candidates["OME PhysicalSizeX"] = _ome_mpp(self._tiff.ome_metadata)
        description = page.description or ""
        if description:
            self.properties["tiff.ImageDescription"] = description
            candidates["Aperio MPP"] = aperio_mpp_text(description)
        candidates["TIFF XResolution"] = _resolution_tag_mpp(page)
        return first_mpp(candidates, self.path)

    def native_tile_size(self, level: int) -> Size | None:
        if self._virtual:
            return self._pages[0].segment_size if level == 0 else None
        return self._pages[level].segment_size

    def read_region(self, location: tuple[int, int], level: int, size: Size) -> np.ndarray:
        try:
            if self._virtual:
                return read_virtual_level(self._pages[0].read, location, self._virtual[level], size)
            downsample = self.level_downsamples[level]
            x, y = (round(c / downsample) for c in location)
            return self._pages[level].read(x, y, *size)
        except Exception as error:
            raise SlideReadError(
                f"{self.path}: failed to decode the region at {location} (level-0 px), level "
                f"{level}, size {size}: {error}"
            ) from error

    def close(self) -> None:
        self._tiff.close()


def _resolution_tag_mpp(page: Any) -> float | None:
    """µm/px from a page's XResolution and ResolutionUnit tags; None if absent or malformed."""
    x_resolution = page.tags.get("XResolution")
    unit = page.tags.get("ResolutionUnit")
    if x_resolution is None or unit is None:
        return None
    value, unit_code = x_resolution.value, unit.value
    if not (isinstance(value, tuple) and len(value) == 2 and isinstance(unit_code, int)):
        return None
    numerator, denominator = value
    unit_name = {2: "inch", 3: "centimeter"}.get(unit_code)
    if not denominator or unit_name is None:
        return None
    return mpp_from_resolution_tag(numerator / denominator, unit_name)


def _ome_mpp(ome_xml: str) -> float | None:
    try:
        root = ElementTree.fromstring(ome_xml)
    except ElementTree.ParseError:
        return None
    for element in root.iter():
        if element.tag.endswith("}Pixels") or element.tag == "Pixels":
            size = parse_number(element.get("PhysicalSizeX"))
            if size is not None:
                return mpp_from_physical_size(size, element.get("PhysicalSizeXUnit"))
    return None
