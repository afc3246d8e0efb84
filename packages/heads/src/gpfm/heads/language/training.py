"""Training a VisionLanguageModel with Accelerate: stages, accumulation, checkpoints, resume.

Devices and mixed precision come from Accelerate (bf16 on a GPU that has it, fp32 on the CPU).
Only what trains is checkpointed (projector, pooler, image markers, LoRA, optimizer, random
state), never the frozen LM, so a checkpoint of a 135 M-parameter LM with LoRA is a few MB.
Each epoch's order comes from ``seed + epoch``; a resumed run skips the batches already seen
and restores the random state, so it continues with the losses an uninterrupted run has.
Every optimizer step is a row of ``train_log.csv``.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from gpfm.heads.errors import InvalidInputError
from gpfm.heads.features import atomic_path
from gpfm.heads.language.data import LanguageDataset, LanguageSample, collate_language
from gpfm.heads.language.model import Stage, VisionLanguageModel
from gpfm.heads.train_config import TrainConfig
from gpfm.heads.training import make_accelerator

logger = logging.getLogger(__name__)

LOG_COLUMNS = ("step", "epoch", "loss", "lr", "samples_per_s", "elapsed_s")


@dataclass
class LanguageTrainConfig:
    """Settings of ``train_language_model``.

    Attributes:
        output_dir: where ``train_log.csv``, ``checkpoint/`` and ``final/`` go.
        stage: ``projector`` (projector, pooler, image markers) or ``lora`` (+ LoRA adapters).
        epochs: passes over the training samples (unless ``max_steps`` ends it first).
        max_steps: optimizer steps to stop at (None: ``epochs`` decides).
        batch_size: samples per forward pass.
        grad_accumulation: forward passes per optimizer step.
        lr: AdamW learning rate (constant after ``warmup_steps`` of linear warm-up).
        weight_decay: AdamW weight decay.
        warmup_steps: optimizer steps of linear warm-up.
        max_grad_norm: gradient clipping (None: none).
        save_every: optimizer steps between checkpoints (and one at the end); 0: at the end only.
        resume: continue from ``output_dir/checkpoint`` when there is one.
        mixed_precision: ``auto`` (bf16/fp16 on a GPU, none on the CPU), ``no``, ``bf16``, ``fp16``.
        cpu: force the CPU.
        seed: seeds the initial state and each epoch's order (``seed + epoch``).
        progress: show a tqdm bar.
        gradient_checkpointing: recompute the LM's activations in the backward pass (less
            memory, about a third more compute; the same gradients).
    """

    output_dir: str | Path
    stage: Stage = "lora"
    epochs: int = 1
    max_steps: int | None = None
    batch_size: int = 4
    grad_accumulation: int = 1
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 0
    max_grad_norm: float | None = 1.0
    save_every: int = 0
    resume: bool = False
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    cpu: bool = False
    seed: int = 0
    progress: bool = True
    gradient_checkpointing: bool = False


@dataclass
class LanguageTrainResult:
    """What ``train_language_model`` returns: the losses of this run's steps, the log."""

    steps: int
    losses: list[float] = field(default_factory=list)
    log_path: Path | None = None
    output_dir: Path | None = None


def _accelerator(config: LanguageTrainConfig) -> Accelerator:
    # The MIL loop's Accelerator: the same device and mixed-precision rules, one state per process.
    return make_accelerator(TrainConfig(mixed_precision=config.mixed_precision, cpu=config.cpu))


def _save_checkpoint(
    folder: Path, model: VisionLanguageModel, optimizer: torch.optim.Optimizer, step: int
) -> None:
    with atomic_path(folder / "trained.safetensors") as temporary:
        save_file(model.trained_state(), str(temporary))
    with atomic_path(folder / "optimizer.pt") as temporary:
        torch.save({"optimizer": optimizer.state_dict(), "rng": torch.get_rng_state()}, temporary)
    with atomic_path(folder / "state.json") as temporary:  # written last: it marks a whole one
        temporary.write_text(json.dumps({"step": step}) + "\n")


def _load_checkpoint(
    folder: Path, model: VisionLanguageModel, optimizer: torch.optim.Optimizer
) -> int:
    step = int(json.loads((folder / "state.json").read_text())["step"])
    model.load_trained_state(load_file(str(folder / "trained.safetensors")))
    saved = torch.load(folder / "optimizer.pt", weights_only=False)
    optimizer.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["rng"])
    return step


def _log_rows(path: Path, keep_until: int) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return [row for row in csv.DictReader(handle) if int(row["step"]) <= keep_until]


def train_language_model(
    model: VisionLanguageModel,
    samples: Sequence[LanguageSample],
    config: LanguageTrainConfig,
) -> LanguageTrainResult:
    """Train ``model`` on ``samples`` (prompt -> target with visual features); loss on targets.

    Writes ``output_dir/train_log.csv`` (one row per optimizer step), ``output_dir/checkpoint``
    (every ``save_every`` steps and at the end) and ``output_dir/final`` (``model.save``).
    """
    if not samples:
        raise InvalidInputError("train_language_model: no training samples")
    if config.batch_size < 1 or config.grad_accumulation < 1:
        raise InvalidInputError("batch_size and grad_accumulation must be at least 1")
    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    checkpoint, log_path = output / "checkpoint", output / "train_log.csv"
    set_seed(config.seed)
    accelerator = _accelerator(config)
    model.set_stage(config.stage)
    if config.gradient_checkpointing:
        model.gradient_checkpointing()
    model.to(accelerator.device)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    start = 0
    if config.resume and (checkpoint / "state.json").exists():
        start = _load_checkpoint(checkpoint, model, optimizer)
        logger.info("resuming from %s at step %d", checkpoint, start)
    prepared, optimizer = accelerator.prepare(model, optimizer)

    dataset = LanguageDataset(samples)
    batches_per_epoch = math.ceil(len(dataset) / config.batch_size)
    # The last step of an epoch may accumulate fewer batches.
    steps_per_epoch = math.ceil(batches_per_epoch / config.grad_accumulation)
    total = config.max_steps if config.max_steps is not None else steps_per_epoch * config.epochs
    rows = _log_rows(log_path, start)
    losses: list[float] = []
    step, window, began = start, [], time.perf_counter()
    bar = tqdm(total=total, initial=start, desc="training", disable=not config.progress)
    prepared.train()
    while step < total:
        epoch, steps_done = divmod(step, steps_per_epoch)
        skip = steps_done * config.grad_accumulation  # batches of this epoch already trained on
        generator = torch.Generator().manual_seed(config.seed + epoch)
        order = torch.randperm(len(dataset), generator=generator).tolist()
        loader = DataLoader(
            dataset,
            batch_size=config.batch_size,
            sampler=order[skip * config.batch_size :],
            collate_fn=collate_language,
        )
        for position, batch in enumerate(loader, start=skip + 1):
            loss = prepared(batch["features"], batch["prompts"], batch["targets"], batch["mask"])
            accelerator.backward(loss / config.grad_accumulation)
            window.append(float(loss.detach()))
            if position % config.grad_accumulation and position != batches_per_epoch:
                continue
            factor = min(1.0, (step + 1) / config.warmup_steps) if config.warmup_steps else 1.0
            for group in optimizer.param_groups:
                group["lr"] = config.lr * factor
            if config.max_grad_norm is not None:
                accelerator.clip_grad_norm_(parameters, config.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            elapsed = time.perf_counter() - began
            losses.append(sum(window) / len(window))
            rows.append(
                {
                    "step": str(step),
                    "epoch": str(epoch),
                    "loss": f"{losses[-1]:.6f}",
                    "lr": f"{config.lr * factor:.3g}",
                    "samples_per_s": f"{len(window) * config.batch_size / max(elapsed, 1e-9):.3f}",
                    "elapsed_s": f"{elapsed:.2f}",
                }
            )
            window, began = [], time.perf_counter()
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
            if config.save_every and step % config.save_every == 0:
                _save_checkpoint(checkpoint, model, optimizer, step)
            if step >= total:
                break
    bar.close()
    _save_checkpoint(checkpoint, model, optimizer, step)
    with atomic_path(log_path) as temporary, temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=LOG_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    model.save(output / "final")
    with atomic_path(output / "train_config.json") as temporary:
        temporary.write_text(json.dumps(asdict(config), default=str, indent=2) + "\n")
    return LanguageTrainResult(steps=step, losses=losses, log_path=log_path, output_dir=output)


def generate_all(
    model: VisionLanguageModel,
    samples: Sequence[LanguageSample],
    batch_size: int = 8,
    progress: bool = True,
    **generate_kwargs: Any,
) -> list[str]:
    """Generations for every sample, in order, batch by batch (see ``model.generate``)."""
    dataset = LanguageDataset(samples)
    loader = DataLoader(dataset, batch_size=batch_size, collate_fn=collate_language)
    model.eval()
    texts: list[str] = []
    for batch in tqdm(loader, desc="generating", disable=not progress):
        texts += model.generate(
            batch["features"], batch["prompts"], batch["mask"], **generate_kwargs
        )
    return texts
