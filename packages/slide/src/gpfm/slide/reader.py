"""Fast tile reading: every stored (native) tile of the file is decoded once, from threads.

A tile of a ``Tiles`` grid rarely lines up with the file's own JPEG tiles, so reading it with one
``read_region`` call per tile (as CLAM and TRIDENT do) decodes most native tiles several times
and pays the region call's overhead per tile. Here each native tile is decoded once (directly with
libjpeg-turbo when the file is a JPEG-tiled TIFF whose decoded tiles are bit-identical to what the
slide's backend returns, else through the backend), shared by the tiles that need it and freed
when the last of them is done.

Damaged files: the direct decoder treats every libjpeg warning as an error (as OpenSlide does),
and a native tile it cannot decode cleanly is read through the backend instead, so both paths
give the same pixels or the same ``SlideReadError``, never a raw decoder exception.
"""

from __future__ import annotations

import logging
import math
import os
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np
import simplejpeg
import tifffile
from PIL import Image

from gpfm.slide.backends.base import Size, paste_clipped
from gpfm.slide.errors import SlideError, SlideReadError
from gpfm.slide.slide import Slide
from gpfm.slide.tiling import Tiles

logger = logging.getLogger(__name__)

_FALLBACK_BLOCK = 512  # block side (level pixels) where the file stores no tiles
_CHUNK = 32  # tiles per unit of thread work

NativeTileFn = Callable[[int, int], np.ndarray]

# An Adobe APP14 marker with transform 0: the stream's three components are R, G and B, as the
# TIFF's PhotometricInterpretation says, not YCbCr (what libjpeg assumes without a marker).
_ADOBE_RGB = b"\xff\xee\x00\x0eAdobe\x00\x64\x00\x00\x00\x00\x00"


def read_tile(slide: Slide, tiles: Tiles, index: int) -> np.ndarray:
    """Tile ``index`` as (patch_size, patch_size, 3) uint8 RGB, read with one ``read_region``.

    The reference for ``read_tiles`` and the path ``PatchDataset`` uses for random access.
    """
    x, y = (int(v) for v in tiles.coords[index])
    level_x, level_y = _level_origin(x, y, tiles.level_downsample)
    size = tiles.read_size
    # Anchor the read on the level's own pixel grid so both paths read the same pixels.
    location = (round(level_x * tiles.level_downsample), round(level_y * tiles.level_downsample))
    region = slide.read_region(location, tiles.level, (size, size))
    return resize_tile(region, tiles.patch_size)


def resize_tile(region: np.ndarray, patch_size: int) -> np.ndarray:
    """Resize a square RGB region to ``patch_size`` (antialiased bilinear), if it differs."""
    if region.shape[0] == patch_size and region.shape[1] == patch_size:
        return region
    image = Image.fromarray(region).resize((patch_size, patch_size), Image.Resampling.BILINEAR)
    return np.asarray(image)


def read_tiles(
    slide: Slide, tiles: Tiles, num_workers: int | None = None, prefetch: int = 4
) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(index, tile)`` for every tile, in order; each tile as ``read_tile`` returns it.

    Args:
        slide: the slide the tiles were made from.
        tiles: the tile grid (``tile`` or ``read_coords``).
        num_workers: decoding threads (default: the CPU count, at most 8).
        prefetch: chunks of tiles in flight per thread (bounds memory).
    """
    yield from TileReader(slide, tiles, num_workers=num_workers, prefetch=prefetch)


class TileReader:
    """Iterates over the tiles of a slide, decoding each native tile of the file once."""

    def __init__(
        self, slide: Slide, tiles: Tiles, num_workers: int | None = None, prefetch: int = 4
    ) -> None:
        self.slide = slide
        self.tiles = tiles
        self.num_workers = num_workers or min(8, os.cpu_count() or 1)
        self.prefetch = max(1, prefetch)
        level = tiles.level
        native = slide.native_tile_size(level)
        self.block_size: Size = native or (_FALLBACK_BLOCK, _FALLBACK_BLOCK)
        self.level_width, self.level_height = slide.level_dimensions[level]
        self._direct = _direct_tiff_decoder(slide, level, self.block_size)
        self._decode: NativeTileFn = self._decode_block
        # np.rint rounds halves to even, as Python's round in _level_origin does.
        self._origins = np.rint(
            np.asarray(tiles.coords, dtype=np.float64).reshape(-1, 2) / tiles.level_downsample
        ).astype(np.int64)
        self._cache: dict[tuple[int, int], Future[np.ndarray]] = {}
        self._uses: dict[tuple[int, int], int] = {}
        self._lock = threading.Lock()
        for origin in self._origins:
            for key in self._blocks_of(origin):
                self._uses[key] = self._uses.get(key, 0) + 1

    @property
    def direct(self) -> bool:
        """True when native tiles are decoded straight from the TIFF (the fastest path)."""
        return self._direct is not None

    def _blocks_of(self, origin: np.ndarray) -> list[tuple[int, int]]:
        size = self.tiles.read_size
        block_w, block_h = self.block_size
        x0, y0 = max(0, int(origin[0])), max(0, int(origin[1]))
        x1 = min(self.level_width, int(origin[0]) + size)
        y1 = min(self.level_height, int(origin[1]) + size)
        if x1 <= x0 or y1 <= y0:
            return []
        cols = range(x0 // block_w, math.ceil(x1 / block_w))
        rows = range(y0 // block_h, math.ceil(y1 / block_h))
        return [(col, row) for row in rows for col in cols]

    def _decode_block(self, col: int, row: int) -> np.ndarray:
        """Native tile (col, row) of the read level: directly if it decodes cleanly, else via
        the backend (which returns what ``read_tile`` sees, or raises ``SlideReadError``)."""
        if self._direct is not None:
            try:
                return self._direct(col, row)
            except Exception as error:  # damaged tile data: the reference path decides
                logger.debug("%s: native tile (%d, %d): %r", self.slide.path, col, row, error)
        try:
            return self._read_block_via_backend(col, row)
        except SlideError:
            raise
        except Exception as error:
            raise SlideReadError(
                f"{self.slide.path}: failed to read native tile ({col}, {row}) of level "
                f"{self.tiles.level}: {error!r}. The file is damaged; re-export or re-scan it."
            ) from error

    def _read_block_via_backend(self, col: int, row: int) -> np.ndarray:
        block_w, block_h = self.block_size
        width = min(block_w, self.level_width - col * block_w)
        height = min(block_h, self.level_height - row * block_h)
        downsample = self.tiles.level_downsample
        location = (round(col * block_w * downsample), round(row * block_h * downsample))
        return self.slide.read_region(location, self.tiles.level, (width, height))

    def _block(self, key: tuple[int, int]) -> np.ndarray:
        with self._lock:
            future = self._cache.get(key)
            owner = future is None
            if future is None:
                future = self._cache[key] = Future()
        if owner:
            try:
                future.set_result(self._decode(*key))
            except BaseException as error:
                future.set_exception(error)
        return future.result()

    def _release(self, key: tuple[int, int]) -> None:
        with self._lock:
            self._uses[key] -= 1
            if self._uses[key] == 0:
                self._cache.pop(key, None)

    def _read_one(self, index: int) -> np.ndarray:
        size = self.tiles.read_size
        origin_x, origin_y = (int(v) for v in self._origins[index])
        keys = self._blocks_of(self._origins[index])
        inside = (
            origin_x >= 0
            and origin_y >= 0
            and origin_x + size <= self.level_width
            and origin_y + size <= self.level_height
        )
        region = np.empty((size, size, 3), np.uint8)
        if not inside:
            region.fill(255)  # glass beyond the slide's edge
        block_w, block_h = self.block_size
        try:
            for key in keys:
                block = self._block(key)
                paste_clipped(region, block, key[0] * block_w, key[1] * block_h, origin_x, origin_y)
        finally:
            for key in keys:
                self._release(key)
        return resize_tile(region, self.tiles.patch_size)

    def _read_chunk(self, start: int, stop: int) -> list[np.ndarray]:
        return [self._read_one(index) for index in range(start, stop)]

    def __len__(self) -> int:
        return len(self.tiles)

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        total = len(self.tiles)
        chunks = deque((start, min(total, start + _CHUNK)) for start in range(0, total, _CHUNK))
        pending: deque[tuple[int, Future[list[np.ndarray]]]] = deque()
        with ThreadPoolExecutor(self.num_workers, thread_name_prefix="gpfm-tiles") as pool:
            try:
                while chunks or pending:
                    while chunks and len(pending) < self.num_workers * self.prefetch:
                        start, stop = chunks.popleft()
                        pending.append((start, pool.submit(self._read_chunk, start, stop)))
                    start, future = pending.popleft()
                    for offset, region in enumerate(future.result()):
                        yield start + offset, region
            finally:
                for _, future in pending:
                    future.cancel()


def _level_origin(x: int, y: int, downsample: float) -> tuple[int, int]:
    """Top-left of a tile in pixels of its read level, from level-0 pixels."""
    return round(x / downsample), round(y / downsample)


def _direct_tiff_decoder(slide: Slide, level: int, block_size: Size) -> _TiffPageDecoder | None:
    """A decoder of the TIFF page behind ``level``, if its tiles equal what the backend returns.

    Only JPEG-tiled RGB pages qualify. Checked once on a real tile: any difference (colour
    handling, an unusual layout) and the backend's own path is used instead.
    """
    if slide.backend != "openslide" or slide.native_tile_size(level) is None:
        return None
    try:
        tiff = tifffile.TiffFile(slide.path)
    except Exception:
        return None
    try:
        decoder = _probe(slide, level, block_size, tiff)
    except Exception as error:
        logger.debug("%s: direct TIFF decoding unavailable: %r", slide.path, error)
        decoder = None
    if decoder is None:
        tiff.close()
    return decoder


def _probe(
    slide: Slide, level: int, block_size: Size, tiff: tifffile.TiffFile
) -> _TiffPageDecoder | None:
    width, height = slide.level_dimensions[level]
    page = next(
        (
            p
            for p in tiff.pages
            if isinstance(p, tifffile.TiffPage)
            and p.is_tiled
            and (p.imagewidth, p.imagelength) == (width, height)
            and (p.tilewidth, p.tilelength) == block_size
            and p.planarconfig == 1
            and p.samplesperpixel == 3
            and p.bitspersample == 8
            and p.compression == tifffile.COMPRESSION.JPEG
            and p.photometric in (tifffile.PHOTOMETRIC.RGB, tifffile.PHOTOMETRIC.YCBCR)
        ),
        None,
    )
    if page is None:
        return None
    decoder = _TiffPageDecoder(tiff, page)
    cols, rows = math.ceil(width / block_size[0]), math.ceil(height / block_size[1])
    probe = (cols // 2, rows // 2)
    direct = decoder(*probe)
    expected = slide.read_region(
        (
            round(probe[0] * block_size[0] * slide.level_downsamples[level]),
            round(probe[1] * block_size[1] * slide.level_downsamples[level]),
        ),
        level,
        (direct.shape[1], direct.shape[0]),
    )
    if direct.shape == expected.shape and np.array_equal(direct, expected):
        return decoder
    logger.debug("%s: direct TIFF decoding differs from the backend; not used", slide.path)
    return None


class _TiffPageDecoder:
    """Decodes one JPEG tile of a tiled TIFF page to RGB, cropped to the image.

    libjpeg-turbo through simplejpeg with ``strict=True``: a warning (corrupt or truncated data)
    raises, as it does in OpenSlide, instead of returning patched-up pixels.
    """

    def __init__(self, tiff: tifffile.TiffFile, page: Any) -> None:
        self._tiff = tiff
        self._page = page
        self._lock = threading.Lock()
        self._cols = math.ceil(page.imagewidth / page.tilewidth)
        tables = page.jpegtables
        # Abbreviated tile streams (e.g. Aperio) share one tables stream: SOI, tables, EOI.
        self._head = b"\xff\xd8" + (bytes(tables)[2:-2] if tables else b"")
        if page.photometric == tifffile.PHOTOMETRIC.RGB:
            self._head += _ADOBE_RGB

    @property
    def page(self) -> Any:
        """The tifffile page decoded (tile size, image size)."""
        return self._page

    def stream(self, col: int, row: int) -> bytes | None:
        """The complete JPEG stream of tile (col, row), or None for a tile never written."""
        page = self._page
        index = row * self._cols + col
        with self._lock:
            offset, count = page.dataoffsets[index], page.databytecounts[index]
            if not count:
                return None
            self._tiff.filehandle.seek(offset)
            data = self._tiff.filehandle.read(count)
        if data[:2] != b"\xff\xd8":
            raise ValueError(f"tile {index} is not a JPEG stream")
        return self._head + data[2:]

    def close(self) -> None:
        self._tiff.close()

    def __call__(self, col: int, row: int) -> np.ndarray:
        page = self._page
        index = row * self._cols + col
        jpeg = self.stream(col, row)
        if jpeg is None:  # a tile the scanner never wrote: glass
            return np.full((page.tilelength, page.tilewidth, 3), 255, np.uint8)
        segment = simplejpeg.decode_jpeg(jpeg, colorspace="RGB", strict=True)
        if segment.shape != (page.tilelength, page.tilewidth, 3):
            raise ValueError(f"tile {index} decodes to {segment.shape}, not the tile size")
        width = min(page.tilewidth, page.imagewidth - col * page.tilewidth)
        height = min(page.tilelength, page.imagelength - row * page.tilelength)
        return np.ascontiguousarray(segment[:height, :width])
