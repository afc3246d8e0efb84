"""gpfm-curate benchmark (CPU); prints ratios measured side by side, in alternating rounds.

On synthetic JPEG slides (0.5 µm/px), 512 px patches:

1. Writing: patches/s of ``curate_patches`` + Parquet (read, quality checks, JPEG encode, write a
   part) ÷ ``read_tiles`` tiles/s on the same tiles (those the curator tried). Target >= 0.5.
   Printed with it: the CPU time per tile of reading, of the quality checks and of the JPEG
   encoding, and the ratio they allow when every core is busy.
2. Bytes per patch in the Parquet store (JPEG quality 90).
3. Training: images/s of gpfm-train's tiny configuration fed from the store (``data.source=hf``)
   ÷ fed from the same patches already decoded in memory. Target >= 0.9.

    python tests/benchmarks/bench_curate.py [--slides 2] [--size 10000] [--patches 64] [--rounds 5]
        [--steps 16] [--no-training]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from gpfm.slide import make_synthetic_slide, open_slide, read_tiles, segment_tissue, tile
from gpfm.slide.curation import curate_patches, encode_jpeg
from gpfm.slide.quality import QualityThresholds, measure
from gpfm.slide.sampling import candidate_order, subset
from gpfm.slide.store import Shard, rows_to_table, write_index, write_table


def curate_rate(paths: list[Path], tiles: list, count: int, out: Path) -> tuple[float, list[int]]:
    """patches/s written, and the number of tiles tried per slide."""
    written, tried = 0, []
    start = time.perf_counter()
    for number, (path, grid) in enumerate(zip(paths, tiles, strict=True)):
        with open_slide(path) as slide:
            result = curate_patches(slide, grid, count, seed=number)
        rows = [
            {"image": p.jpeg, "slide_id": path.stem, "x": p.x, "y": p.y, "level": grid.level,
             "mpp": grid.mpp, "patch_size": grid.patch_size, "cohort": "bench",
             "tissue_type": "bench", "tissue_fraction": p.measures.tissue_fraction,
             "sharpness": p.measures.sharpness, "phash": f"{p.measures.phash:016x}"}
            for p in result.patches
        ]  # fmt: skip
        write_table(
            out / f"data/train-{number:05d}-of-{len(paths):05d}.parquet", rows_to_table(rows)
        )
        written += len(rows)
        tried.append(result.tried)
    return written / (time.perf_counter() - start), tried


def tried_tiles(paths: list[Path], tiles: list, tried: list[int]) -> Iterator[np.ndarray]:
    """The pixels of the tiles the curator tried, slide by slide, in its order."""
    for number, (path, grid) in enumerate(zip(paths, tiles, strict=True)):
        order = candidate_order(grid, number)[: tried[number]]
        with open_slide(path) as slide:
            for _, rgb in read_tiles(slide, subset(grid, order)):
                yield rgb


def read_rate(paths: list[Path], tiles: list, tried: list[int]) -> tuple[float, float]:
    """tiles/s of ``read_tiles`` on the tiles the curator tried, in the same order, and the CPU
    seconds (all threads) per tile."""
    start, cpu = time.perf_counter(), time.process_time()
    count = sum(1 for _ in tried_tiles(paths, tiles, tried))
    return count / (time.perf_counter() - start), (time.process_time() - cpu) / count


def cpu_per_patch(paths: list[Path], tiles: list, tried: list[int]) -> tuple[float, float]:
    """CPU seconds per patch of the quality checks and of the JPEG encoding, on one thread, on
    the tried tiles already in memory (best of three)."""
    pixels = [rgb.copy() for rgb in tried_tiles(paths, tiles, tried)]
    thresholds = QualityThresholds()
    checks = encode = math.inf
    for _ in range(3):
        cpu = time.process_time()
        for rgb in pixels:
            measure(rgb, thresholds)
        checks = min(checks, (time.process_time() - cpu) / len(pixels))
        cpu = time.process_time()
        for rgb in pixels:
            encode_jpeg(rgb, 90)
        encode = min(encode, (time.process_time() - cpu) / len(pixels))
    return checks, encode


def training_rates(store: Path, work: Path, steps: int, store_first: bool) -> tuple[float, float]:
    """images/s of the tiny configuration: from the store, and from decoded patches.

    Both with 2 DataLoader workers and the same augmentation; the first two steps (start-up)
    are left out.
    """
    from gpfm.apps.train import trainer
    from gpfm.apps.train.config import load_config
    from gpfm.apps.train.data import StoreImages

    def run(name: str, source: list[str]) -> float:
        config = load_config(
            "tiny_cpu",
            [f"output_dir={work / name}", f"max_steps={steps}", f"checkpoint_every={10**6}",
             "data.batch_size_per_device=16", "data.num_workers=2", *source],
        )  # fmt: skip
        history = trainer.train(config)["history"][2:]
        # Images ÷ seconds (every step has the same batch): the median of per-step rates would
        # mix steps that wait for data with steps that drain the batches prefetched meanwhile.
        return len(history) / sum(1 / h["images_per_s"] for h in history)

    decoded = StoreImages(str(store))
    in_memory = [decoded[i] for i in range(len(decoded))]
    original = trainer.image_dataset

    def from_store() -> float:
        return run(f"store-{time.monotonic_ns()}", ["data.source=hf", f"data.path={store}"])

    def from_memory() -> float:
        trainer.image_dataset = lambda config: in_memory  # type: ignore[assignment,misc]
        try:
            return run(f"memory-{time.monotonic_ns()}", [])
        finally:
            trainer.image_dataset = original

    if store_first:
        a = from_store()
        return a, from_memory()
    b = from_memory()
    return from_store(), b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--slides", type=int, default=2)
    parser.add_argument("--size", type=int, default=10000, help="slide side, px")
    parser.add_argument("--patches", type=int, default=64, help="patches per slide")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=16, help="training steps per round")
    parser.add_argument("--no-training", action="store_true", help="figures 1 and 2 only")
    args = parser.parse_args()
    cv2.setNumThreads(1)  # as gpfm-curate does: the checks already run one patch per thread
    print(f"CPU cores {os.cpu_count()}; {args.slides} slides of {args.size} px, 512 px patches")
    with tempfile.TemporaryDirectory(prefix="gpfm-bench-curate-") as folder:
        work = Path(folder)
        paths, grids = [], []
        for number in range(args.slides):
            path = make_synthetic_slide(
                work / f"s{number}.tiff", args.size, args.size, 0.5, seed=number
            ).path
            with open_slide(path) as slide:
                grids.append(tile(slide, mpp=0.5, patch_size=512, tissue=segment_tissue(slide)))
            paths.append(path)
        _, tried = curate_rate(paths, grids, args.patches, work / "warm-up")  # not measured
        read_rate(paths, grids, tried)
        writes, reads, ratios, read_cpus = [], [], [], []
        for round_number in range(args.rounds):
            store = work / f"store{round_number}"
            # A/B alternate, and swap who goes first each round.
            if round_number % 2 == 0:
                write, tried = curate_rate(paths, grids, args.patches, store)
                read, read_cpu = read_rate(paths, grids, tried)
            else:
                read, read_cpu = read_rate(paths, grids, tried)
                write, tried = curate_rate(paths, grids, args.patches, store)
            writes.append(write), reads.append(read), ratios.append(write / read)
            read_cpus.append(read_cpu)
            print(
                f"round {round_number}: curate+write {write:.1f} patches/s, read_tiles "
                f"{read:.1f} tiles/s, tried {sum(tried)} for {args.patches * args.slides}"
            )
        files = sorted((work / "store0" / "data").glob("*.parquet"))
        shards = [Shard(f"data/{f.name}", 0) for f in files]
        from gpfm.slide.store import read_table

        shards = [Shard(s.file, read_table(work / "store0" / s.file).num_rows) for s in shards]
        write_index(work / "store0", shards)
        rows = sum(s.rows for s in shards)
        size = sum(f.stat().st_size for f in files)
        print(
            f"writing: curate+write ÷ read_tiles = {statistics.median(ratios):.2f} "
            f"(median of {args.rounds} rounds; target >= 0.5)"
        )
        print(f"bytes per patch: {size / rows:,.0f} ({rows} patches of 512 px, JPEG quality 90)")
        # Every patch tried is read and checked; every patch kept is encoded.
        checks, encode = cpu_per_patch(paths, grids, tried)
        reading = min(read_cpus)
        kept = args.patches * args.slides / sum(tried)
        bound = reading / (reading + checks + encode * kept)
        print(
            f"CPU ms per tile tried: reading {1e3 * reading:.2f} (read_tiles, all threads), "
            f"quality checks {1e3 * checks:.2f}, JPEG encoding {1e3 * encode * kept:.2f}; with "
            f"every core busy, curate+write ÷ read_tiles is at most {bound:.2f}"
        )
        if args.no_training:
            return
        train_ratios = []
        for round_number in range(args.rounds):
            from_store, from_memory = training_rates(
                work / "store0", work / "train", args.steps, store_first=round_number % 2 == 0
            )
            train_ratios.append(from_store / from_memory)
            print(
                f"round {round_number}: training from the store {from_store:.1f} images/s, "
                f"from memory {from_memory:.1f} images/s"
            )
        print(
            f"training: store ÷ in-memory = {statistics.median(train_ratios):.2f} "
            f"(median of {args.rounds} rounds; target >= 0.9)"
        )


if __name__ == "__main__":
    main()
