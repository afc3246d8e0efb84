"""The exceptions gpfm.slide raises; every message names the file and says what to do."""

from __future__ import annotations


class SlideError(Exception):
    """Base class of every error raised by gpfm.slide."""


class UnsupportedSlideError(SlideError):
    """The file is missing, corrupt, or in a format no backend can open."""


class MissingResolutionError(SlideError):
    """The slide's resolution (µm/px) is unknown and was not given with ``mpp=``."""


class SlideReadError(SlideError):
    """Pixel data of an opened slide failed to decode."""


class CoordsFileError(SlideError):
    """A coordinates file is missing or damaged, or a field has the wrong shape, type or value."""


class StoreError(SlideError):
    """A patch store is missing, damaged or of a newer format; the message names the file."""
