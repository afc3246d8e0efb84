"""gpfm-slide reading and tiling benchmark; prints ratios measured side by side in one run.

1. Reading every tissue tile (0.5 µm/px, 224 px) of a synthetic 20,000 x 20,000 px JPEG slide:
   our reader's tiles/s ÷ the tiles/s of the per-tile ``OpenSlide.read_region`` loop that CLAM
   and TRIDENT use (target >= 3.0), and our tiles/s ÷ the machine's limit (target >= 0.5). The
   limit: libjpeg-turbo (simplejpeg, into one reused buffer, no other work) decoding the same
   native tiles the tiles overlap, on one thread, times the cores used; tiles/s = tiles ÷ that
   decode time. Also printed: the same decode run on that many threads at once (what the cores
   actually gave at that moment, the machine being shared) and the ratio of CPU seconds (raw
   decode ÷ ours), which load from other processes barely moves. Best of three alternated rounds.
   On the real CMU-1-Small-Region.svs (when ../shared/data is there): ours ÷ the per-tile loop
   (target >= 3.0), best of three alternated rounds.
2. Peak resident memory while tiling (tissue + grid + coords file, no tile reading) a
   100,000 x 100,000 px slide, measured in a fresh process (target < 1.5 GB).
3. Tissue + tiling (0.5 µm/px, 224 px) of a single-level (no pyramid) JPEG TIFF of the reading
   slide's size, each in a fresh process: seconds and peak RSS with reduced-scale JPEG decoding
   (``gpfm.slide.lowres``; target < 5 s and < 1 GB at 20,000 px) and with every level-0 pixel
   decoded (the path before it), and their ratio.

    python tests/benchmarks/bench_slide_reading.py [--size 20000] [--big-size 100000]
"""

from __future__ import annotations

import argparse
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import openslide
import simplejpeg
import tifffile

from gpfm.slide import Tiles, make_synthetic_slide, open_slide, read_tiles, tile


def per_tile_openslide_loop(path: Path, coords: np.ndarray, size: int) -> float:
    """tiles/s of the loop CLAM and TRIDENT run: one read_region + RGB conversion per tile."""
    slide = openslide.OpenSlide(path)
    start = time.perf_counter()
    for x, y in coords:
        np.asarray(slide.read_region((int(x), int(y)), 0, (size, size)).convert("RGB"))
    elapsed = time.perf_counter() - start
    slide.close()
    return len(coords) / elapsed


def ours(path: Path, tiles: Tiles, workers: int) -> tuple[float, float]:
    """(tiles/s, CPU seconds) of ``read_tiles``."""
    with open_slide(path) as slide:
        start, cpu = time.perf_counter(), time.process_time()
        count = sum(1 for _ in read_tiles(slide, tiles, num_workers=workers))
        return count / (time.perf_counter() - start), time.process_time() - cpu


def native_tile_streams(path: Path, tiles: Tiles) -> tuple[list[bytes], tuple[int, int]]:
    """The JPEG streams of the level-0 native tiles that ``tiles`` overlap, and their size."""
    with tifffile.TiffFile(path) as tiff:
        page = tiff.pages[0]
        tile_w, tile_h = page.tilewidth, page.tilelength
        columns = -(-page.imagewidth // tile_w)
        needed = set()
        for x, y in tiles.coords.tolist():
            x1, y1 = (
                min(x + tiles.read_size, page.imagewidth),
                min(y + tiles.read_size, page.imagelength),
            )
            for row in range(y // tile_h, -(-y1 // tile_h)):
                for col in range(x // tile_w, -(-x1 // tile_w)):
                    needed.add(row * columns + col)
        handle = tiff.filehandle
        streams = []
        for index in sorted(needed):
            handle.seek(page.dataoffsets[index])
            streams.append(handle.read(page.databytecounts[index]))
    return streams, (tile_w, tile_h)


def raw_decode(streams: list[bytes], size: tuple[int, int], threads: int) -> tuple[float, float]:
    """(wall, CPU) seconds for libjpeg-turbo to decode ``streams`` on ``threads`` threads, each
    into its own reused buffer."""

    def decode(part: list[bytes]) -> None:
        buffer = np.empty((size[1], size[0], 3), np.uint8)
        for stream in part:
            simplejpeg.decode_jpeg(stream, colorspace="RGB", buffer=buffer)

    parts = [streams[index::threads] for index in range(threads)]
    start, cpu = time.perf_counter(), time.process_time()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(decode, parts))
    return time.perf_counter() - start, time.process_time() - cpu


def reading_figures(path: Path, tiles: Tiles, workers: int, cores: int) -> None:
    streams, size = native_tile_streams(path, tiles)
    n = len(tiles)
    fast = one_core = parallel = 0.0
    ours_cpu = raw_cpu = math.inf
    for _ in range(3):  # alternated, best of each: bursts of load from other users hit both
        rate, cpu = ours(path, tiles, workers)
        fast, ours_cpu = max(fast, rate), min(ours_cpu, cpu)
        wall, cpu = raw_decode(streams, size, 1)
        one_core, raw_cpu = max(one_core, n / wall), min(raw_cpu, cpu)
        parallel = max(parallel, n / raw_decode(streams, size, cores)[0])
    baseline = per_tile_openslide_loop(path, tiles.coords, tiles.read_size)
    print(f"{'per-tile OpenSlide.read_region loop':<46}{baseline:>9.0f} tiles/s")
    print(f"{f'gpfm.slide.read_tiles ({workers} threads)':<46}{fast:>9.0f} tiles/s")
    print(
        f"raw decode: simplejpeg {simplejpeg.__version__} (libjpeg-turbo) of the {len(streams)} "
        f"native {size[0]} x {size[1]} px tiles the {n} tiles overlap, into a reused buffer:"
    )
    print(f"{'  on 1 thread':<46}{one_core:>9.0f} tiles/s")
    print(f"{f'  on {cores} threads at once (shared machine)':<46}{parallel:>9.0f} tiles/s")
    print(f"{'ours ÷ per-tile loop':<46}{fast / baseline:>9.2f}x  (target >= 3.0)")
    label = f"ours ÷ (raw decode on 1 thread x {cores} cores)"
    print(f"{label:<46}{fast / (one_core * cores):>9.2f}   (target >= 0.5; 1.0 = the limit)")
    print(f"{f'ours ÷ raw decode on {cores} threads at once':<46}{fast / parallel:>9.2f}")
    print(f"{'CPU seconds, raw decode ÷ ours':<46}{raw_cpu / ours_cpu:>9.2f}")


_TILE_ONLY = """
import resource, sys
from gpfm.slide import open_slide, tile, write_coords
with open_slide(sys.argv[1]) as slide:
    tiles = tile(slide, mpp=0.5, patch_size=224, min_tissue=0.5)
    write_coords(sys.argv[2], tiles)
print(len(tiles), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def tiling_peak_rss(path: Path, out: Path) -> tuple[int, float]:
    done = subprocess.run(
        [sys.executable, "-c", _TILE_ONLY, str(path), str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    count, max_rss_kib = done.stdout.split()
    return int(count), int(max_rss_kib) / 1024**2


_TISSUE_AND_TILES = """
import resource, sys, time
from gpfm.slide import lowres, open_slide, tile
if sys.argv[2] == "full":
    lowres.read_downsampled_jpeg = lambda *args, **kwargs: None
start = time.perf_counter()
with open_slide(sys.argv[1], mpp=0.5) as slide:
    tiles = tile(slide, mpp=0.5, patch_size=224, min_tissue=0.5)
print(len(tiles), time.perf_counter() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def single_level_copy(source: Path, target: Path) -> Path:
    """``source``'s level 0 alone in a new TIFF: its JPEG tiles copied as they are, no pyramid."""
    with tifffile.TiffFile(source) as tiff, tifffile.TiffWriter(target, bigtiff=True) as writer:
        page = tiff.pages[0]
        handle = tiff.filehandle

        def stored_tiles():
            for offset, count in zip(page.dataoffsets, page.databytecounts, strict=True):
                handle.seek(offset)
                yield handle.read(count)

        tables = bytes(page.jpegtables) if page.jpegtables is not None else None
        subsampling = page.tags.get("YCbCrSubSampling")
        writer.write(
            stored_tiles(),
            shape=page.shape,
            dtype=page.dtype,
            tile=(page.tilelength, page.tilewidth),
            compression=page.compression,
            photometric=page.photometric,
            subsampling=subsampling.value if subsampling is not None else None,
            extratags=[(347, 7, len(tables), tables, True)] if tables else [],
        )
    return target


def tissue_and_tiles(path: Path, mode: str) -> tuple[int, float, float]:
    """(tiles, seconds, peak RSS in GB) of tissue + tiling in a fresh process."""
    done = subprocess.run(
        [sys.executable, "-c", _TISSUE_AND_TILES, str(path), mode],
        capture_output=True,
        text=True,
        check=True,
    )
    count, seconds, max_rss_kib = done.stdout.split()
    return int(count), float(seconds), int(max_rss_kib) / 1024**2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=20_000, help="reading slide side, px")
    parser.add_argument(
        "--big-size", type=int, default=100_000, help="tiling slide side, px (0: skip)"
    )
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    cores = min(args.workers, os.cpu_count() or 1)

    with tempfile.TemporaryDirectory(prefix="gpfm-bench-") as folder:
        folder_path = Path(folder)
        size, big_size = args.size, args.big_size
        start = time.perf_counter()
        synthetic = make_synthetic_slide(folder_path / "read.tiff", size, size, 0.5, seed=1)
        print(f"made a {size} x {size} px slide in {time.perf_counter() - start:.1f} s")
        with open_slide(synthetic.path) as slide:
            tiles = tile(slide, mpp=0.5, patch_size=224, min_tissue=0.5)
        print(f"{len(tiles)} tissue tiles of 224 px at 0.5 µm/px (read at level {tiles.level})")

        load = os.getloadavg()[0]
        print(f"{os.cpu_count()} CPU cores, {cores} used; load average {load:.1f} (shared)")
        print()
        reading_figures(synthetic.path, tiles, args.workers, cores)

        flat = single_level_copy(synthetic.path, folder_path / "single-level.tiff")
        synthetic.path.unlink()
        print()
        print(f"tissue + tiling, single-level {size} x {size} px JPEG TIFF (fresh processes):")
        reduced = tissue_and_tiles(flat, "reduced")
        full = tissue_and_tiles(flat, "full")
        for label, (count, seconds, peak) in (
            ("reduced-scale JPEG decoding", reduced),
            ("every level-0 pixel decoded", full),
        ):
            print(f"  {label:<40}{seconds:>7.1f} s {peak:>6.2f} GB peak RSS, {count} tiles")
        print(f"  {'reduced ÷ full decode, time':<40}{reduced[1] / full[1]:>7.2f}")
        print("  (target: < 5 s and < 1 GB at 20,000 px)")
        flat.unlink()

        real = (
            Path(__file__).resolve().parents[2].parent / "shared/data/slides/CMU-1-Small-Region.svs"
        )
        if real.is_file():
            with open_slide(real) as slide:
                real_tiles = tile(slide, mpp=0.5, patch_size=224, min_tissue=0.5)
            baseline = fast = 0.0
            for _ in range(3):  # a few milliseconds each: alternated, best of three
                rate = per_tile_openslide_loop(real, real_tiles.coords, real_tiles.read_size)
                baseline = max(baseline, rate)
                fast = max(fast, ours(real, real_tiles, args.workers)[0])
            print()
            print(
                f"{real.name}: {len(real_tiles)} tiles, read_tiles {fast:.0f} tiles/s, per-tile "
                f"loop {baseline:.0f} tiles/s: {fast / baseline:.2f}x  (target >= 3.0)"
            )

        if not big_size:
            return
        start = time.perf_counter()
        big = make_synthetic_slide(folder_path / "big.tiff", big_size, big_size, 0.5, seed=2)
        print()
        print(f"made a {big_size} x {big_size} px slide in {time.perf_counter() - start:.1f} s")
        count, peak_gb = tiling_peak_rss(big.path, folder_path / "big.h5")
        own_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
        print(f"tiling it ({count} tiles): peak RSS {peak_gb:.2f} GB  (target < 1.5 GB)")
        print(f"(this benchmark process, which generated it: peak RSS {own_gb:.2f} GB)")


if __name__ == "__main__":
    main()
