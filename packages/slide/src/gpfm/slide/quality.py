"""Patch quality: reject blank, blurred and near-duplicate patches, by thresholds a user sets.

Three measures of a (H, W, 3) uint8 RGB patch, each with one threshold:

- **blank** — ``tissue_fraction``: the fraction of pixels whose HSV saturation
  ``255 x (max - min) / max`` of R, G, B is at least ``min_saturation`` and whose value
  (brightness, ``max``, 0-255) is at least ``min_value``. Glass
  is grey-white (unsaturated), scanner borders and dust are dark. A patch is blank when this
  fraction is below ``min_tissue``.
- **blurred** — ``sharpness``: the variance of the Laplacian (3 x 3 aperture) of the patch's
  grey levels (0-255), measured at the patch's own resolution. Out-of-focus scans and smeared
  areas have few edges and a low variance. A patch is blurred when it is below
  ``min_sharpness``.
- **near-duplicate** — ``perceptual_hash``: a 64-bit DCT hash (the grey patch reduced to
  32 x 32 px, the 8 x 8 lowest frequencies of its DCT compared with their median). A patch is a
  near-duplicate when the Hamming distance of its hash to a patch already kept from the same
  slide is at most ``max_hash_distance`` (overlapping tiles, re-scanned areas, tiles of the
  same blank-ish region). Duplicates across slides are not looked for.

Checks run in that order and a patch is rejected for the first it fails. Setting
``min_tissue=0``, ``min_sharpness=0`` or ``max_hash_distance=-1`` turns a check off.
"""

from __future__ import annotations

import functools
import threading
from dataclasses import dataclass, field

import cv2
import numpy as np

BLANK = "blank"
BLURRED = "blurred"
DUPLICATE = "duplicate"
REJECTION_REASONS = (BLANK, BLURRED, DUPLICATE)

_HASH_SIDE = 32  # px of the reduced grey patch the DCT hash is computed on
_HASH_BAND = 8  # the lowest 8 x 8 frequencies make the 64 bits


@dataclass(frozen=True)
class QualityThresholds:
    """When a patch is rejected (see the module docstring for how each measure is made).

    Attributes:
        min_tissue: least fraction of tissue pixels, in [0, 1]; below it a patch is blank.
        min_saturation: HSV saturation (0-255) from which a pixel counts as tissue.
        min_value: HSV value (0-255) from which a pixel counts as tissue (darker is not).
        min_sharpness: least variance of the Laplacian of the grey patch; below it, blurred.
        max_hash_distance: a patch whose perceptual hash is this many bits or fewer (of 64)
            from a kept patch of the same slide is a near-duplicate; -1 keeps every patch.
    """

    min_tissue: float = 0.25
    min_saturation: int = 20
    min_value: int = 30
    min_sharpness: float = 20.0
    max_hash_distance: int = 4

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_tissue <= 1.0:
            raise ValueError(f"min_tissue is a fraction in [0, 1], got {self.min_tissue!r}")
        for name in ("min_saturation", "min_value"):
            if not 0 <= getattr(self, name) <= 255:
                raise ValueError(f"{name} is an HSV level in [0, 255], got {getattr(self, name)!r}")
        if self.min_sharpness < 0:
            raise ValueError(f"min_sharpness must be >= 0, got {self.min_sharpness!r}")
        if not -1 <= self.max_hash_distance <= 64:
            raise ValueError(
                f"max_hash_distance is a number of bits in [-1, 64], got {self.max_hash_distance!r}"
            )


class _Scratch(threading.local):
    """Arrays the measures write into, one set per thread, reused from patch to patch: fresh
    arrays of a patch's size cost more (page faults) than the measures' arithmetic."""

    def __init__(self) -> None:
        self.shape: tuple[int, int] | None = None
        self.u8: list[np.ndarray] = []
        self.laplacian = np.empty(0, np.int16)

    def arrays(self, height: int, width: int) -> list[np.ndarray]:
        """Eight (height, width) uint8 arrays; ``self.laplacian`` an int16 one."""
        if self.shape != (height, width):
            self.u8 = [np.empty((height, width), np.uint8) for _ in range(8)]
            self.laplacian = np.empty((height, width), np.int16)
            self.shape = (height, width)
        return self.u8


_scratch = _Scratch()


def tissue_fraction(rgb: np.ndarray, min_saturation: int = 20, min_value: int = 30) -> float:
    """Fraction of the pixels of an RGB uint8 patch that are tissue (saturated, not dark).

    A pixel is tissue when its value ``V = max(R, G, B)`` is at least ``min_value`` and its
    saturation ``255 x (V - min(R, G, B)) / V`` is at least ``min_saturation`` (HSV's, unrounded).
    """
    rgb = np.ascontiguousarray(rgb)
    if rgb.shape[0] * rgb.shape[1] == 0:
        return 0.0
    red, green, blue, value, low, spread, needed, _ = _scratch.arrays(*rgb.shape[:2])
    cv2.split(rgb, [red, green, blue])
    cv2.max(cv2.max(red, green, dst=value), blue, dst=value)
    cv2.min(cv2.min(red, green, dst=low), blue, dst=low)
    cv2.subtract(value, low, dst=spread)
    # saturation >= s  <=>  spread >= s x V / 255: one lookup per pixel instead of a division
    cv2.LUT(value, _spread_needed(min_saturation, min_value), dst=needed)
    tissue = cv2.compare(spread, needed, cv2.CMP_GE, dst=low)
    return cv2.countNonZero(tissue) / tissue.size


@functools.lru_cache(maxsize=16)
def _spread_needed(min_saturation: int, min_value: int) -> np.ndarray:
    """The least max - min of a tissue pixel, per value V (256 entries; 256 = never)."""
    values = np.arange(256)
    needed = np.ceil(min_saturation * values / 255).astype(np.int64)
    needed[values < min_value] = 256
    if min_saturation > 0:
        needed[0] = 256  # black has no saturation
    # uint8 cannot say 256; a spread of 255 needs V = 255, which is never below min_value
    return np.minimum(needed, 255).astype(np.uint8).reshape(1, 256)


def _grey(rgb: np.ndarray) -> np.ndarray:
    """The grey levels of ``rgb``, in this thread's scratch array (valid until its next use)."""
    rgb = np.ascontiguousarray(rgb)
    grey = _scratch.arrays(*rgb.shape[:2])[7]
    return cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY, dst=grey)


def sharpness(rgb: np.ndarray) -> float:
    """Variance of the Laplacian (3 x 3) of an RGB uint8 patch's grey levels (0-255)."""
    return _grey_sharpness(_grey(rgb))


def _grey_sharpness(grey: np.ndarray) -> float:
    if grey.size == 0:
        return 0.0
    if grey.shape != _scratch.laplacian.shape:
        _scratch.arrays(*grey.shape)
    # int16 holds every 3 x 3 Laplacian of 8-bit values exactly (|value| <= 4 x 255), and the
    # sums below are exact in float64 (below 2^53 for patches of up to ~8,000 x 8,000 px).
    laplacian = cv2.Laplacian(grey, cv2.CV_16S, dst=_scratch.laplacian, ksize=1)
    count = laplacian.size
    total = cv2.sumElems(laplacian)[0]
    squares = cv2.norm(laplacian, cv2.NORM_L2SQR)
    return max(0.0, squares / count - (total / count) ** 2)


def perceptual_hash(rgb: np.ndarray) -> int:
    """The 64-bit DCT perceptual hash of an RGB uint8 patch, as an unsigned int."""
    return _grey_hash(_grey(rgb))


def _grey_hash(grey: np.ndarray) -> int:
    small = cv2.resize(grey, (_HASH_SIDE, _HASH_SIDE), interpolation=cv2.INTER_AREA)
    band = cv2.dct(small.astype(np.float32))[:_HASH_BAND, :_HASH_BAND]
    bits = (band > np.median(band)).ravel()
    return int(np.packbits(bits).view(">u8")[0])


def hamming_distances(hashes: np.ndarray, value: int) -> np.ndarray:
    """Bits in which each of ``hashes`` (uint64 array) differs from ``value``."""
    differ = np.bitwise_xor(hashes.astype(np.uint64), np.uint64(value))
    return np.unpackbits(differ.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)


@dataclass(frozen=True)
class PatchMeasures:
    """The three measures of one patch (see the module docstring)."""

    tissue_fraction: float
    sharpness: float
    phash: int


def measure(rgb: np.ndarray, thresholds: QualityThresholds) -> PatchMeasures:
    """Tissue fraction, sharpness and perceptual hash of an RGB uint8 patch."""
    grey = _grey(rgb)  # once, for both
    return PatchMeasures(
        tissue_fraction(rgb, thresholds.min_saturation, thresholds.min_value),
        _grey_sharpness(grey),
        _grey_hash(grey),
    )


@dataclass
class QualityFilter:
    """Decides patch by patch, remembering the hashes of the patches it kept (one slide).

    ``check(rgb)`` returns ``(None, measures)`` for a kept patch and ``(reason, measures)`` for
    a rejected one; ``rejected`` counts the reasons.
    """

    thresholds: QualityThresholds = field(default_factory=QualityThresholds)
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REJECTION_REASONS, 0))
    _hashes: list[int] = field(default_factory=list)

    def check(self, rgb: np.ndarray) -> tuple[str | None, PatchMeasures]:
        """Measure ``rgb`` and say why it is rejected (None: kept, its hash remembered)."""
        measures = measure(rgb, self.thresholds)
        reason = self.reason(measures)
        self.record(reason, measures)
        return reason, measures

    def record(self, reason: str | None, measures: PatchMeasures) -> None:
        """Count a rejection, or remember a kept patch's hash (for the duplicate check)."""
        if reason is None:
            self._hashes.append(measures.phash)
        else:
            self.rejected[reason] += 1

    def reason(self, measures: PatchMeasures) -> str | None:
        """Why a patch with ``measures`` is rejected now, or None; remembers nothing."""
        t = self.thresholds
        if measures.tissue_fraction < t.min_tissue:
            return BLANK
        if measures.sharpness < t.min_sharpness:
            return BLURRED
        if t.max_hash_distance >= 0 and self._hashes:
            kept = np.fromiter(self._hashes, dtype=np.uint64, count=len(self._hashes))
            if int(hamming_distances(kept, measures.phash).min()) <= t.max_hash_distance:
                return DUPLICATE
        return None


__all__ = [
    "BLANK",
    "BLURRED",
    "DUPLICATE",
    "REJECTION_REASONS",
    "PatchMeasures",
    "QualityFilter",
    "QualityThresholds",
    "hamming_distances",
    "measure",
    "perceptual_hash",
    "sharpness",
    "tissue_fraction",
]
