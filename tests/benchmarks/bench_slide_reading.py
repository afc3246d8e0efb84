"""gpfm-slide reading and tiling benchmark; prints ratios measured side by side in one run.

1. Reading every tissue tile (0.5 µm/px, 224 px) of a synthetic 20,000 x 20,000 px JPEG slide:
   our reader's tiles/s ÷ the tiles/s of the per-tile ``OpenSlide.read_region`` loop that CLAM
   and TRIDENT use (target >= 3.0), and our tiles/s ÷ (the raw libjpeg-turbo decode rate of the
   same file on one core x the cores we use), i.e. how close we come to the machine's limit.
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
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import imagecodecs
import numpy as np
import openslide
import tifffile

from gpfm.slide import make_synthetic_slide, open_slide, read_tiles, tile


def per_tile_openslide_loop(path: Path, coords: np.ndarray, size: int) -> float:
    """tiles/s of the loop CLAM and TRIDENT run: one read_region + RGB conversion per tile."""
    slide = openslide.OpenSlide(path)
    start = time.perf_counter()
    for x, y in coords:
        np.asarray(slide.read_region((int(x), int(y)), 0, (size, size)).convert("RGB"))
    elapsed = time.perf_counter() - start
    slide.close()
    return len(coords) / elapsed


def ours(path: Path, tiles, workers: int) -> float:
    with open_slide(path) as slide:
        start = time.perf_counter()
        count = sum(1 for _ in read_tiles(slide, tiles, num_workers=workers))
        return count / (time.perf_counter() - start)


def raw_decode_rate(path: Path, tile_side: int) -> float:
    """Tile-equivalents (tile_side² pixels) per second that libjpeg-turbo decodes on one core.

    Decodes the stored JPEG tiles of level 0 from memory, single-threaded.
    """
    with tifffile.TiffFile(path) as tiff:
        page = tiff.pages[0]
        handle = tiff.filehandle
        blobs = []
        for offset, count in zip(page.dataoffsets[:2000], page.databytecounts[:2000], strict=True):
            handle.seek(offset)
            blobs.append(handle.read(count))
    pixels = 0
    start = time.perf_counter()
    for blob in blobs:
        decoded = imagecodecs.jpeg8_decode(blob)
        pixels += decoded.shape[0] * decoded.shape[1]
    elapsed = time.perf_counter() - start
    return pixels / tile_side**2 / elapsed


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

        baseline = per_tile_openslide_loop(synthetic.path, tiles.coords, tiles.read_size)
        fast = ours(synthetic.path, tiles, args.workers)
        decode = raw_decode_rate(synthetic.path, 224)
        limit = decode * cores
        print()
        print(f"{'per-tile OpenSlide.read_region loop':<42}{baseline:>10.0f} tiles/s")
        print(f"{f'gpfm.slide.read_tiles ({args.workers} threads)':<42}{fast:>10.0f} tiles/s")
        print(f"{'raw libjpeg-turbo decode, 1 core':<42}{decode:>10.0f} tile-equivalents/s")
        print(f"{'ours ÷ per-tile loop':<42}{fast / baseline:>10.2f}x  (target >= 3.0)")
        label = f"ours ÷ (raw decode x {cores} cores)"
        print(f"{label:<42}{fast / limit:>10.2f}   (1.0 = the machine's limit)")

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
            baseline = per_tile_openslide_loop(real, real_tiles.coords, real_tiles.read_size)
            fast = ours(real, real_tiles, args.workers)
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
