"""Pretraining step throughput, before and after the step's speed-ups, with a per-stage split.

CPU: a ViT-S/16 student at 224 px (2 global + 4 local 96 px crops, batch 8, two ViT-S/16
experts, fp32; ``--n-local 8`` for GPFM's 8) at 1,024 and 65,536 prototypes. "Before" is the
training step of an earlier commit (``--before``, default: the last one without the
speed-ups): its ``gpfm-distill``, ``gpfm-backbone`` and ``gpfm-train`` sources are extracted
with ``git archive`` and imported in a worker process in place of the installed ones ("after"
is the installed code, or ``--after REV`` extracted likewise). Before and after run in alternating
rounds (a shared machine drifts), each in a fresh process, on the same batch and weights;
the first step's loss terms of both are compared. Each version steps as its trainer does:
its optimiser groups and AdamW, its clipping, its EMA.

CUDA (when present): a ViT-L/14 student with three ViT experts (ViT-L/16, ViT-B/16, ViT-B/16),
batch 32, bf16: images/s and model FLOPs utilisation (achieved ÷ the GPU's bf16 peak).

    python tests/benchmarks/bench_train.py [--rounds 2] [--steps 1] [--before REV] [--after REV]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BEFORE = "012b5e6612c5943711061b6293c11306a79aaa35"  # the step before one-call heads etc.
SOURCES = ("packages/distill/src", "packages/backbone/src", "apps/train/src")
STAGES = (
    "teacher",
    "heads",
    "experts",
    "student forward",
    "losses",
    "backward",
    "optimizer",
    "EMA",
)


# ------------------------------------------------------------------------------- worker side


def small_config(prototypes: int, n_local: int) -> Any:
    from dataclasses import replace

    from gpfm.apps.train.config import load_config

    config = load_config("tiny_cpu")
    config.student.arch, config.student.img_size, config.student.depth = (
        "vit_small_patch16",
        224,
        None,
    )
    config.student.drop_path_rate = 0.0  # the same work in every step
    config.augment = replace(config.augment, global_size=224, local_size=96, n_local=n_local)
    config.data.synthetic_size = 256
    config.loss = replace(
        config.loss, prototypes=prototypes, head_hidden_dim=2048, head_bottleneck_dim=256
    )
    for expert in config.experts:
        expert.encoder, expert.overrides = "vit_small_patch16", {"img_size": 224}
    return config


def make_batch(config: Any, patch_size: int) -> dict[str, Any]:
    import random

    from gpfm.apps.train.data import SeededAugmentation, image_dataset, multicrop_augmentation
    from gpfm.distill import BlockMaskingGenerator, collate_multicrop

    images = SeededAugmentation(image_dataset(config), multicrop_augmentation(config), 0)
    grid = config.augment.global_size // patch_size
    samples = [images[i] for i in range(config.data.batch_size_per_device)]
    return collate_multicrop(samples, BlockMaskingGenerator((grid, grid)), rng=random.Random(0))


class HeadClock:
    """Adds up the time spent in the heads' forward passes, per side, with module hooks."""

    def __init__(self, model: Any, now: Any) -> None:
        self.now = now
        self.seconds: dict[str, float] = defaultdict(float)
        sides = {"teacher": model.teacher, "student": model.student}
        for side, modules in sides.items():
            for name, module in modules.items():
                if name != "backbone":
                    self._watch(module, side)
        for module in model.loss.experts.heads.values():
            self._watch(module, "experts")

    def _watch(self, module: Any, side: str) -> None:
        started: list[float] = []
        module.register_forward_pre_hook(lambda *_: started.append(self.now()))

        def done(*_: Any) -> None:
            self.seconds[side] += self.now() - started.pop()

        module.register_forward_hook(done)

    def take(self, side: str) -> float:
        return self.seconds.pop(side, 0.0)


def trainer_step_parts(model: Any) -> tuple[Any, Any]:
    """The optimiser and the clipping of this version's trainer."""
    import torch

    try:  # the speed-ups' trainer: merged groups, foreach AdamW, clipping lists kept
        from gpfm.distill.optim import adamw
    except ImportError:
        optimizer = torch.optim.AdamW(model.parameter_groups())

        def clip() -> None:
            for parameters in model.clipping_groups():
                torch.nn.utils.clip_grad_norm_(parameters, 3.0)

        return optimizer, clip
    optimizer = adamw(model.parameter_groups())
    groups = model.clipping_groups()

    def clip_kept() -> None:
        for parameters in groups:
            torch.nn.utils.clip_grad_norm_(parameters, 3.0, foreach=True)

    return optimizer, clip_kept


def worker(prototypes: int, steps: int, n_local: int, threads: int, clock: str) -> dict[str, Any]:
    import torch

    from gpfm.apps.train.trainer import build_model
    from gpfm.distill import apply_schedules

    torch.set_num_threads(threads)
    config = small_config(prototypes, n_local)
    torch.manual_seed(0)
    model = build_model(config).train()
    batch = make_batch(config, model.patch_size)
    optimizer, clip = trainer_step_parts(model)
    now = time.thread_time if clock == "cpu" else time.perf_counter
    heads = HeadClock(model, now)
    totals: dict[str, float] = defaultdict(float)
    first_terms: dict[str, float] = {}
    for step in range(steps + 1):
        parts: dict[str, float] = {}
        t = now
        start = t()
        targets = model.teacher_targets(batch, 0.04)
        parts["teacher"] = t() - start
        start = t()
        experts = model.expert_outputs(batch["global_crops"])
        parts["experts"] = t() - start
        start = t()
        student = model.student_outputs(batch)
        parts["student forward"] = t() - start
        start = t()
        terms = model.loss_terms(batch, targets, experts, student)
        parts["losses"] = t() - start
        start = t()
        terms["total"].backward()
        parts["backward"] = t() - start
        start = t()
        apply_schedules(optimizer, 1e-4, 0.04, 1e-4)
        clip()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        parts["optimizer"] = t() - start
        start = t()
        model.update_teacher(0.996)
        parts["EMA"] = t() - start
        parts["teacher"] -= heads.seconds["teacher"]
        parts["student forward"] -= heads.seconds["student"]
        parts["losses"] -= heads.seconds["experts"]
        parts["heads"] = heads.take("teacher") + heads.take("student") + heads.take("experts")
        if step == 0:  # warm-up; its losses are compared across versions
            first_terms = {k: v.item() for k, v in terms.items()}
            continue
        for stage, seconds in parts.items():
            totals[stage] += seconds / steps
    return {"stages": dict(totals), "terms": first_terms}


# ------------------------------------------------------------------------------- driver side


def extract_before(revision: str, folder: Path) -> dict[str, str]:
    """The sources of ``revision`` in ``folder``; the environment that imports them first."""
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", revision, *SOURCES],
        capture_output=True,
        check=True,
    ).stdout
    folder.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive, check=True)
    path = os.pathsep.join(str(folder / source) for source in SOURCES)
    return {**os.environ, "PYTHONPATH": path}


def run_worker(env: dict[str, str] | None, prototypes: int, args: argparse.Namespace) -> dict:
    steps, n_local, threads, clock = args.steps, args.n_local, args.threads, args.clock
    command = [sys.executable, __file__, "--worker", str(prototypes), "--steps", str(steps)]
    command += ["--n-local", str(n_local), "--threads", str(threads), "--clock", clock]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def cpu_comparison(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as folder:
        before_env = extract_before(args.before, Path(folder) / "before")
        after_env = (
            None if args.after is None else extract_before(args.after, Path(folder) / "after")
        )
        for prototypes in (1_024, 65_536):
            runs: dict[str, list[dict]] = {"before": [], "after": []}
            for _ in range(args.rounds):
                for name, env in (("before", before_env), ("after", after_env)):
                    runs[name].append(run_worker(env, prototypes, args))
            report_cpu(prototypes, runs, args)


def report_cpu(prototypes: int, runs: dict[str, list[dict]], args: argparse.Namespace) -> None:
    # The best of the rounds, per stage and for the whole step: interference only adds time.
    best = {name: {s: min(r["stages"][s] for r in rs) for s in STAGES} for name, rs in runs.items()}
    whole_best = {name: min(sum(r["stages"].values()) for r in rs) for name, rs in runs.items()}
    print(
        f"\nCPU, ViT-S/16 at 224 px, 2 global + {args.n_local} local crops, batch 8, two "
        f"ViT-S/16 experts, fp32, {prototypes:,} prototypes; {args.rounds} alternating rounds "
        f"x {args.steps} steps; ms per step, best round ({args.clock} time, "
        f"{args.threads} thread(s)):"
    )
    print(f"  {'stage':<16}{'before':>9}{'after':>9}{'after/before':>14}")
    for stage in (*STAGES, "whole step"):
        if stage == "whole step":
            b, a = whole_best["before"], whole_best["after"]
        else:
            b, a = best["before"][stage], best["after"][stage]
        ratio = a / b if b > 0 else float("nan")
        print(f"  {stage:<16}{1000 * b:>9.1f}{1000 * a:>9.1f}{ratio:>13.3f}x")
    whole = [
        sum(rb["stages"].values()) / sum(ra["stages"].values())
        for rb, ra in zip(runs["before"], runs["after"], strict=True)
    ]
    print(
        "  speed-up of the whole step per round (before / after): "
        + ", ".join(f"{w:.3f}" for w in whole)
    )
    before, after = runs["before"][0]["terms"], runs["after"][0]["terms"]
    worst = max(abs(after[k] - before[k]) / max(abs(before[k]), 1e-12) for k in before)
    same = set(before) == set(after)
    print(f"  first-step loss terms: same names {same}, worst relative difference {worst:.1e}")


def cuda_throughput(args: argparse.Namespace) -> None:
    import torch

    if not torch.cuda.is_available():
        print("\n(no CUDA device: the ViT-L/14 images/s and MFU were not measured)")
        return
    from torch.utils.flop_counter import FlopCounterMode

    from gpfm.apps.train.config import load_config
    from gpfm.apps.train.trainer import build_model
    from gpfm.distill.optim import adamw

    config = load_config("gpfm_vitl14", ["data.source=synthetic", "data.batch_size_per_device=32"])
    for expert, encoder in zip(
        config.experts, ("vit_large_patch16", "vit_base_patch16", "vit_base_patch16"), strict=True
    ):
        expert.encoder, expert.random_init, expert.overrides = encoder, True, {}
        expert.preprocessing, expert.target = "shared", "gpfm"
    model = build_model(config).cuda().train()
    optimizer = adamw(model.parameter_groups())
    batch = make_batch(config, model.patch_size)
    batch = {k: v.cuda() if torch.is_tensor(v) else v for k, v in batch.items()}

    def step() -> None:
        with torch.autocast("cuda", dtype=torch.bfloat16):
            terms = model(batch, teacher_temp=0.04)
        terms["total"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.update_teacher(0.996)

    step()
    with FlopCounterMode(display=False) as counter:
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    achieved = counter.get_total_flops() / seconds
    print(
        f"\nCUDA ({torch.cuda.get_device_name()}), ViT-L/14 student, three ViT experts, batch 32, "
        f"bf16: {32 / seconds:.1f} images/s, {achieved / 1e12:.1f} TFLOP/s = "
        f"{achieved / (args.peak_tflops * 1e12):.1%} of {args.peak_tflops:.0f} TFLOP/s bf16 peak"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--steps", type=int, default=1, help="measured steps per round")
    parser.add_argument("--n-local", type=int, default=4, help="local crops (GPFM: 8)")
    parser.add_argument("--before", default=BEFORE, help="the git revision measured as before")
    parser.add_argument(
        "--after", default=None, help="a git revision measured as after (default: as installed)"
    )
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="GPU dense bf16 peak")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument(
        "--clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="cpu: the compute thread's CPU time (steady on a shared machine; use --threads 1)",
    )
    parser.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        print(json.dumps(worker(args.worker, args.steps, args.n_local, args.threads, args.clock)))
        return
    print("Each round runs before, then after, in fresh processes; the machine may be shared.")
    cpu_comparison(args)
    cuda_throughput(args)


if __name__ == "__main__":
    main()
