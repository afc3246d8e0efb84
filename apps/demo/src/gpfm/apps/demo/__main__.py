"""gpfm-demo: the whole toolkit at toy scale on data it generates, from pixels to a leaderboard.

    gpfm-demo --out demo-output [--fast]

1. cohort: synthetic H&E slides (known tissue and tumour), ROI crops cut from them, and one
   task of each of the six types whose labels come from the generator's ground truth
   (``gpfm.apps.demo.cohort``);
2. tiling: ``gpfm-slide tile`` (coords HDF5, tissue GeoJSON, QC PNG), scored against the true
   tissue masks (IoU);
3. experts: two tiny random ViTs exported as encoders;
4. pretraining: a tiny GPFM student distilled from those two experts with gpfm-train's
   ``tiny_cpu`` recipe on tiles of the slides, teacher exported as an encoder;
5. evaluation: gpfm-evaluate on the student and the two experts: features through
   gpfm-extract (slides) and the encoders' transforms (ROI images), then slide classification,
   survival, ROI classification, ROI retrieval, VQA and report generation (SmolLM2-135M with
   LoRA), leaderboard and HTML report.

Writes ``summary.json`` with every number and the seconds per stage, prints the leaderboard
and where the report is. Every number is computed by the run.
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
import torch

from gpfm.apps.demo.cohort import CohortSize, make_cohort
from gpfm.apps.evaluate import evaluate
from gpfm.apps.evaluate.run import scores_text, summary_lines
from gpfm.apps.train.config import load_config
from gpfm.apps.train.trainer import train
from gpfm.backbone import create_vit, export_encoder
from gpfm.bench.leaderboard import Leaderboard
from gpfm.slide import open_slide, read_coords, segment_tissue
from gpfm.slide.cli import main as slide_cli
from gpfm.slide.storage import atomic_path

logger = logging.getLogger("gpfm.apps.demo")

FULL = CohortSize(slides=12, width=3000, rois_per_class=3, language_steps=6, report_tokens=12)
FAST = CohortSize(slides=8, width=2000, rois_per_class=2, language_steps=1, report_tokens=6)
# The two experts of the tiny_cpu recipe: (architecture, create_vit overrides).
EXPERTS = {
    "expert_a": ("vit_tiny_patch16", {"depth": 1, "img_size": 64}),
    "expert_b": ("vit_tiny_patch14", {"depth": 1, "img_size": 56, "embed_dim": 96, "num_heads": 3}),
}
STUDENT = "gpfm_tiny"


def tissue_iou(predicted: np.ndarray, truth: np.ndarray) -> float:
    """Intersection over union of two boolean masks of the same shape."""
    union = np.logical_or(predicted, truth).sum()
    return float(np.logical_and(predicted, truth).sum() / union) if union else 1.0


def export_experts(folder: Path, seed: int) -> dict[str, Path]:
    """The two tiny random experts, seeded, as encoder folders that gpfm-extract and
    gpfm-train both load."""
    exported = {}
    for index, (name, (architecture, overrides)) in enumerate(EXPERTS.items()):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed + 1 + index)
            model = create_vit(architecture, **overrides)
        exported[name] = export_encoder(model, folder / name, name=name, architecture=architecture)
    return exported


def pretrain(
    out: Path, coords_dir: Path, experts: dict[str, Path], steps: int, seed: int
) -> dict[str, Any]:
    """``steps`` of the ``tiny_cpu`` recipe on tiles of the slides, distilling from
    ``experts``; the teacher is exported as ``<out>/gpfm_tiny/export``."""
    overrides = [
        f"output_dir={out / STUDENT}",
        f"max_steps={steps}",
        f"checkpoint_every={steps}",
        f"seed={seed}",
        "data.source=slides",
        f"data.path={coords_dir}",
        "data.patches_per_slide=32",
    ]
    for index, folder in enumerate(experts.values()):
        overrides += [f"experts.{index}.encoder={folder}", f"experts.{index}.random_init=false"]
    config = load_config("tiny_cpu", overrides)
    result = train(config)
    history = result["history"]
    ln_k = math.log(config.loss.prototypes)
    return {
        "steps": result["step"],
        "first_total_loss": round(history[0]["loss/total"], 4) if history else None,
        "last_total_loss": round(history[-1]["loss/total"], 4) if history else None,
        # 1.0 = ln K: the centred teacher targets are uniform, the student learns nothing
        "last_dino_over_ln_k": round(history[-1]["loss/dino"] / ln_k, 4) if history else None,
        "collapse": result["collapse"],
        "export": str(result["export"]),
    }


def _tile(cohort_slides: Sequence[Any], tiles_dir: Path) -> list[dict[str, Any]]:
    status = slide_cli(["tile", *(str(s.path) for s in cohort_slides), "--out", str(tiles_dir)])
    if status != 0:
        raise RuntimeError(f"tiling failed; see {tiles_dir / 'manifest.jsonl'}")
    records = []
    for synthetic in cohort_slides:
        tiles = read_coords(tiles_dir / "coords" / f"{synthetic.path.stem}.h5")
        with open_slide(synthetic.path) as slide:
            tissue = segment_tissue(slide, mpp=synthetic.mask_mpp)
        truth = synthetic.tissue_mask[: tissue.mask.shape[0], : tissue.mask.shape[1]]
        records.append(
            {
                "slide": synthetic.path.name,
                "tiles": len(tiles),
                "tissue_iou": round(tissue_iou(tissue.mask, truth), 4),
            }
        )
    return records


def render_overview(board: Leaderboard, report: Path, path: Path) -> Path:
    """One small PNG of what the report shows first: the leaderboard table above the report's
    per-task bars (``figures/task_bars.png``), for the README."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = plt.imread(report / "figures" / "task_bars.png")
    table = board.table()
    height = bars.shape[0] / bars.shape[1] * 9
    fig, (top, bottom) = plt.subplots(
        2,
        1,
        figsize=(9, 0.35 * len(table) + 0.6 + height),
        height_ratios=[0.35 * len(table), height],
    )
    top.axis("off")
    top.set_title(
        f"leaderboard ({board.protocol} protocol, {len(board.scores)} tasks)", fontsize=10
    )
    cells = top.table(cellText=table[1:], colLabels=table[0], loc="center", cellLoc="left")
    cells.auto_set_font_size(False)
    cells.set_fontsize(8)
    bottom.imshow(bars)
    bottom.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def run(
    out: Path, fast: bool = False, seed: int = 0, pretrain_steps: int | None = None
) -> dict[str, Any]:
    """Run the demo chain into ``out`` and return its summary (also ``summary.json``)."""
    size = FAST if fast else FULL
    steps = pretrain_steps if pretrain_steps is not None else (3 if fast else 20)
    seconds: dict[str, float] = {}
    mark = time.perf_counter()

    def stage(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        seconds[name] = round(now - mark, 1)
        mark = now

    cohort = make_cohort(out / "cohort", size, seed)
    stage("cohort")
    tiling = _tile(cohort.slides, out / "tiles")
    stage("tiling")
    experts = export_experts(out / "experts", seed)
    stage("experts")
    pretraining = pretrain(out, out / "tiles" / "coords", experts, steps, seed)
    stage("pretraining")
    encoders = [pretraining["export"], *(str(p) for p in experts.values())]
    records, boards = evaluate(
        encoders,
        ",".join(cohort.task_names),
        cohort.data_root,
        out / "evaluation",
        task_folders=[cohort.tasks_dir],
        coords=out / "tiles" / "coords",
        echo=lambda line: None,
    )
    stage("evaluation")
    by_type: dict[str, float] = {}
    for record in records:
        by_type[record["type"]] = round(by_type.get(record["type"], 0.0) + record["seconds"], 1)
    board = boards.get("ours")
    report = out / "evaluation" / "report"
    if board is not None and (report / "figures" / "task_bars.png").exists():
        render_overview(board, report, report / "overview.png")
    summary = {
        "cohort": {
            "slides": len(cohort.slides),
            "rois": len(cohort.images),
            "tumour_burden": [round(b, 3) for b in cohort.burdens],
            "tasks": cohort.task_names,
        },
        "tiling": tiling,
        "pretraining": pretraining,
        "jobs": records,
        "leaderboard": str(board) if board is not None else None,
        "scores": scores_text(board) if board is not None else None,
        "report": str(report / "report.html"),
        "seconds": {**seconds, "jobs_by_type": by_type, "total": round(sum(seconds.values()), 1)},
    }
    with atomic_path(out / "summary.json") as temporary:
        temporary.write_text(json.dumps(summary, indent=2))
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpfm-demo", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder")
    parser.add_argument("--fast", action="store_true", help="the smaller run of the CI test")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pretrain-steps", type=int, default=None, help="distillation steps")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    summary = run(args.out, args.fast, args.seed, args.pretrain_steps)
    cohort = summary["cohort"]
    print(f"cohort: {cohort['slides']} slides, {cohort['rois']} ROI images, 6 tasks")
    for record in summary["tiling"]:
        print(f"{record['slide']}: {record['tiles']} tiles, tissue IoU {record['tissue_iou']:.3f}")
    pretraining = summary["pretraining"]
    print(
        f"pretraining: {pretraining['steps']} steps, total loss {pretraining['first_total_loss']}"
        f" -> {pretraining['last_total_loss']}; DINO loss at the end "
        f"{pretraining['last_dino_over_ln_k']:.3f} x ln K (1.0 = uniform targets)"
    )
    for line in summary_lines(summary["jobs"]):
        print(line)
    print(summary["scores"] or "")
    print(summary["leaderboard"] or "no leaderboard: no job finished")
    times = summary["seconds"]
    print(
        "seconds: "
        + ", ".join(f"{k} {v}" for k, v in times.items() if k not in ("jobs_by_type", "total"))
        + f"; total {times['total']}"
    )
    print(
        "jobs by task type (s): " + ", ".join(f"{k} {v}" for k, v in times["jobs_by_type"].items())
    )
    print(f"report: {summary['report']}")
    return 0 if all(r["status"] == "done" for r in summary["jobs"]) else 1


if __name__ == "__main__":
    sys.exit(main())
