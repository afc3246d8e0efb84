"""Synthetic H&E-like whole-slide images with ground-truth tissue and tumour masks.

:func:`make_synthetic_slide` writes a tiled, pyramidal, JPEG-compressed generic TIFF that
OpenSlide opens with vendor ``generic-tiff`` and returns a :class:`SyntheticSlide` holding the
ground-truth masks that the generator actually painted.

File layout (what readers of these files can rely on):

* Level 0 is ``width x height`` pixels at ``mpp`` µm/px.  Every further level is downsampled
  by a factor of **4** (level ``k`` has ``ceil(width / 4**k) x ceil(height / 4**k)`` pixels)
  until the longer side of the smallest level is at most 2,048 px.  Levels are consecutive
  top-level IFDs (no SubIFDs); levels > 0 are marked ``NewSubfileType = 1``.
* Tiles are ``tile_size x tile_size`` (default 256), JPEG (baseline, libjpeg-turbo) with
  ``PhotometricInterpretation = YCbCr`` and 2x2 chroma subsampling, every tile a complete
  JPEG stream (no shared ``JPEGTables``).  Edge tiles are padded.
* ``XResolution``/``YResolution`` are pixels per centimetre with ``ResolutionUnit =
  CENTIMETER`` on every level, so OpenSlide reports ``openslide.mpp-x/y == mpp`` (up to the
  float32 precision of libtiff).  ``ImageDescription`` (OpenSlide ``openslide.comment``) is a
  one-line ``key=value`` summary starting with ``gpfm synthetic slide``.
* BigTIFF is used only when the uncompressed level 0 would not fit a classic TIFF.

Content: white glass (RGB ~240-250 with slight noise), a few blobby tissue pieces of pink
eosin stroma with fibrous texture and sparse spindle nuclei, and denser tumour regions inside
the tissue (more, larger, darker nuclei on purple cytoplasm).  Colours follow a Beer-Lambert
optical-density model of haematoxylin and eosin.

How it stays fast and small in memory (a 100,000 x 100,000 px slide never exists in RAM):

* The layout is two smooth scalar fields ``f`` (tissue where ``f > 0``) and ``g`` (tumour where
  ``f > 0 and g > 0``) sampled on a coarse *mask grid* (``mask_downsample`` level-0 px per
  cell; grid point ``(i, j)`` sits at the level-0 position ``((j + 0.5) * ds, (i + 0.5) * ds)``).
  The returned masks are these fields thresholded at the grid points.  Every pixel of every
  level is painted from the *bilinear interpolation* of the same fields at the pixel centre,
  so the painted tissue region equals the mask up to pixel rounding at all levels.
* Tiles entirely on glass, entirely stroma or entirely tumour are taken from small pools of
  pre-rendered, pre-encoded tiles (per level, rendered at that level's own µm/px) and their
  JPEG bytes are reused.  Only tiles that straddle a boundary are composited from the pool
  textures with the interpolated masks and encoded individually (in 2 threads).
  Consequently textures are not continuous across tile borders and pool tiles repeat; this
  is a benchmark/test fixture, not a simulator.

The fields and textures are drawn by ``gpfm.slide.synthetic_drawing``; this module schedules,
encodes and writes the tiles.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import imagecodecs
import numpy as np
import tifffile
from numpy.typing import NDArray

from gpfm.slide.storage import atomic_path
from gpfm.slide.synthetic_drawing import (
    GLASS,
    MIXED,
    STROMA,
    TUMOUR,
    BoolArray,
    FloatArray,
    UInt8Array,
    auto_mask_downsample,
    classify_tiles,
    interp_tile,
    make_layout,
    render_glass,
    render_tissue,
)

__all__ = ["SyntheticSlide", "make_synthetic_slide"]

logger = logging.getLogger(__name__)

LEVEL_DOWNSAMPLE = 4
"""Downsample factor between consecutive pyramid levels."""

_MAX_TOP_LEVEL_SIDE = 2048  # stop adding levels once the longer side is <= this
_POOL_TISSUE = 32  # pre-rendered tiles per tissue class and level
_POOL_GLASS = 8  # pre-rendered background tiles per level
_LOOKAHEAD = 64  # boundary tiles in flight in the thread pool


@dataclass(frozen=True, eq=False)
class SyntheticSlide:
    """A synthetic slide written by :func:`make_synthetic_slide` and its ground truth.

    Attributes:
        path: The TIFF file.
        width: Level-0 width in pixels.
        height: Level-0 height in pixels.
        mpp: Level-0 resolution in µm per pixel (x and y).
        tissue_mask: Boolean ground-truth tissue mask of shape
            ``(ceil(height / mask_downsample), ceil(width / mask_downsample))``; cell
            ``(i, j)`` describes the level-0 pixel at the cell centre
            ``((j + 0.5) * mask_downsample, (i + 0.5) * mask_downsample)``.  Read-only.
        tumour_mask: Boolean ground-truth tumour mask, same grid, a subset of
            ``tissue_mask``.  Read-only.
        mask_downsample: Level-0 pixels per mask pixel (a power of two).
        seed: The seed the slide was generated with.
        level_dimensions: ``(width, height)`` in pixels of every pyramid level; level ``k``
            is downsampled by ``4**k`` from level 0.
    """

    path: Path
    width: int
    height: int
    mpp: float
    tissue_mask: BoolArray = field(repr=False)
    tumour_mask: BoolArray = field(repr=False)
    mask_downsample: int
    seed: int
    level_dimensions: tuple[tuple[int, int], ...]

    @property
    def mask_mpp(self) -> float:
        """Resolution of the masks in µm per mask pixel."""
        return self.mpp * self.mask_downsample


# --------------------------------------------------------------------------------------------
# argument checking


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def _check_float(name: str, value: object, low: float, high: float, *, low_open: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    v = float(value)
    ok = math.isfinite(v) and (v > low if low_open else v >= low) and v <= high
    if not ok:
        bracket = "(" if low_open else "["
        raise ValueError(f"{name} must be in {bracket}{low}, {high}], got {value!r}")
    return v


# --------------------------------------------------------------------------------------------
# writing


@dataclass
class _Pools:
    glass: list[UInt8Array]
    stroma: list[UInt8Array]
    tumour: list[UInt8Array]
    glass_bytes: list[bytes]
    stroma_bytes: list[bytes]
    tumour_bytes: list[bytes]


def _level_dims(width: int, height: int) -> list[tuple[int, int]]:
    dims = [(width, height)]
    d = 1
    while max(dims[-1]) > _MAX_TOP_LEVEL_SIDE:
        d *= LEVEL_DOWNSAMPLE
        dims.append((math.ceil(width / d), math.ceil(height / d)))
    return dims


def _make_pools(
    seed_seq: np.random.SeedSequence,
    tile: int,
    s: float,
    n_tiles: int,
    cls: NDArray[np.int8],
    encode: Callable[[UInt8Array], bytes],
    executor: ThreadPoolExecutor,
) -> _Pools:
    n_t = max(1, min(_POOL_TISSUE, n_tiles))
    n_g = max(1, min(_POOL_GLASS, n_tiles))
    children = seed_seq.spawn(2 * n_t + n_g)
    need_tissue = bool((cls != GLASS).any())

    def job(i: int) -> tuple[UInt8Array, bytes]:
        rng = np.random.default_rng(children[i])
        if i < n_g:
            arr = render_glass(rng, tile)
        else:
            arr = render_tissue(rng, tile, s, tumour=i >= n_g + n_t)
        return arr, encode(arr)

    n_jobs = n_g + 2 * n_t if need_tissue else n_g
    res = list(executor.map(job, range(n_jobs)))
    if not need_tissue:
        res += res[:1] * (2 * n_t)
    return _Pools(
        glass=[a for a, _ in res[:n_g]],
        stroma=[a for a, _ in res[n_g : n_g + n_t]],
        tumour=[a for a, _ in res[n_g + n_t :]],
        glass_bytes=[b for _, b in res[:n_g]],
        stroma_bytes=[b for _, b in res[n_g : n_g + n_t]],
        tumour_bytes=[b for _, b in res[n_g + n_t :]],
    )


def _level_tiles(
    f: FloatArray,
    g: FloatArray,
    ds: int,
    d: int,
    tile: int,
    dims: tuple[int, int],
    s: float,
    seed_seq: np.random.SeedSequence,
    encode: Callable[[UInt8Array], bytes],
    executor: ThreadPoolExecutor,
    stats: dict[str, int],
) -> Iterator[bytes]:
    """Yield the encoded JPEG tiles of level ``dims`` (downsample ``d``) in row-major order.

    Tiles wholly on glass, stroma or tumour reuse pooled bytes; the others are composited
    from pooled textures with the interpolated tissue/tumour fields and encoded in
    ``executor``, at most ``_LOOKAHEAD`` at a time, in order.
    """
    w, h = dims
    n_rows, n_cols = math.ceil(h / tile), math.ceil(w / tile)
    cls = classify_tiles(f, g, ds, d, tile, n_rows, n_cols)
    pool_seq, pick_seq = seed_seq.spawn(2)
    pools = _make_pools(pool_seq, tile, s, n_rows * n_cols, cls, encode, executor)
    pick_rng = np.random.default_rng(pick_seq)
    pick_g = pick_rng.integers(0, len(pools.glass), (n_rows, n_cols))
    pick_s = pick_rng.integers(0, len(pools.stroma), (n_rows, n_cols))
    pick_t = pick_rng.integers(0, len(pools.tumour), (n_rows, n_cols))
    stats["mixed"] += int((cls == MIXED).sum())
    stats["tiles"] += n_rows * n_cols

    def mixed(r: int, c: int) -> bytes:
        y0, x0 = r * tile, c * tile
        tf = interp_tile(f, ds, d, y0, x0, tile) > 0
        tg = interp_tile(g, ds, d, y0, x0, tile) > 0
        tis = pools.stroma[pick_s[r, c]]
        tis = np.where((tf & tg)[..., None], pools.tumour[pick_t[r, c]], tis)
        out = np.where(tf[..., None], tis, pools.glass[pick_g[r, c]])
        return encode(out)

    pending: deque[bytes | Future[bytes]] = deque()
    in_flight = 0
    for r in range(n_rows):
        cls_row = cls[r].tolist()
        for c in range(n_cols):
            k = cls_row[c]
            item: bytes | Future[bytes]
            if k == GLASS:
                item = pools.glass_bytes[pick_g[r, c]]
            elif k == STROMA:
                item = pools.stroma_bytes[pick_s[r, c]]
            elif k == TUMOUR:
                item = pools.tumour_bytes[pick_t[r, c]]
            else:
                item = executor.submit(mixed, r, c)
                in_flight += 1
            pending.append(item)
            while in_flight >= _LOOKAHEAD or len(pending) > 4 * _LOOKAHEAD:
                out = pending.popleft()
                if isinstance(out, Future):
                    in_flight -= 1
                    yield out.result()
                else:
                    yield out
    while pending:
        out = pending.popleft()
        yield out.result() if isinstance(out, Future) else out


def _encode_jpeg(arr: UInt8Array, quality: int) -> bytes:
    """Encode an RGB tile as a complete baseline JPEG stream (YCbCr, 2x2 chroma subsampling)."""
    return bytes(
        imagecodecs.jpeg8_encode(
            arr, level=quality, colorspace="RGB", outcolorspace="YCBCR", subsampling=(2, 2)
        )
    )


def _write_pyramid(
    dest: Path,
    dims: Sequence[tuple[int, int]],
    level_tiles: Iterable[Iterable[bytes]],
    *,
    mpp: float,
    tile_size: int,
    description: str,
) -> None:
    """Atomically write pre-encoded JPEG tiles as a pyramidal TIFF at ``dest``.

    ``dims`` are the ``(width, height)`` of each level (level ``k`` downsampled by ``4**k``),
    ``level_tiles`` yields, per level, the tiles' JPEG bytes in row-major order as produced by
    :func:`_encode_jpeg`.  The TIFF is written through ``atomic_path(durable=True)``: a
    temporary file next to ``dest``, fsynced and renamed over it; removed on any error.
    """
    width, height = dims[0]
    bigtiff = width * height * 3 >= 2**32 - 2**26
    with (
        atomic_path(dest, durable=True) as temporary,
        tifffile.TiffWriter(temporary, bigtiff=bigtiff) as tw,
    ):
        for level, ((lw, lh), tiles) in enumerate(zip(dims, level_tiles, strict=True)):
            ppcm = 1e4 / (mpp * LEVEL_DOWNSAMPLE**level)  # pixels per centimetre
            tw.write(
                iter(tiles),
                shape=(lh, lw, 3),
                dtype=np.uint8,
                tile=(tile_size, tile_size),
                photometric="rgb",
                compression="jpeg",
                subsampling=(2, 2),
                resolution=(ppcm, ppcm),
                resolutionunit="CENTIMETER",
                description=description if level == 0 else None,
                software="gpfm.slide.synthetic",
                subfiletype=1 if level else 0,
                metadata=None,
                maxworkers=1,
            )


def make_synthetic_slide(
    path: str | os.PathLike[str],
    width: int,
    height: int,
    mpp: float = 0.5,
    seed: int = 0,
    *,
    tile_size: int = 256,
    jpeg_quality: int = 80,
    tissue_fraction: float = 0.3,
    n_tissue_pieces: int = 3,
    tumour_fraction: float = 0.3,
    mask_downsample: int | None = None,
) -> SyntheticSlide:
    """Write a synthetic H&E-like pyramidal TIFF slide and return it with its ground truth.

    The file is a tiled, JPEG (YCbCr 4:2:0) compressed generic TIFF that OpenSlide opens as
    ``generic-tiff`` with ``openslide.mpp-x/y == mpp``; levels are downsampled by 4 until the
    smallest fits in 2,048 px (see the module docstring for the exact layout).  The file is
    written to a temporary file in the same folder, fsynced and then atomically renamed to
    ``path`` (an existing file there is replaced).  Output is deterministic for a given seed
    and arguments.

    Args:
        path: Destination file (its folder must exist).
        width: Level-0 width in pixels (>= 1).
        height: Level-0 height in pixels (>= 1).
        mpp: Level-0 resolution in µm per pixel (> 0); texture scales follow it.
        seed: Random seed (>= 0).
        tile_size: TIFF tile side in pixels (multiple of 16, >= 16).
        jpeg_quality: JPEG quality, 1-100.
        tissue_fraction: Fraction of the slide area covered by tissue, in (0, 0.9].
        n_tissue_pieces: Number of separate tissue pieces (>= 1; neighbouring pieces may touch).
        tumour_fraction: Fraction of the tissue area that is tumour, in [0, 1).
        mask_downsample: Level-0 pixels per mask pixel (a power of two).  By default the
            power of two nearest to ``8 / mpp`` (masks at about 8 µm/px, e.g. 16 at
            0.5 µm/px), raised until the masks' longer side is <= 4,096 px.

    Returns:
        The written slide with its ground-truth tissue and tumour masks.

    Raises:
        ValueError: If an argument is out of range; the message names the argument.
    """
    width = _check_int("width", width, 1)
    height = _check_int("height", height, 1)
    mpp = _check_float("mpp", mpp, 0.0, math.inf, low_open=True)
    seed = _check_int("seed", seed, 0)
    tile_size = _check_int("tile_size", tile_size, 16)
    if tile_size % 16:
        raise ValueError(f"tile_size must be a multiple of 16, got {tile_size}")
    jpeg_quality = _check_int("jpeg_quality", jpeg_quality, 1)
    if jpeg_quality > 100:
        raise ValueError(f"jpeg_quality must be <= 100, got {jpeg_quality}")
    tissue_fraction = _check_float("tissue_fraction", tissue_fraction, 0.0, 0.9, low_open=True)
    n_tissue_pieces = _check_int("n_tissue_pieces", n_tissue_pieces, 1)
    tumour_fraction = _check_float("tumour_fraction", tumour_fraction, 0.0, 1.0, low_open=False)
    if tumour_fraction >= 1.0:
        raise ValueError(f"tumour_fraction must be < 1, got {tumour_fraction}")
    if mask_downsample is None:
        ds = auto_mask_downsample(width, height, mpp)
    else:
        ds = _check_int("mask_downsample", mask_downsample, 1)
        if ds & (ds - 1):
            raise ValueError(f"mask_downsample must be a power of two, got {ds}")
    dest = Path(path)
    if not dest.parent.is_dir():
        raise FileNotFoundError(f"folder of path does not exist: {dest.parent}")

    t_start = time.perf_counter()
    root = np.random.SeedSequence([seed, 0x6A9F5])
    layout_seq, tiles_seq = root.spawn(2)
    mask_shape = (math.ceil(height / ds), math.ceil(width / ds))
    f, g = make_layout(
        np.random.default_rng(layout_seq),
        mask_shape,
        tissue_fraction,
        n_tissue_pieces,
        tumour_fraction,
    )
    tissue_mask = f > 0
    tumour_mask = tissue_mask & (g > 0)
    tissue_mask.flags.writeable = False
    tumour_mask.flags.writeable = False
    logger.debug(
        "synthetic layout %s in %.2f s (tissue %.1f %%, tumour %.1f %% of tissue)",
        mask_shape,
        time.perf_counter() - t_start,
        100 * tissue_mask.mean(),
        100 * tumour_mask.sum() / max(1, tissue_mask.sum()),
    )

    dims = _level_dims(width, height)
    description = (
        f"gpfm synthetic slide; width={width}; height={height}; mpp={mpp!r}; seed={seed}; "
        f"levels={len(dims)}; level_downsample={LEVEL_DOWNSAMPLE}; tile={tile_size}"
    )
    encode = functools.partial(_encode_jpeg, quality=jpeg_quality)
    stats = {"tiles": 0, "mixed": 0}
    with ThreadPoolExecutor(max_workers=2) as executor:
        level_tiles = [
            _level_tiles(
                f,
                g,
                ds,
                LEVEL_DOWNSAMPLE**level,
                tile_size,
                level_dims,
                mpp * LEVEL_DOWNSAMPLE**level,
                level_seq,
                encode,
                executor,
                stats,
            )
            for level, (level_seq, level_dims) in enumerate(
                zip(tiles_seq.spawn(len(dims)), dims, strict=True)
            )
        ]
        _write_pyramid(
            dest, dims, level_tiles, mpp=mpp, tile_size=tile_size, description=description
        )
    logger.info(
        "wrote synthetic slide %s (%d x %d px, %d levels, %d tiles, %d boundary) in %.1f s",
        dest,
        width,
        height,
        len(dims),
        stats["tiles"],
        stats["mixed"],
        time.perf_counter() - t_start,
    )
    return SyntheticSlide(
        path=dest,
        width=width,
        height=height,
        mpp=mpp,
        tissue_mask=tissue_mask,
        tumour_mask=tumour_mask,
        mask_downsample=ds,
        seed=seed,
        level_dimensions=tuple(dims),
    )
