"""Tissue detection on a low-resolution image of the slide.

Saturation thresholding (H&E is coloured, glass is grey-white), with guards that matter on real
scans: very dark pixels (scanner borders, black pen, dust) and green/blue pen ink are not tissue.
The threshold sits a margin above the saturation of this slide's own glass (the most common
saturation among bright pixels), so a colour cast on the glass is not tissue, faint tissue is,
and a blank slide stays empty. (Otsu's threshold, used elsewhere, lands between glass and strong
stain and so drops faint tissue.)
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from gpfm.slide.slide import Slide

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class TissueMask:
    """Where the tissue is, at low resolution.

    Attributes:
        mask: (height, width) bool; True on tissue.
        mpp: µm per mask pixel.
        downsample: level-0 pixels per mask pixel (``mpp / slide mpp``).
        slide_dimensions: (width, height) of the slide's level 0 in pixels.
    """

    mask: np.ndarray
    mpp: float
    downsample: float
    slide_dimensions: tuple[int, int]

    @property
    def tissue_fraction(self) -> float:
        """Fraction of the slide's area that is tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    @property
    def area_mm2(self) -> float:
        """Tissue area in mm²."""
        return float(self.mask.sum()) * (self.mpp / 1000.0) ** 2

    def to_geojson(
        self, name: str = "Tissue", color: tuple[int, int, int] = (20, 160, 60)
    ) -> dict[str, Any]:
        """Tissue outlines as a GeoJSON FeatureCollection in level-0 pixels, for QuPath.

        One Polygon feature per tissue piece, with its holes, and the properties QuPath reads
        (``objectType`` "annotation", ``classification`` ``{"name", "color"}``). The geometry
        is valid per RFC 7946 and OGC simple features: rings closed, with 4 or more positions,
        simple (no self-intersection), holes inside their exterior and apart from it, exterior
        rings counter-clockwise and holes clockwise in the (x, y) numbers as written. The
        coordinates are pixels, not longitude/latitude, as QuPath and other slide viewers
        expect. Outlines follow the mask's pixel edges to within a quarter mask pixel (mask
        pixels touching only at a corner are joined by one pixel, so no ring pinches).

        Args:
            name: the classification QuPath gives the annotations.
            color: its (r, g, b) colour in QuPath.
        """
        features: list[dict[str, Any]] = []
        rgb = [int(c) for c in color]
        # At twice the mask's resolution, contours through boundary pixel centres enclose every
        # piece with area, so thin strips and single pixels still give valid rings.
        fine = np.repeat(np.repeat(_join_corner_contacts(self.mask), 2, axis=0), 2, axis=1)
        contours, hierarchy = cv2.findContours(fine, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        if hierarchy is None:
            return {"type": "FeatureCollection", "features": features}
        links = hierarchy[0]  # per contour: next, previous, first child, parent
        for index, contour in enumerate(contours):
            if links[index][3] != -1:
                continue
            rings = [self._ring(contour, exterior=True)]
            child = links[index][2]
            while child != -1:
                rings.append(self._ring(contours[child], exterior=False))
                child = links[child][0]
            features.append(
                {
                    "type": "Feature",
                    "geometry": {"type": "Polygon", "coordinates": rings},
                    "properties": {
                        "objectType": "annotation",
                        "classification": {"name": name, "color": list(rgb)},
                    },
                }
            )
        return {"type": "FeatureCollection", "features": features}

    def _ring(self, contour: np.ndarray, exterior: bool) -> list[list[float]]:
        # Contour points are centres of half-size mask pixels; map them to level-0 pixels.
        points = (contour[:, 0, :].astype(np.float64) + 0.5) * (self.downsample / 2)
        # RFC 7946's right-hand rule holds on the numbers as written (x right, y down here):
        # exterior rings have a positive shoelace sum, holes a negative one.
        x, y = points[:, 0], points[:, 1]
        signed = float(np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y))
        if (signed > 0) != exterior:
            points = points[::-1]
        ring = [[round(float(px), 3), round(float(py), 3)] for px, py in points]
        ring.append(ring[0])
        return ring


def _join_corner_contacts(mask: np.ndarray) -> np.ndarray:
    """The mask as uint8, with one pixel set in every 2 x 2 block of diagonal-only contact.

    Pixels touching only at a corner would make an outline that touches itself there; filling
    one of the two empty pixels of such a block removes the pinch (repeated until none is left,
    as filling can make a new one).
    """
    out = np.ascontiguousarray(mask, dtype=np.uint8).copy()
    while out.shape[0] > 1 and out.shape[1] > 1:
        a, b = out[:-1, :-1], out[:-1, 1:]
        c, d = out[1:, :-1], out[1:, 1:]
        # [[1, 0], [0, 1]] fills the top-right pixel; [[0, 1], [1, 0]] the top-left one.
        falling = (a == 1) & (d == 1) & (b == 0) & (c == 0)
        rising = (b == 1) & (c == 1) & (a == 0) & (d == 0)
        if not falling.any() and not rising.any():
            break
        rows, cols = np.nonzero(falling)
        out[rows, cols + 1] = 1
        rows, cols = np.nonzero(rising)
        out[rows, cols] = 1
    return out


def segment_tissue(
    slide: Slide,
    mpp: float = 8.0,
    *,
    min_saturation: int = 15,
    glass_margin: int = 12,
    min_value: int = 30,
    exclude_pen: bool = True,
    blur_um: float = 56.0,
    close_um: float = 32.0,
    min_area_um2: float = 20_000.0,
    max_hole_area_um2: float = 50_000.0,
    max_mask_side: int = 8192,
) -> TissueMask:
    """Find the tissue of a slide.

    Args:
        slide: an opened slide.
        mpp: resolution of the mask in µm/px (raised if the mask would exceed ``max_mask_side``).
        min_saturation: HSV saturation (0-255) below which a pixel is never tissue.
        glass_margin: tissue is at least this much more saturated (0-255) than the glass.
        min_value: HSV value (brightness, 0-255) below which a pixel is never tissue (scanner
            borders, black ink).
        exclude_pen: drop vivid green to blue pixels (hue 70°-240°, saturation > 100), i.e. ink.
        blur_um: median-blur window in µm.
        close_um: morphological closing diameter in µm (joins tissue split by thin gaps).
        min_area_um2: tissue pieces smaller than this (µm²) are dropped.
        max_hole_area_um2: holes smaller than this (µm²) are filled; larger ones (lumens, tears)
            are kept.
        max_mask_side: cap on the mask's long side in pixels (bounds memory on huge slides).
    """
    width0, height0 = slide.dimensions
    mpp = max(mpp, slide.mpp, slide.mpp * max(width0, height0) / max_mask_side)
    downsample = mpp / slide.mpp
    rgb = slide.read_downsampled(downsample)
    mask = tissue_mask_from_rgb(
        rgb,
        mpp,
        min_saturation=min_saturation,
        glass_margin=glass_margin,
        min_value=min_value,
        exclude_pen=exclude_pen,
        blur_um=blur_um,
        close_um=close_um,
        min_area_um2=min_area_um2,
        max_hole_area_um2=max_hole_area_um2,
    )
    logger.info("%s: tissue covers %.1f%% of the slide", slide.path, 100 * mask.mean())
    return TissueMask(mask=mask, mpp=mpp, downsample=downsample, slide_dimensions=(width0, height0))


def tissue_mask_from_rgb(
    rgb: np.ndarray,
    mpp: float,
    *,
    min_saturation: int = 15,
    glass_margin: int = 12,
    min_value: int = 30,
    exclude_pen: bool = True,
    blur_um: float = 56.0,
    close_um: float = 32.0,
    min_area_um2: float = 20_000.0,
    max_hole_area_um2: float = 50_000.0,
) -> np.ndarray:
    """The tissue mask (bool) of an RGB uint8 image whose pixels are ``mpp`` µm wide.

    See ``segment_tissue`` for the parameters.
    """
    if rgb.size == 0:
        return np.zeros(rgb.shape[:2], dtype=bool)
    hsv = cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2HSV)
    hue, saturation, value = hsv[..., 0], hsv[..., 1], hsv[..., 2]
    blur = _odd(blur_um / mpp)
    if blur >= 3:
        saturation = cv2.medianBlur(saturation, min(blur, 255))
    threshold = max(min_saturation, glass_saturation(saturation, value) + glass_margin)
    tissue = (saturation > threshold) & (value >= min_value)
    if exclude_pen:
        # Ink is green to blue (hue 70°-240°; OpenCV halves degrees) and vividly saturated;
        # haematoxylin can look blue too, but pale (saturation well under 100 of 255).
        tissue &= ~((hue >= 35) & (hue <= 120) & (hsv[..., 1] > 100))
    close = _odd(close_um / mpp)
    if close >= 3:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (close, close))
        tissue = cv2.morphologyEx(tissue.astype(np.uint8), cv2.MORPH_CLOSE, kernel).astype(bool)
    pixel_area = mpp * mpp
    tissue = _fill_small_holes(tissue, max_hole_area_um2 / pixel_area)
    return _drop_small_pieces(tissue, min_area_um2 / pixel_area)


def glass_saturation(
    saturation: np.ndarray, value: np.ndarray, bright: int = 200, most: int = 40
) -> int:
    """The most common saturation (0-255) among bright, nearly grey pixels: the glass.

    Glass is bright (HSV value >= ``bright``) and at most ``most`` saturated, which bright pink
    stroma is not. Returns 0 when fewer than 1% of the pixels qualify (no glass in view).
    """
    glass = saturation[(value >= bright) & (saturation <= most)]
    if glass.size < 0.01 * saturation.size:
        return 0
    return int(np.argmax(np.bincount(glass.ravel(), minlength=256)))


def _odd(pixels: float) -> int:
    size = max(1, round(pixels))
    return size if size % 2 else size + 1


def _drop_small_pieces(mask: np.ndarray, min_pixels: float) -> np.ndarray:
    count, labels, stats, _ = cv2.connectedComponentsWithStats(
        mask.astype(np.uint8), connectivity=8
    )
    keep = stats[:, cv2.CC_STAT_AREA] >= min_pixels
    keep[0] = False  # background
    return keep[labels] if count > 1 else np.zeros_like(mask, dtype=bool)


def _fill_small_holes(mask: np.ndarray, max_pixels: float) -> np.ndarray:
    # Holes are background components that do not touch the image border.
    background = (~mask).astype(np.uint8)
    count, labels, stats, _ = cv2.connectedComponentsWithStats(background, connectivity=4)
    if count <= 1:
        return mask
    left, top = stats[:, cv2.CC_STAT_LEFT], stats[:, cv2.CC_STAT_TOP]
    right = left + stats[:, cv2.CC_STAT_WIDTH]
    bottom = top + stats[:, cv2.CC_STAT_HEIGHT]
    height, width = mask.shape
    inner = (left > 0) & (top > 0) & (right < width) & (bottom < height)
    fill = inner & (stats[:, cv2.CC_STAT_AREA] <= max_pixels)
    fill[0] = False
    return mask | (fill[labels] & background.astype(bool))


__all__ = ["TissueMask", "segment_tissue", "tissue_mask_from_rgb"]
