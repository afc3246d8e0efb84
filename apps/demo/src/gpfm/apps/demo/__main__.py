"""gpfm-demo: the toolkit's chain at toy scale on slides it generates.

    gpfm-demo --out demo-output [--slides 3] [--size 6000]

1. makes a small cohort of synthetic H&E slides (pyramidal JPEG TIFFs with known tissue);
2. tiles them with ``gpfm-slide tile`` (coords HDF5, tissue GeoJSON, QC PNG, manifest);
3. reads every tile back with the fast reader and batches a few through a torch DataLoader;
4. scores the tissue detection against the generator's ground truth;
5. pretrains a tiny ViT with GPFM's unified distillation (two tiny random experts) on tiles
   sampled from those slides, exports its teacher, and reports the DINO loss ÷ ln K at the end
   (1.0: the teacher's targets are uniform and nothing is learned) and any collapse;
6. extracts every tile's features with the exported teacher through gpfm-extract (HDF5, one
   file per slide) and fits a linear probe for tumour vs. non-tumour tiles (ground truth from the
   generator), validated and tested on held-out slides, next to the same probe on the
   encoder's initial weights (what pretraining added);
and writes ``summary.json``. The benchmark's leaderboard joins when it lands.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch.utils.data import DataLoader
from tqdm import tqdm

from gpfm.apps.extract import extract
from gpfm.apps.train.config import load_config
from gpfm.apps.train.trainer import export_initial_teacher, train
from gpfm.backbone import load_encoder
from gpfm.heads import balanced_accuracy, fit_linear_probe, read_features
from gpfm.slide import (
    PatchDataset,
    SyntheticSlide,
    Tiles,
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
    initial = export_initial_teacher(config, out / "pretraining" / "initial")
    ln_k = math.log(config.loss.prototypes)
    return {
        "steps": result["step"],
        "first_total_loss": round(history[0]["loss/total"], 4) if history else None,
        "last_total_loss": round(history[-1]["loss/total"], 4) if history else None,
        # 1.0 = ln K: the centred teacher targets are uniform, the student learns nothing
        "last_dino_over_ln_k": round(history[-1]["loss/dino"] / ln_k, 4) if history else None,
        "collapse": result["collapse"],
        "export": str(result["export"]),
        "initial_export": str(initial),
    }


def tile_tumour_labels(synthetic: SyntheticSlide, tiles: Tiles) -> np.ndarray:
    """1 where the generator painted tumour under the tile's centre, else 0."""
    centres = (tiles.coords + tiles.patch_size_level0 // 2) // synthetic.mask_downsample
    rows = np.clip(centres[:, 1], 0, synthetic.tumour_mask.shape[0] - 1)
    cols = np.clip(centres[:, 0], 0, synthetic.tumour_mask.shape[1] - 1)
    return synthetic.tumour_mask[rows, cols].astype(np.int64)


def features_and_probe(
    out: Path,
    cohort: list[SyntheticSlide],
    coords_dir: Path,
    export: Path,
    initial: Path | None = None,
) -> dict[str, Any]:
    """Features of every tile with the exported encoder (gpfm-extract), then a tumour linear
    probe; with ``initial``, the same probe on the features of the encoder's initial weights."""
    features_dir, per_slide = _extracted(out / "extracted", cohort, coords_dir, export)
    result: dict[str, Any] = {"features": str(features_dir), **_probe(per_slide)}
    if initial is not None and "test_balanced_accuracy" in result:
        _, baseline = _extracted(out / "extracted-initial", cohort, coords_dir, initial)
        initial_probe = _probe(baseline)
        result["initial_weights_test_balanced_accuracy"] = initial_probe["test_balanced_accuracy"]
    return result


def _extracted(
    folder: Path, cohort: list[SyntheticSlide], coords_dir: Path, encoder: Path
) -> tuple[Path, list[tuple[np.ndarray, np.ndarray]]]:
    """Every tile's features through gpfm-extract, with each slide's tumour labels."""
    summary = extract(
        [s.path for s in cohort], folder, [str(encoder)], coords=coords_dir, progress=True
    )
    if not summary.ok:
        raise RuntimeError(f"feature extraction failed; see {folder / 'manifest.jsonl'}")
    features_dir = folder / "features" / load_encoder(encoder).name
    per_slide = []
    for synthetic in cohort:
        tiles = read_coords(coords_dir / f"{synthetic.path.stem}.h5")
        features = read_features(features_dir / f"{synthetic.path.stem}.h5").features
        per_slide.append((features, tile_tumour_labels(synthetic, tiles)))
    return features_dir, per_slide


def _probe(per_slide: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """A linear probe's test balanced accuracy, on held-out slides where there are three or
    more, else on a seeded split of the tiles."""
    if len(per_slide) >= 3:
        train = per_slide[:-2]
        x_train = np.concatenate([f for f, _ in train])
        y_train = np.concatenate([y for _, y in train])
        (x_val, y_val), (x_test, y_test) = per_slide[-2], per_slide[-1]
    else:
        x_all = np.concatenate([f for f, _ in per_slide])
        y_all = np.concatenate([y for _, y in per_slide])
        order = np.random.default_rng(0).permutation(len(y_all))
        thirds = np.array_split(order, 3)
        x_train, y_train = x_all[thirds[0]], y_all[thirds[0]]
        x_val, y_val = x_all[thirds[1]], y_all[thirds[1]]
        x_test, y_test = x_all[thirds[2]], y_all[thirds[2]]
    result: dict[str, Any] = {
        "tiles": {"train": len(y_train), "val": len(y_val), "test": len(y_test)},
    }
    if min(len(np.unique(y)) for y in (y_train, y_val, y_test)) < 2:
        result["skipped"] = "a split has tiles of one class only"
        return result
    probe = fit_linear_probe(x_train, y_train, x_val, y_val)
    result["C"] = probe.C
    result["test_balanced_accuracy"] = round(balanced_accuracy(y_test, probe.predict(x_test)), 4)
    return result


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
    probe = features_and_probe(
        out,
        cohort,
        tiles_dir / "coords",
        Path(pretraining["export"]),
        initial=Path(pretraining["initial_export"]),
    )
    summary = {
        "slides": per_slide,
        "pretraining": pretraining,
        "tumour_probe": probe,
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
        f" -> {pretraining['last_total_loss']}; DINO loss at the end "
        f"{pretraining['last_dino_over_ln_k']:.3f} x ln K (1.0 = uniform targets, nothing "
        f"learned); teacher exported to {pretraining['export']}"
    )
    if pretraining["collapse"]:
        print(f"pretraining collapsed: {pretraining['collapse']}")
    probe = summary["tumour_probe"]
    if "test_balanced_accuracy" in probe:
        print(
            f"tumour probe, balanced accuracy on held-out tiles ({probe['tiles']}): "
            f"{probe['test_balanced_accuracy']:.3f} with the pretrained encoder, "
            f"{probe['initial_weights_test_balanced_accuracy']:.3f} with its initial weights "
            "(a few steps at toy scale: expect little difference)"
        )
    else:
        print(f"tumour probe skipped: {probe['skipped']}")
    print(f"demo finished in {summary['seconds']} s; outputs in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
