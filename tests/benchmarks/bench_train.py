"""Pretraining throughput benchmark; prints images/s and where each step's time goes.

CPU: the ``tiny_cpu`` configuration and a ViT-S/16 student (224 px, 2 global + 8 local crops,
two ViT-S/16 experts), split into teacher, experts, student forward + backward, and losses.
CUDA (when present): a ViT-L/14 student with ViT-L/16 and ViT-B/16 experts at batch 32, bf16:
images/s and peak memory.

    python tests/benchmarks/bench_train.py [--steps 3]
"""

from __future__ import annotations

import argparse
import contextlib
import random
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import replace
from typing import Any

import torch

from gpfm.apps.train.config import load_config
from gpfm.apps.train.data import SeededAugmentation, image_dataset, multicrop_augmentation
from gpfm.apps.train.trainer import build_model
from gpfm.distill import BlockMaskingGenerator, collate_multicrop


def make_batch(config: Any, patch_size: int, device: str) -> dict[str, Any]:
    images = SeededAugmentation(image_dataset(config), multicrop_augmentation(config), 0)
    grid = config.augment.global_size // patch_size
    samples = [images[i] for i in range(config.data.batch_size_per_device)]
    batch = collate_multicrop(samples, BlockMaskingGenerator((grid, grid)), rng=random.Random(0))
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


class Stopwatch:
    """Adds the wall time of each ``with stopwatch("part"):`` block to ``totals[part]``."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.totals: dict[str, float] = defaultdict(float)

    @contextlib.contextmanager
    def __call__(self, part: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        yield
        self._sync()
        self.totals[part] += time.perf_counter() - start

    def _sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()


def measure(config: Any, steps: int, device: str, dtype: torch.dtype | None) -> dict[str, float]:
    model = build_model(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameter_groups(), lr=1e-4)
    batch = make_batch(config, model.patch_size, device)
    watch = Stopwatch(device)
    for step in range(steps + 1):
        if step == 1:
            watch = Stopwatch(device)  # the first step only warms up
        with torch.autocast(device, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            with watch("teacher"):
                targets = model.teacher_targets(batch, 0.04)
            with watch("experts"):
                experts = model.expert_outputs(batch["global_crops"])
            with watch("student forward"):
                student = model.student_outputs(batch)
            with watch("losses"):
                terms = model.loss_terms(batch, targets, experts, student)
        with watch("student backward"):
            terms["total"].backward()
        with watch("optimizer + EMA"):
            optimizer.step()
            optimizer.zero_grad()
            model.update_teacher(0.996)
    return dict(watch.totals)


def report(title: str, totals: dict[str, float], images: int) -> None:
    total = sum(totals.values())
    print(f"\n{title}: {images / total:.1f} images/s")
    for name, seconds in totals.items():
        print(f"  {name:<20}{100 * seconds / total:>6.1f}% of the step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)

    tiny = load_config("tiny_cpu")
    batch = tiny.data.batch_size_per_device
    title = f"CPU, tiny_cpu (ViT-tiny/16 at {tiny.augment.global_size} px, batch {batch})"
    report(title, measure(tiny, args.steps, "cpu", None), batch * args.steps)

    small = load_config("tiny_cpu")
    small.student.arch, small.student.img_size, small.student.depth = "vit_small_patch16", 224, None
    small.augment = replace(small.augment, global_size=224, local_size=96, n_local=8)
    small.data.synthetic_size = 256
    small.loss = replace(
        small.loss, prototypes=65_536, head_hidden_dim=2048, head_bottleneck_dim=256
    )
    for expert in small.experts:
        expert.encoder, expert.overrides = "vit_small_patch16", {"img_size": 224}
    steps = max(1, args.steps - 1)
    report(
        f"CPU, ViT-S/16 student at 224 px, two ViT-S/16 experts, batch {batch}",
        measure(small, steps, "cpu", None),
        batch * steps,
    )
    if torch.cuda.is_available():
        large = load_config(
            "gpfm_vitl14", ["data.source=synthetic", "data.batch_size_per_device=32"]
        )
        large.experts = large.experts[:2]
        large.experts[0].encoder, large.experts[0].random_init = "vit_large_patch16", True
        large.experts[1].encoder, large.experts[1].random_init = "vit_base_patch16", True
        large.experts[1].overrides = large.experts[0].overrides = {}
        torch.cuda.reset_peak_memory_stats()
        totals = measure(large, args.steps, "cuda", torch.bfloat16)
        report(
            "CUDA, ViT-L/14 student, ViT-L/16 + ViT-B/16 experts, batch 32, bf16",
            totals,
            32 * args.steps,
        )
        print(f"  peak memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    else:
        print("\n(no CUDA device: the ViT-L/14 GPU measurement is skipped)")


if __name__ == "__main__":
    main()
