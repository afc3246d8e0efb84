"""OpenSlide backend: SVS, NDPI, MRXS, SCN, generic tiled TIFF, DICOM and the other vendor formats.

Uses openslide-python with the OpenSlide library from the openslide-bin wheel (no system library).
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np
import openslide

from gpfm.slide.backends.base import Size, composite_on_white
from gpfm.slide.errors import SlideReadError, UnsupportedSlideError
from gpfm.slide.resolution import first_mpp, mpp_from_resolution_tag


class OpenSlideReader:
    """A slide opened with OpenSlide."""

    name: ClassVar[str] = "openslide"

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._osr = openslide.OpenSlide(self.path)
        except openslide.OpenSlideUnsupportedFormatError as error:
            raise UnsupportedSlideError(f"{self.path}: OpenSlide does not support it") from error
        except (openslide.OpenSlideError, OSError) as error:
            raise UnsupportedSlideError(
                f"{self.path}: OpenSlide cannot open it: {error}"
            ) from error
        self.properties: dict[str, str] = dict(self._osr.properties)
        self.level_dimensions: tuple[Size, ...] = tuple(self._osr.level_dimensions)
        self.level_downsamples: tuple[float, ...] = tuple(self._osr.level_downsamples)
        self.metadata_mpp = self._metadata_mpp()

    def _metadata_mpp(self) -> float | None:
        props = self.properties
        candidates: dict[str, float | None] = {}
        if openslide.PROPERTY_NAME_MPP_X in props:
            candidates["openslide.mpp-x"] = float(props[openslide.PROPERTY_NAME_MPP_X])
        if "tiff.XResolution" in props:
            candidates["tiff.XResolution"] = mpp_from_resolution_tag(
                float(props["tiff.XResolution"]), props.get("tiff.ResolutionUnit")
            )
        return first_mpp(candidates, self.path)

    def native_tile_size(self, level: int) -> Size | None:
        width = self.properties.get(f"openslide.level[{level}].tile-width")
        height = self.properties.get(f"openslide.level[{level}].tile-height")
        return (int(width), int(height)) if width and height else None

    def read_region(self, location: tuple[int, int], level: int, size: Size) -> np.ndarray:
        try:
            image = self._osr.read_region(location, level, size)
        except openslide.OpenSlideError as error:
            raise SlideReadError(
                f"{self.path}: failed to decode the region at {location} (level-0 px), level "
                f"{level}, size {size}: {error}. The file is damaged; re-export or re-scan it."
            ) from error
        return composite_on_white(np.asarray(image))

    def close(self) -> None:
        self._osr.close()
