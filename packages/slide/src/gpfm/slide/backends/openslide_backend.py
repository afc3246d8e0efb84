"""OpenSlide backend: SVS, NDPI, MRXS, SCN, generic tiled TIFF, DICOM and the other vendor formats.

Uses openslide-python with the OpenSlide library from the openslide-bin wheel (no system library).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import openslide

from gpfm.slide.backends.base import (
    Size,
    check_backed_by_file,
    check_tiff_extents,
    closed_on_error,
    composite_on_white,
    is_tiff,
)
from gpfm.slide.errors import SlideReadError, UnsupportedSlideError
from gpfm.slide.resolution import first_mpp, mpp_from_resolution_tag, parse_number


class OpenSlideReader:
    """A slide opened with OpenSlide."""

    name: ClassVar[str] = "openslide"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._osr = openslide.OpenSlide(self.path)
        except openslide.OpenSlideUnsupportedFormatError as error:
            raise UnsupportedSlideError(f"{self.path}: OpenSlide does not support it") from error
        except (openslide.OpenSlideError, OSError, ValueError) as error:
            raise UnsupportedSlideError(
                f"{self.path}: OpenSlide cannot open it: {error}"
            ) from error
        with closed_on_error(self.path, self._osr.close, "OpenSlide cannot read its metadata"):
            self.properties: dict[str, str] = dict(self._osr.properties)
            self.level_dimensions: tuple[Size, ...] = tuple(self._osr.level_dimensions)
            self.level_downsamples: tuple[float, ...] = tuple(self._osr.level_downsamples)
            if is_tiff(self.path):  # one file holds all the pixels: it must be big enough
                check_backed_by_file(self.path, self.level_dimensions[0])
                check_tiff_extents(self.path)
            self.metadata_mpp = self._metadata_mpp()

    def _metadata_mpp(self) -> float | None:
        props = self.properties
        candidates: dict[str, float | str | None] = {}
        if openslide.PROPERTY_NAME_MPP_X in props:
            candidates["openslide.mpp-x"] = props[openslide.PROPERTY_NAME_MPP_X]
        elif "aperio.MPP" in props:  # OpenSlide drops an unparsable one: say so
            candidates["aperio.MPP"] = props["aperio.MPP"]
        if "tiff.XResolution" in props:
            pixels_per_unit = parse_number(props["tiff.XResolution"])
            candidates["tiff.XResolution"] = (
                props["tiff.XResolution"]
                if pixels_per_unit is None
                else mpp_from_resolution_tag(pixels_per_unit, props.get("tiff.ResolutionUnit"))
            )
        return first_mpp(candidates, self.path)

    def native_tile_size(self, level: int) -> Size | None:
        width = parse_number(self.properties.get(f"openslide.level[{level}].tile-width"))
        height = parse_number(self.properties.get(f"openslide.level[{level}].tile-height"))
        if width is None or height is None or not (1 <= width < 2**31 and 1 <= height < 2**31):
            return None
        return int(width), int(height)

    def read_region(self, location: tuple[int, int], level: int, size: Size) -> np.ndarray:
        try:
            image = self._osr.read_region(location, level, size)
        except (openslide.OpenSlideError, MemoryError) as error:
            raise SlideReadError(
                f"{self.path}: failed to decode the region at {location} (level-0 px), level "
                f"{level}, size {size}: {error or 'out of memory'}. The file is damaged; "
                "re-export or re-scan it."
            ) from error
        return composite_on_white(np.asarray(image))

    def close(self) -> None:
        self._osr.close()
