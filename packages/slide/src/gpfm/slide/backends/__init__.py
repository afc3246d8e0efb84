"""Slide backends: each opens one family of formats and satisfies ``SlideReader``."""

from collections.abc import Callable
from pathlib import Path

from gpfm.slide.backends.base import SlideReader
from gpfm.slide.backends.openslide_backend import OpenSlideReader
from gpfm.slide.backends.pillow_backend import PillowReader
from gpfm.slide.backends.tiff_backend import TiffFileReader

BACKENDS: dict[str, Callable[[Path], SlideReader]] = {
    "openslide": OpenSlideReader,
    "tifffile": TiffFileReader,
    "pillow": PillowReader,
}

__all__ = ["BACKENDS", "OpenSlideReader", "PillowReader", "SlideReader", "TiffFileReader"]
