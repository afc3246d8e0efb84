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
from typing import Any, TypeVar

import numpy as np
import simplejpeg
import tifffile
from PIL import Image

from gpfm.slide.backends.base import Size
from gpfm.slide.errors import SlideError, SlideReadError
from gpfm.slide.slide import Slide
from gpfm.slide.tiling import Tiles

logger = logging.getLogger(__name__)

_FALLBACK_BLOCK = 512  # block side (level pixels) where the file stores no tiles
_CHUNK = 32  # tiles per unit of thread work

T = TypeVar("T")

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
    """Iterates over the tiles of a slide, decoding each native tile of the file once.

    Tiles are read in chunks of consecutive tiles, one chunk per unit of thread work: a chunk
    decodes (or takes from the other chunks') the native tiles it overlaps, cuts its tiles out of
    them into one (n, size, size, 3) array, and gives the native tiles back, so that the Python
    bookkeeping (locks, reference counts, futures) is paid per chunk and per native tile, not per
    tile. The decoder runs without the GIL; what holds it is a few array copies per tile. A
    reader reads its tiles once: the file it decodes from is closed at the end of the pass.
    """

    def __init__(
        self,
        slide: Slide,
        tiles: Tiles,
        num_workers: int | None = None,
        prefetch: int = 4,
        chunk_size: int = _CHUNK,
    ) -> None:
        self.slide = slide
        self.tiles = tiles
        self.num_workers = num_workers or min(8, os.cpu_count() or 1)
        self.prefetch = max(1, prefetch)
        self.chunk_size = max(1, chunk_size)
        level = tiles.level
        native = slide.native_tile_size(level)
        self.block_size: Size = native or (_FALLBACK_BLOCK, _FALLBACK_BLOCK)
        self.level_width, self.level_height = slide.level_dimensions[level]
        self._direct = _direct_tiff_decoder(slide, level, self.block_size)
        # np.rint rounds halves to even, as Python's round in _level_origin does.
        self._origins = np.rint(
            np.asarray(tiles.coords, dtype=np.float64).reshape(-1, 2) / tiles.level_downsample
        ).astype(np.int64)
        self._cache: dict[tuple[int, int], Future[np.ndarray]] = {}
        self._lock = threading.Lock()
        # Decoded native tiles and chunks are written into buffers used before: fresh memory
        # costs page faults (a third of the decode time on some machines).
        self._spare_blocks: list[np.ndarray] = []
        self._block_buffers: dict[tuple[int, int], np.ndarray] = {}
        self._spare_chunks: list[np.ndarray] = []
        self._chunks = self._plan_chunks()
        # How many chunks still need each native tile: the last one to finish frees it. The
        # first chunk that needs it decodes it (chunks start in order, so a chunk only ever
        # waits on earlier ones, which never wait on it).
        self._uses: dict[tuple[int, int], int] = {}
        self._owner: dict[tuple[int, int], int] = {}
        for chunk, (_, _, keys) in enumerate(self._chunks):
            for key in keys:
                self._uses[key] = self._uses.get(key, 0) + 1
                self._owner.setdefault(key, chunk)
        self._shared = {key: uses > 1 for key, uses in self._uses.items()}

    @property
    def direct(self) -> bool:
        """True when native tiles are decoded straight from the TIFF (the fastest path)."""
        return self._direct is not None

    def _block_ranges(self) -> np.ndarray:
        """(N, 4) first column, end column, first row, end row of the native tiles of each tile
        (an empty range for a tile wholly outside the level)."""
        size = self.tiles.read_size
        block_w, block_h = self.block_size
        x0 = np.clip(self._origins[:, 0], 0, self.level_width)
        y0 = np.clip(self._origins[:, 1], 0, self.level_height)
        x1 = np.clip(self._origins[:, 0] + size, 0, self.level_width)
        y1 = np.clip(self._origins[:, 1] + size, 0, self.level_height)
        ranges = np.stack([x0 // block_w, -(-x1 // block_w), y0 // block_h, -(-y1 // block_h)], 1)
        ranges[(x1 <= x0) | (y1 <= y0)] = 0
        return ranges

    def _plan_chunks(self) -> list[tuple[int, int, list[tuple[int, int]]]]:
        """(start, stop, native tiles) of each chunk of consecutive tiles."""
        ranges = self._block_ranges().tolist()
        chunks = []
        for start in range(0, len(ranges), self.chunk_size):
            stop = min(len(ranges), start + self.chunk_size)
            keys: dict[tuple[int, int], None] = {}
            for col0, col1, row0, row1 in ranges[start:stop]:
                for row in range(row0, row1):
                    for col in range(col0, col1):
                        keys[col, row] = None
            chunks.append((start, stop, list(keys)))
        return chunks

    def _decode(self, col: int, row: int) -> np.ndarray:
        return self._decode_block(col, row)

    def _decode_block(self, col: int, row: int) -> np.ndarray:
        """Native tile (col, row) of the read level: directly if it decodes cleanly, else via
        the backend (which returns what ``read_tile`` sees, or raises ``SlideReadError``)."""
        if self._direct is not None:
            with self._lock:
                buffer = self._spare_blocks.pop() if self._spare_blocks else None
            if buffer is None:
                buffer = self._direct.new_buffer()
            try:
                block = self._direct(col, row, out=buffer)
            except Exception as error:  # damaged tile data: the reference path decides
                logger.debug("%s: native tile (%d, %d): %r", self.slide.path, col, row, error)
                with self._lock:
                    self._spare_blocks.append(buffer)
            else:
                self._block_buffers[col, row] = buffer  # back to the spares when freed
                return block
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

    def _future(self, key: tuple[int, int]) -> Future[np.ndarray]:
        with self._lock:
            future = self._cache.get(key)
            if future is None:
                future = self._cache[key] = Future()
            return future

    def _block(self, key: tuple[int, int], chunk: int) -> np.ndarray:
        """Native tile ``key``: decoded now if chunk ``chunk`` owns it (the tile that needs it
        is cut out while it is in cache), else waited for."""
        future = self._future(key)
        if self._owner[key] == chunk and not future.done():
            try:
                future.set_result(self._decode(*key))
            except BaseException as error:
                future.set_exception(error)
        return future.result()

    def _fail_owned(self, chunk: int, error: BaseException) -> None:
        """Chunks waiting on native tiles that ``chunk`` will not decode get its error."""
        for key in self._chunks[chunk][2]:
            if self._owner[key] == chunk:
                future = self._future(key)
                if not future.done():
                    future.set_exception(error)

    def _release(self, keys: list[tuple[int, int]]) -> None:
        with self._lock:
            for key in keys:
                self._uses[key] -= 1
                if self._uses[key] == 0:
                    self._cache.pop(key, None)
                    buffer = self._block_buffers.pop(key, None)
                    if buffer is not None:
                        self._spare_blocks.append(buffer)

    def _read_chunk(self, chunk: int) -> np.ndarray:
        """The tiles of chunk ``chunk`` as one (n, patch_size, patch_size, 3) uint8 array."""
        start, stop, keys = self._chunks[chunk]
        size = self.tiles.read_size
        block_w, block_h = self.block_size
        width, height = self.level_width, self.level_height
        regions = self._chunk_buffer(stop - start) if size == self.tiles.patch_size else None
        if regions is None:
            regions = np.empty((stop - start, size, size, 3), np.uint8)
        blocks: dict[tuple[int, int], np.ndarray] = {}
        try:
            # Native tiles a later chunk also needs are decoded first: the next chunk, running
            # at the same time on another thread, would otherwise wait for this whole chunk to
            # reach the tile on their shared border, and the threads would take turns.
            for key in keys:
                if self._owner[key] == chunk and self._shared[key]:
                    blocks[key] = self._block(key, chunk)
            for region, (origin_x, origin_y) in zip(
                regions, self._origins[start:stop].tolist(), strict=True
            ):
                x0, y0 = max(0, origin_x), max(0, origin_y)
                x1, y1 = min(width, origin_x + size), min(height, origin_y + size)
                if x0 != origin_x or y0 != origin_y or x1 - x0 != size or y1 - y0 != size:
                    region.fill(255)  # glass beyond the slide's edge
                    if x1 <= x0 or y1 <= y0:
                        continue
                for row in range(y0 // block_h, -(-y1 // block_h)):
                    top, bottom = max(y0, row * block_h), min(y1, (row + 1) * block_h)
                    for col in range(x0 // block_w, -(-x1 // block_w)):
                        left, right = max(x0, col * block_w), min(x1, (col + 1) * block_w)
                        block = blocks.get((col, row))
                        if block is None:
                            block = blocks[col, row] = self._block((col, row), chunk)
                        region[
                            top - origin_y : bottom - origin_y, left - origin_x : right - origin_x
                        ] = block[
                            top - row * block_h : bottom - row * block_h,
                            left - col * block_w : right - col * block_w,
                        ]
        except BaseException as error:
            self._fail_owned(chunk, error)
            raise
        finally:
            self._release(keys)
        patch = self.tiles.patch_size
        if size == patch:
            return regions
        return np.stack([resize_tile(region, patch) for region in regions])

    def _chunk_buffer(self, count: int) -> np.ndarray | None:
        if count != self.chunk_size:
            return None
        with self._lock:
            return self._spare_chunks.pop() if self._spare_chunks else None

    def recycle(self, tiles: np.ndarray) -> None:
        """Hand back an array ``chunks`` yielded, once nothing refers to it any more: the reader
        writes later chunks into it (saving the cost of fresh memory)."""
        patch = self.tiles.patch_size
        if tiles.shape == (self.chunk_size, patch, patch, 3) and tiles.flags.owndata:
            with self._lock:
                self._spare_chunks.append(tiles)

    def __len__(self) -> int:
        return len(self.tiles)

    def chunks(self) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(start, tiles)`` in order: tiles ``start, start + 1, ...`` as one
        (n, patch_size, patch_size, 3) uint8 array, n at most ``chunk_size``.

        The cheapest way to take many tiles at once (batches for a model): no per-tile copy.
        """
        return self.map_chunks(_identity)

    def map_chunks(
        self, function: Callable[[np.ndarray], T], recycle: bool = False
    ) -> Iterator[tuple[int, T]]:
        """Yield ``(start, function(tiles))`` for each chunk of ``chunks``, in order, with
        ``function`` run on the decoding threads, on the tiles while they are in cache.

        Args:
            function: takes the (n, patch_size, patch_size, 3) uint8 tiles of one chunk (e.g.
                converts them to a model's input); it runs on several threads at once.
            recycle: ``function``'s result keeps no reference to the tiles, so their array is
                written again by a later chunk.
        """
        total = len(self._chunks)
        window = self.num_workers * self.prefetch
        pending: deque[tuple[int, Future[T]]] = deque()

        def work(chunk: int) -> T:
            regions = self._read_chunk(chunk)
            result = function(regions)
            if recycle:
                self.recycle(regions)
            return result

        try:
            with ThreadPoolExecutor(self.num_workers, thread_name_prefix="gpfm-tiles") as pool:
                try:
                    submitted = 0
                    while submitted < total or pending:
                        while submitted < total and len(pending) < window:
                            start = self._chunks[submitted][0]
                            pending.append((start, pool.submit(work, submitted)))
                            submitted += 1
                        start, future = pending.popleft()
                        yield start, future.result()
                finally:
                    for _, future in pending:
                        future.cancel()
        finally:  # after the threads are done with it
            self.close()

    def close(self) -> None:
        """Close the file the reader decodes from directly (done at the end of a pass: a reader
        reads its tiles once)."""
        if self._direct is not None:
            self._direct.close()

    def __iter__(self) -> Iterator[tuple[int, np.ndarray]]:
        for start, regions in self.chunks():
            for offset, region in enumerate(regions):
                yield start + offset, region


def _identity(tiles: np.ndarray) -> np.ndarray:
    return tiles


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

    def new_buffer(self) -> np.ndarray:
        """An array a whole tile decodes into (``out`` of a call)."""
        return np.empty((self._page.tilelength, self._page.tilewidth, 3), np.uint8)

    def __call__(self, col: int, row: int, out: np.ndarray | None = None) -> np.ndarray:
        """Tile (col, row) as (height, width, 3) uint8 RGB, decoded into ``out`` if given
        (a ``new_buffer``; the result is then a view of it)."""
        page = self._page
        index = row * self._cols + col
        jpeg = self.stream(col, row)
        if jpeg is None:  # a tile the scanner never wrote: glass
            segment = out if out is not None else self.new_buffer()
            segment.fill(255)
        else:
            segment = simplejpeg.decode_jpeg(jpeg, colorspace="RGB", strict=True, buffer=out)
        if segment.shape != (page.tilelength, page.tilewidth, 3):
            raise ValueError(f"tile {index} decodes to {segment.shape}, not the tile size")
        width = min(page.tilewidth, page.imagewidth - col * page.tilewidth)
        height = min(page.tilelength, page.imagelength - row * page.tilelength)
        return segment[:height, :width]
