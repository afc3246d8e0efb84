"""Does pretraining learn on real patches? DINO loss ÷ ln K and linear probes, per recipe.

Pretrains each recipe on the PCam patches of ``../shared/data/roi/pcam-subset-1000`` (its
train and validation splits: 800 patches, no labels used), then embeds every unique patch with
the exported teacher and with the same encoder's initial weights, and fits a linear probe
(``gpfm.heads.fit_linear_probe``, C chosen on validation) on 20 random stratified 60/20/20
re-splits. Prints, per recipe: the DINO term ÷ ln K (mean over the last 20 steps), whether the
collapse detector fired, and the probe's test balanced accuracy (mean ± standard error over the
re-splits) for the pretrained encoder and for its initial weights. The 7 byte-identical pairs
of the subset are dropped first (993 patches), so no patch is in two splits.

    python tests/benchmarks/bench_collapse.py [--steps 1000] [--batch 32] [--recipes a,b]
"""

from __future__ import annotations

import argparse
import hashlib
import math
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import set_seed
from PIL import Image

from gpfm.apps.train.config import TrainConfig, load_config
from gpfm.apps.train.trainer import build_model, export_teacher, train
from gpfm.backbone import load_encoder
from gpfm.heads import balanced_accuracy, fit_linear_probe

PCAM = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "roi" / "pcam-subset-1000"

# name -> (configuration, overrides); every recipe also gets the data, steps and batch below.
RECIPES: dict[str, tuple[str, list[str]]] = {
    # gpfm-train's tiny_cpu before this change, as the issue ran it (no experts, 1,024 prototypes)
    "tiny_cpu (before)": (
        "tiny_cpu",
        [
            "experts=[]",
            "student.init_values=1e-5",
            "loss.prototypes=1024",
            "optim.base_lr=0.004",
            "optim.warmup_steps=5",
            "optim.teacher_temp=0.07",
            "optim.warmup_teacher_temp=0.04",
            "optim.warmup_teacher_temp_steps=10",
            "optim.freeze_last_layer_steps=2",
        ],
    ),
    "tiny_cpu (now)": ("tiny_cpu", ["experts=[]"]),
    "small_patches": ("small_patches", []),
}


def unique_patches(folder: Path) -> tuple[list[Path], np.ndarray, list[str]]:
    """Every patch once (byte-identical copies dropped), its label and its source split."""
    rows = [line.split(",") for line in (folder / "labels.csv").read_text().splitlines()[1:]]
    seen: set[str] = set()
    paths, labels, splits = [], [], []
    for path, label, _, split in rows:
        digest = hashlib.sha256((folder / path).read_bytes()).hexdigest()
        if digest in seen:
            continue
        seen.add(digest)
        paths.append(folder / path)
        labels.append(int(label))
        splits.append(split)
    return paths, np.asarray(labels), splits


@torch.no_grad()
def embed(export: Path, paths: list[Path]) -> np.ndarray:
    encoder = load_encoder(export)
    features = []
    for start in range(0, len(paths), 128):
        tiles = [np.asarray(Image.open(p).convert("RGB")) for p in paths[start : start + 128]]
        batch = torch.from_numpy(np.stack(tiles)).permute(0, 3, 1, 2)
        features.append(encoder(encoder.transform(batch)))
    return torch.cat(features).numpy()


def probe(features: np.ndarray, labels: np.ndarray, splits: int) -> tuple[float, float]:
    """Test balanced accuracy, mean and standard error over stratified 60/20/20 re-splits."""
    scores = []
    for seed in range(splits):
        rng = np.random.default_rng(seed)
        parts: list[list[int]] = [[], [], []]
        for cls in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == cls))
            cuts = [round(0.6 * len(members)), round(0.8 * len(members))]
            for part, chunk in zip(parts, np.split(members, cuts), strict=True):
                part.extend(chunk.tolist())
        tr, va, te = (np.asarray(p) for p in parts)
        fitted = fit_linear_probe(features[tr], labels[tr], features[va], labels[va])
        scores.append(balanced_accuracy(labels[te], fitted.predict(features[te])))
    values = np.asarray(scores)
    return float(values.mean()), float(values.std(ddof=1) / math.sqrt(len(values)))


def pretrain(config: TrainConfig) -> dict[str, Any]:
    started = time.perf_counter()
    result = train(config)
    seconds = time.perf_counter() - started
    set_seed(config.seed)  # the trainer's own seeding, so the same initial weights
    initial = export_teacher(build_model(config), config, Path(config.output_dir) / "initial", 0)
    dino = [row["loss/dino"] for row in result["history"][-20:]]
    return {
        "dino_over_ln_k": float(np.mean(dino)) / math.log(config.loss.prototypes),
        "collapse": result["collapse"],
        "export": result["export"],
        "initial": initial,
        "seconds": seconds,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--splits", type=int, default=20)
    parser.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated names")
    parser.add_argument("--out", type=Path, default=None, help="keep the runs here")
    parser.add_argument("--extra", nargs="*", default=[], help="overrides for every recipe")
    args = parser.parse_args()
    if not PCAM.is_dir():
        raise SystemExit(f"{PCAM} is absent: nothing to measure")
    paths, labels, sources = unique_patches(PCAM)
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_collapse_"))
    out.mkdir(parents=True, exist_ok=True)
    listing = out / "pretraining_patches.txt"
    pool = [str(p) for p, s in zip(paths, sources, strict=True) if s != "test"]
    listing.write_text("\n".join(pool))
    print(
        f"{len(paths)} unique patches ({len(labels) - labels.sum()} normal, {labels.sum()} "
        f"tumour); pretraining on {len(pool)} (train + validation), "
        f"{args.steps} steps, batch {args.batch}; probes over {args.splits} re-splits 60/20/20"
    )
    for name in args.recipes.split(","):
        config_name, overrides = RECIPES[name]
        run_dir = out / name.replace(" ", "_").replace("(", "").replace(")", "")
        config = load_config(
            config_name,
            [
                *overrides,
                f"output_dir={run_dir}",
                "data.source=folder",
                f"data.path={listing}",
                f"max_steps={args.steps}",
                f"checkpoint_every={args.steps}",
                f"data.batch_size_per_device={args.batch}",
                "log_every=10",
                *args.extra,
            ],
        )
        run = pretrain(config)
        trained = probe(embed(run["export"], paths), labels, args.splits)
        initial = probe(embed(run["initial"], paths), labels, args.splits)
        fired = "fired" if run["collapse"] else "quiet"
        print(
            f"{name:18s} DINO/ln K {run['dino_over_ln_k']:.3f}  detector {fired:5s}  "
            f"probe pretrained {trained[0]:.3f} ± {trained[1]:.3f}  "
            f"initial weights {initial[0]:.3f} ± {initial[1]:.3f}  ({run['seconds']:.0f} s)",
            flush=True,
        )
        if run["collapse"]:
            print(f"    {run['collapse'][:200]}...")


if __name__ == "__main__":
    main()
