"""Resolution (µm per pixel) from slide metadata, validated against a plausible range."""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path

from gpfm.slide.errors import MissingResolutionError

logger = logging.getLogger(__name__)

MIN_MPP = 0.05
MAX_MPP = 20.0

# Micrometres per one unit of the TIFF ResolutionUnit / OME PhysicalSizeUnit.
_UM_PER_UNIT = {
    "inch": 25_400.0,
    "centimeter": 10_000.0,
    "cm": 10_000.0,
    "millimeter": 1_000.0,
    "mm": 1_000.0,
    "micrometer": 1.0,
    "µm": 1.0,
    "um": 1.0,
    "nanometer": 1e-3,
    "nm": 1e-3,
}


def mpp_from_resolution_tag(pixels_per_unit: float, unit: str | None) -> float | None:
    """µm/px from a TIFF ``XResolution`` (pixels per unit) and its ``ResolutionUnit`` name.

    Returns None when the unit is absent or "none" (the tag then only gives an aspect ratio).
    """
    if not unit or unit.lower() not in _UM_PER_UNIT or pixels_per_unit <= 0:
        return None
    return _UM_PER_UNIT[unit.lower()] / pixels_per_unit


def mpp_from_physical_size(size: float, unit: str | None) -> float | None:
    """µm/px from an OME ``PhysicalSizeX`` and its unit (default µm, as the OME schema says)."""
    factor = _UM_PER_UNIT.get((unit or "µm").lower())
    if factor is None or size <= 0:
        return None
    return size * factor


def aperio_mpp_text(description: str) -> str | None:
    """The text of the ``MPP = 0.4990`` field of an Aperio ImageDescription, if it has one."""
    match = re.search(r"\|\s*MPP\s*=\s*([^|\r\n]*)", description)
    return match.group(1).strip() if match else None


def mpp_from_aperio_description(description: str) -> float | None:
    """µm/px from the ``MPP = 0.4990`` field of an Aperio ImageDescription.

    None when the field is absent or is not a number (``-nan``, ``abc``): never raises.
    """
    return parse_number(aperio_mpp_text(description))


def parse_number(text: str | float | None) -> float | None:
    """A float from metadata text, or None when ``text`` is None or not a number; never raises."""
    if text is None:
        return None
    try:
        return float(text.strip() if isinstance(text, str) else text)
    except (TypeError, ValueError, OverflowError):
        return None


def plausible_mpp(mpp: float | str | None, source: str, path: Path | str) -> float | None:
    """Return ``mpp`` if it lies within 0.05–20 µm/px, else None with a warning naming the file.

    ``mpp`` may be the metadata's own text: anything that is not a finite number in range
    (``-nan``, ``abc``, ``1e999``) is treated as "no resolution", with a warning.
    """
    if mpp is None:
        return None
    value = parse_number(mpp)
    if value is None or not math.isfinite(value):
        logger.warning(
            "%s: %s gives %r, which is not a finite number of µm/px; treating the resolution "
            "as missing",
            path,
            source,
            mpp,
        )
        return None
    if MIN_MPP <= value <= MAX_MPP:
        return value
    logger.warning(
        "%s: %s gives %.4g µm/px, outside %.2g-%.2g µm/px; treating the resolution as missing",
        path,
        source,
        value,
        MIN_MPP,
        MAX_MPP,
    )
    return None


def first_mpp(candidates: Mapping[str, float | str | None], path: Path | str) -> float | None:
    """The first plausible value among ``{source name: mpp or its text}`` candidates, in order."""
    for source, value in candidates.items():
        mpp = plausible_mpp(value, source, path)
        if mpp is not None:
            return mpp
    return None


def resolve_mpp(metadata_mpp: float | None, override: float | None, path: Path | str) -> float:
    """The slide's level-0 µm/px: ``override`` when given, else the metadata value.

    Raises:
        MissingResolutionError: neither is available; the message says how to pass ``mpp``.
        ValueError: ``override`` is not a positive number.
    """
    if override is not None:
        if not (isinstance(override, int | float) and math.isfinite(override) and override > 0):
            raise ValueError(f"mpp must be a positive number of µm per pixel, got {override!r}")
        return float(override)
    if metadata_mpp is None:
        raise MissingResolutionError(
            f"{path}: the file records no usable resolution (µm per pixel). If you know it, "
            f"pass it: open_slide({str(path)!r}, mpp=0.25) in Python, or --slide-mpp 0.25 "
            "on the command line (0.25 µm/px is typical of 40x scans, 0.5 of 20x)."
        )
    return metadata_mpp
