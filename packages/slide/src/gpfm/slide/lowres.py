"""Low-resolution reads of JPEG-tiled levels by reduced-scale decoding (DCT scaling 1/2-1/8).

A thumbnail or tissue mask of a slide without a usable pyramid level would otherwise decode every
pixel of level 0 and throw nearly all of them away. libjpeg-turbo can decode a JPEG at 1/2, 1/4
or 1/8 of its size straight from the DCT coefficients (skipping most of the inverse transform and
colour conversion), so each stored tile is decoded at the largest of those reductions that does
not go below the requested resolution, and the rest of the reduction is an area average, done in
bands of tile rows: the full-resolution image is never held.

Used by ``Slide.read_downsampled`` when the level it reads is a JPEG-tiled TIFF page whose tiles
decode to exactly what the backend returns (the same probe as the fast tile reader). Reduced-scale
decoding approximates an area average of the full decode (within a few grey levels); any tile that
does not decode cleanly sends the whole read back to the exact path, which reports the damage.
"""

from __future__ import annotations

import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import simplejpeg
from PIL import Image

from gpfm.slide.reader import _direct_tiff_decoder, _TiffPageDecoder
from gpfm.slide.slide import Slide

logger = logging.getLogger(__name__)

JPEG_SCALES = (8, 4, 2)
"""The reductions libjpeg-turbo's DCT scaling gives cheaply, largest first."""


def jpeg_scale(level_pixels_per_output: float, tile_size: tuple[int, int]) -> int | None:
    """The largest JPEG reduction that keeps at least one decoded pixel per output pixel and
    divides the tile size, or None when none applies (then decoding at full size is no worse)."""
    for factor in JPEG_SCALES:
        if factor <= level_pixels_per_output and all(side % factor == 0 for side in tile_size):
            return factor
    return None


def read_downsampled_jpeg(
    slide: Slide, level: int, downsample: float, num_workers: int | None = None
) -> np.ndarray | None:
    """The whole slide at ``downsample`` (level-0 px per output px) from reduced-scale decodes of
    ``level``'s JPEG tiles, as RGB uint8 of shape (ceil(H/downsample), ceil(W/downsample), 3).

    Returns None when the level is not a JPEG-tiled TIFF page that decodes like the backend,
    when no reduction applies, or when a tile does not decode cleanly (the caller then reads
    the exact way).
    """
    native = slide.native_tile_size(level)
    if native is None:
        return None
    scale = downsample / slide.level_downsamples[level]  # level pixels per output pixel
    factor = jpeg_scale(scale, native)
    if factor is None:
        return None
    decoder = _direct_tiff_decoder(slide, level, native)
    if decoder is None:
        return None
    width0, height0 = slide.dimensions
    out_size = (math.ceil(width0 / downsample), math.ceil(height0 / downsample))
    try:
        return _BandReducer(decoder, factor, scale / factor, out_size, num_workers).read()
    except Exception as error:  # damaged data: the exact path decides and reports
        logger.debug("%s: reduced-scale JPEG decoding failed: %r", slide.path, error)
        return None
    finally:
        decoder.close()


class _BandReducer:
    """Decodes tile rows at 1/``factor`` and area-reduces them by ``residual`` into the output,
    keeping only the decoded rows that later output rows still need."""

    def __init__(
        self,
        decoder: _TiffPageDecoder,
        factor: int,
        residual: float,
        out_size: tuple[int, int],
        num_workers: int | None,
    ) -> None:
        self.decoder = decoder
        self.factor = factor
        self.residual = residual  # decoded pixels per output pixel
        self.out_w, self.out_h = out_size
        page = decoder.page
        self.tile_w, self.tile_h = int(page.tilewidth), int(page.tilelength)
        self.cols = math.ceil(page.imagewidth / self.tile_w)
        self.rows = math.ceil(page.imagelength / self.tile_h)
        self.image_w, self.image_h = int(page.imagewidth), int(page.imagelength)
        # The output's extent in decoded pixels (a fraction of a pixel past the image: glass).
        self.span_w = math.ceil(self.out_w * residual)
        self.workers = num_workers or min(8, os.cpu_count() or 1)

    def _decode(self, col: int, row: int) -> np.ndarray:
        jpeg = self.decoder.stream(col, row)
        height, width = self.tile_h // self.factor, self.tile_w // self.factor
        if jpeg is None:  # never written: glass
            return np.full((height, width, 3), 255, np.uint8)
        tile = simplejpeg.decode_jpeg(
            jpeg, colorspace="RGB", strict=True, min_height=height, min_width=width
        )
        if tile.shape != (height, width, 3):
            raise ValueError(f"tile ({col}, {row}) decodes to {tile.shape} at 1/{self.factor}")
        return tile

    def _tile_row(self, pool: ThreadPoolExecutor, row: int) -> np.ndarray:
        band_h = self.tile_h // self.factor
        band = np.full(
            (band_h, max(self.span_w, self.cols * self.tile_w // self.factor), 3), 255, np.uint8
        )
        step = self.tile_w // self.factor
        for col, tile in enumerate(pool.map(lambda c: self._decode(c, row), range(self.cols))):
            band[:, col * step : (col + 1) * step] = tile
        # Crop the padding of edge tiles to the image: beyond it is glass.
        valid_w = math.ceil(self.image_w / self.factor)
        band[:, valid_w:] = 255
        valid_h = math.ceil((self.image_h - row * self.tile_h) / self.factor)
        return band[: min(band_h, valid_h), : self.span_w]

    def read(self) -> np.ndarray:
        out = np.empty((self.out_h, self.out_w, 3), np.uint8)
        held = np.empty((0, self.span_w, 3), np.uint8)  # decoded rows not yet fully used
        held_top = 0  # decoded-row index of held[0]
        next_out = 0
        with ThreadPoolExecutor(self.workers, thread_name_prefix="gpfm-lowres") as pool:
            for row in range(self.rows + 1):
                if row < self.rows:
                    held = np.concatenate([held, self._tile_row(pool, row)])
                else:  # past the image: pad with glass up to the output's last row
                    needed = math.ceil(self.out_h * self.residual) - held_top - len(held)
                    glass = np.full((max(0, needed), self.span_w, 3), 255, np.uint8)
                    held = np.concatenate([held, glass])
                # Output rows whose source rows are all decoded.
                ready = min(self.out_h, math.floor((held_top + len(held)) / self.residual))
                if ready > next_out:
                    top = next_out * self.residual - held_top
                    bottom = ready * self.residual - held_top
                    image = Image.fromarray(held)
                    box = (0.0, top, self.out_w * self.residual, min(bottom, len(held)))
                    reduced = image.resize(
                        (self.out_w, ready - next_out), Image.Resampling.BOX, box=box
                    )
                    out[next_out:ready] = np.asarray(reduced)
                    drop = max(0, math.floor(ready * self.residual) - held_top)
                    held, held_top = held[drop:], held_top + drop
                    next_out = ready
        return out
