"""Curate one slide: walk its tiles in a seeded order, keep the first N that pass the quality
checks, each as JPEG bytes.

The tiles are read with the fast reader (each native tile decoded once) and measured on its
decoding threads, decided in candidate order, and only the kept ones are encoded (on threads),
so the kept patches depend only on the slide, the tiles, the seed and the thresholds, never on
timing.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import simplejpeg

from gpfm.slide.quality import PatchMeasures, QualityFilter, QualityThresholds, measure
from gpfm.slide.reader import TileReader
from gpfm.slide.sampling import candidate_order, subset
from gpfm.slide.slide import Slide
from gpfm.slide.tiling import Tiles

logger = logging.getLogger(__name__)

_MIN_CHUNK = 8  # candidates read at once, at least
_MAX_CHUNK = 16  # tiles per unit of the reader's thread work, at most


@dataclass(frozen=True)
class CuratedPatch:
    """One kept patch: its tile index and level-0 (x, y), its JPEG bytes and its measures."""

    index: int
    x: int
    y: int
    jpeg: bytes
    measures: PatchMeasures


@dataclass
class CurationResult:
    """The kept patches (in candidate order), how many tiles were tried, and why some were not
    kept (``{"blank": n, "blurred": n, "duplicate": n}``)."""

    patches: list[CuratedPatch] = field(default_factory=list)
    tried: int = 0
    rejected: dict[str, int] = field(default_factory=dict)


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes (4:2:0) of an RGB uint8 patch, by libjpeg-turbo."""
    return simplejpeg.encode_jpeg(
        np.ascontiguousarray(rgb), quality=quality, colorspace="RGB", colorsubsampling="420"
    )


def curate_patches(
    slide: Slide,
    tiles: Tiles,
    count: int,
    seed: int = 0,
    strategy: str = "uniform",
    thresholds: QualityThresholds | None = None,
    jpeg_quality: int = 90,
    num_workers: int | None = None,
) -> CurationResult:
    """Up to ``count`` patches of ``slide`` that pass ``thresholds``, as JPEG.

    Args:
        slide: the opened slide.
        tiles: its candidate tiles (e.g. ``tile(slide, mpp=0.5, patch_size=512)``).
        count: patches wanted; fewer are returned when the tiles run out.
        seed: orders the candidates (``candidate_order``).
        strategy: ``"uniform"`` or ``"stratified"`` by tissue fraction.
        thresholds: when a patch is blank, blurred or a near-duplicate (default settings when
            None; see ``gpfm.slide.quality``).
        jpeg_quality: 1-100.
        num_workers: reading threads, and measuring and encoding threads (default: twice the
            CPU count, at most 16).
    """
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in 1-100, got {jpeg_quality!r}")
    checker = QualityFilter(thresholds or QualityThresholds())
    result = CurationResult(rejected=checker.rejected)
    order = candidate_order(tiles, seed, strategy)
    position = 0
    # Two threads per core: reading, measuring and encoding each hold the GIL now and then.
    workers = num_workers or min(16, 2 * (os.cpu_count() or 1))
    kept: list[tuple[int, PatchMeasures, Future[bytes]]] = []
    with ThreadPoolExecutor(workers, thread_name_prefix="gpfm-curate") as pool:
        while len(kept) < count and position < len(order):
            # The reader reads its whole chunk ahead, so ask for what the acceptance rate so
            # far says is still needed (and a little more), not for every candidate.
            accepted = (len(kept) + 1) / (result.tried + 1)
            size = max(_MIN_CHUNK, math.ceil(1.1 * (count - len(kept)) / accepted))
            chunk = order[position : position + size]
            position += len(chunk)
            measured = _measured(slide, subset(tiles, chunk), workers, checker)
            for index, (rgb, measures) in zip(chunk, measured, strict=False):
                result.tried += 1
                reason = checker.reason(measures)
                checker.record(reason, measures)
                if reason is None:  # only kept patches are encoded
                    kept.append((int(index), measures, pool.submit(encode_jpeg, rgb, jpeg_quality)))
                    if len(kept) == count:
                        break
        for index, measures, jpeg in kept:
            x, y = (int(v) for v in tiles.coords[index])
            result.patches.append(CuratedPatch(index, x, y, jpeg.result(), measures))
    logger.info(
        "%s: kept %d of %d tiles tried (rejected %s)",
        slide.path,
        len(result.patches),
        result.tried,
        result.rejected,
    )
    return result


def _measured(
    slide: Slide, tiles: Tiles, workers: int, checker: QualityFilter
) -> Iterator[tuple[np.ndarray, PatchMeasures]]:
    """(pixels, measures) per tile, in order; measured on the decoding threads, chunk by chunk,
    while the pixels are in cache."""
    thresholds = checker.thresholds

    def work(chunk: np.ndarray) -> tuple[np.ndarray, list[PatchMeasures]]:
        return chunk, [measure(rgb, thresholds) for rgb in chunk]

    # Chunks small enough that every thread gets some of the candidates asked for.
    chunk_size = max(2, min(_MAX_CHUNK, math.ceil(len(tiles) / workers)))
    reader = TileReader(slide, tiles, num_workers=workers, chunk_size=chunk_size)
    for _, (chunk, measures) in reader.map_chunks(work):
        yield from zip(chunk, measures, strict=True)


__all__ = ["CuratedPatch", "CurationResult", "curate_patches", "encode_jpeg"]
