"""gpfm-demo: the toolkit's chain at toy scale on slides it generates.

    gpfm-demo --out demo-output [--slides 3] [--size 6000]

1. makes a small cohort of synthetic H&E slides (pyramidal JPEG TIFFs with known tissue);
2. tiles them with ``gpfm-slide tile`` (coords HDF5, tissue GeoJSON, QC PNG, manifest);
3. reads every tile back with the fast reader and batches a few through a torch DataLoader;
4. scores the tissue detection against the generator's ground truth;
5. pretrains a tiny ViT with GPFM's unified distillation (two tiny random experts) on tiles
   sampled from those slides, and exports its teacher;
and writes ``summary.json``. Later stages (features, benchmark) join as they land.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader
from tqdm import tqdm

from gpfm.apps.train.config import load_config
from gpfm.apps.train.trainer import train
from gpfm.slide import (
    PatchDataset,
    make_synthetic_slide,
    open_slide,
    read_coords,
    read_tiles,
    segment_tissue,
)
from gpfm.slide.cli import main as slide_cli
from gpfm.slide.storage import atomic_path

logger = logging.getLogger("gpfm.apps.demo")


def tissue_iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two boolean masks of the same shape."""
    union = np.logical_or(predicted, truth).sum()
    return float(np.logical_and(predicted, truth).sum() / union) if union else 1.0


def pretrain(out: Path, coords_dir: Path, steps: int, seed: int) -> dict[str, Any]:
    """A few steps of the ``tiny_cpu`` recipe on tiles of the demo slides."""
    config = load_config(
        "tiny_cpu",
        [
            f"output_dir={out / 'pretraining'}",
            f"max_steps={steps}",
            f"checkpoint_every={steps}",
            f"seed={seed}",
            "data.source=slides",
            f"data.path={coords_dir}",
            "data.patches_per_slide=32",
        ],
    )
    result = train(config)
    history = result["history"]
    return {
        "steps": result["step"],
        "first_total_loss": round(history[0]["loss/total"], 4) if history else None,
        "last_total_loss": round(history[-1]["loss/total"], 4) if history else None,
        "export": str(result["export"]),
    }


def run(
    out: Path, num_slides: int = 3, size: int = 6000, seed: int = 0, pretrain_steps: int = 10
) -> dict[str, Any]:
    """Run the demo chain into ``out`` and return its summary."""
    started = time.perf_counter()
    slides_dir = out / "slides"
    slides_dir.mkdir(parents=True, exist_ok=True)
    cohort = []
    for index in tqdm(range(num_slides), desc="generating slides", unit="slide"):
        path = slides_dir / f"synthetic-{index:02d}.tiff"
        cohort.append(make_synthetic_slide(path, size, int(size * 0.75), 0.5, seed=seed + index))

    tiles_dir = out / "tiles"
    status = slide_cli(["tile", *(str(s.path) for s in cohort), "--out", str(tiles_dir)])
    if status != 0:
        raise RuntimeError(f"tiling failed; see {tiles_dir / 'manifest.jsonl'}")

    per_slide = []
    for synthetic in tqdm(cohort, desc="reading tiles", unit="slide"):
        tiles = read_coords(tiles_dir / "coords" / f"{synthetic.path.stem}.h5")
        with open_slide(synthetic.path) as slide:
            tissue = segment_tissue(slide, mpp=synthetic.mask_mpp)
            truth = synthetic.tissue_mask[: tissue.mask.shape[0], : tissue.mask.shape[1]]
            mark = time.perf_counter()
            mean_rgb = np.zeros(3)
            for _, pixels in read_tiles(slide, tiles):
                mean_rgb += pixels.reshape(-1, 3).mean(0)
            read_s = time.perf_counter() - mark
        loader = DataLoader(PatchDataset(synthetic.path, tiles), batch_size=16, num_workers=0)
        batch = next(iter(loader))
        per_slide.append(
            {
                "slide": synthetic.path.name,
                "tiles": len(tiles),
                "tissue_iou": round(tissue_iou(tissue.mask, truth), 4),
                "tiles_per_s": round(len(tiles) / max(read_s, 1e-9), 1),
                "mean_tile_rgb": [round(v, 1) for v in (mean_rgb / max(1, len(tiles)))],
                "batch_shape": list(batch.shape),
            }
        )
    pretraining = pretrain(out, tiles_dir / "coords", steps=pretrain_steps, seed=seed)
    summary = {
        "slides": per_slide,
        "pretraining": pretraining,
        "outputs": {"slides": str(slides_dir), "tiles": str(tiles_dir)},
        "seconds": round(time.perf_counter() - started, 1),
    }
    with atomic_path(out / "summary.json") as temporary:
        temporary.write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpfm-demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder")
    parser.add_argument("--slides", type=int, default=3, help="number of synthetic slides")
    parser.add_argument("--size", type=int, default=6000, help="slide width in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pretrain-steps", type=int, default=10, help="distillation steps")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    summary = run(args.out, args.slides, args.size, args.seed, args.pretrain_steps)
    for record in summary["slides"]:
        print(
            f"{record['slide']}: {record['tiles']} tiles, tissue IoU {record['tissue_iou']:.3f} "
            f"vs ground truth, read at {record['tiles_per_s']:.0f} tiles/s"
        )
    pretraining = summary["pretraining"]
    print(
        f"pretraining: {pretraining['steps']} steps, total loss {pretraining['first_total_loss']}"
        f" -> {pretraining['last_total_loss']}; teacher exported to {pretraining['export']}"
    )
    print(f"demo finished in {summary['seconds']} s; outputs in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
