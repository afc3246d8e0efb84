"""The pretraining loop: Accelerate for devices and mixed precision, schedules, EMA teacher,
checkpoints that resume exactly, trackers, NaN guard and the teacher's export."""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm import tqdm

from gpfm.apps.train.config import TrainConfig, to_flat_dict, to_yaml
from gpfm.apps.train.data import (
    EpochSampler,
    MultiCropCollate,
    SeededAugmentation,
    image_dataset,
    multicrop_augmentation,
)
from gpfm.apps.train.experts import build_expert
from gpfm.apps.train.tracking import CSVTracker
from gpfm.backbone import create_vit, export_encoder, load_checkpoint_strict
from gpfm.distill import (
    DistillationModel,
    ExpertSpec,
    LossConfig,
    apply_schedules,
    cosine_schedule,
    linear_warmup_schedule,
)

logger = logging.getLogger(__name__)

EXPORT_DIR = "export"
CHECKPOINTS_DIR = "checkpoints"


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message names the step and term."""


@dataclass
class Schedules:
    lr: Any
    weight_decay: Any
    momentum: Any
    teacher_temp: Any
    last_layer_lr: Any

    @classmethod
    def from_config(cls, config: TrainConfig, global_batch: int) -> Schedules:
        o, steps = config.optim, config.max_steps
        peak = o.base_lr * math.sqrt(global_batch / 1024)
        lr = cosine_schedule(peak, o.min_lr, steps, o.warmup_steps)
        last_layer = lr.copy()
        last_layer[: o.freeze_last_layer_steps] = 0.0
        return cls(
            lr=lr,
            weight_decay=cosine_schedule(o.weight_decay, o.weight_decay_end, steps),
            momentum=cosine_schedule(o.momentum_teacher, o.momentum_teacher_end, steps),
            teacher_temp=linear_warmup_schedule(
                o.warmup_teacher_temp, o.teacher_temp, o.warmup_teacher_temp_steps, steps
            ),
            last_layer_lr=last_layer,
        )


def build_student(config: TrainConfig) -> torch.nn.Module:
    s = config.student
    overrides: dict[str, Any] = {
        "img_size": s.img_size,
        "drop_path_rate": s.drop_path_rate,
        "init_values": s.init_values,
        "num_register_tokens": s.num_register_tokens,
        "ffn_layer": s.ffn_layer,
    }
    if s.depth is not None:
        overrides["depth"] = s.depth
    student = create_vit(s.arch, **overrides)
    if s.weights:
        load_checkpoint_strict(student, s.weights)
    return student


def build_model(config: TrainConfig) -> DistillationModel:
    experts = {
        e.name: build_expert(e, seed=config.seed + index + 1)
        for index, e in enumerate(config.experts)
    }
    specs = tuple(
        ExpertSpec(e.name, experts[e.name].dim, e.cls_weight, e.patch_weight)
        for e in config.experts
    )
    loss = config.loss
    return DistillationModel(
        build_student(config),
        LossConfig(
            dino_weight=loss.dino_weight,
            ibot_weight=loss.ibot_weight,
            koleo_weight=loss.koleo_weight,
            prototypes=loss.prototypes,
            centering=loss.centering,
            experts=specs,
            expert_cls_loss=loss.expert_cls_loss,
        ),
        experts,
        head_hidden_dim=loss.head_hidden_dim,
        head_bottleneck_dim=loss.head_bottleneck_dim,
        separate_ibot_head=loss.separate_ibot_head,
    )


def export_teacher(model: DistillationModel, config: TrainConfig, folder: Path, step: int) -> Path:
    """Write the teacher backbone as an encoder folder (``encoder.json`` + safetensors).

    ``gpfm.backbone.load_encoder(folder)`` loads it back, with GPFM's preprocessing (resize to
    the student's input size, ImageNet mean/std) and the class token as the embedding.
    """
    return export_encoder(
        model.teacher["backbone"],
        folder,
        name=Path(config.output_dir).name,
        architecture=config.student.arch,
        metadata={"step": step, "config": to_flat_dict(config)},
    )


def _latest_checkpoint(folder: Path) -> Path | None:
    candidates = sorted(folder.glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
    complete = [p for p in candidates if (p / "COMPLETE").exists()]
    return complete[-1] if complete else None


def train(config: TrainConfig, stop_after: int | None = None) -> dict[str, Any]:
    """Pretrain as ``config`` says; returns the history of logged values and the export path.

    ``stop_after`` ends the run early after that many steps (as an interruption would), keeping
    its checkpoints; a later call resumes from the last one.
    """
    output = Path(config.output_dir)
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        log_with=["tensorboard", CSVTracker(output / "logs")],
        project_config=ProjectConfiguration(
            project_dir=str(output), logging_dir=str(output / "logs")
        ),
    )
    set_seed(config.seed)
    if accelerator.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
        (output / "config.yaml").write_text(to_yaml(config))
    accelerator.init_trackers("gpfm_train", config=to_flat_dict(config))

    model = build_model(config)
    optimizer = torch.optim.AdamW(
        model.parameter_groups(config.optim.layer_decay, config.optim.patch_embed_lr_mult),
        betas=tuple(config.optim.adam_betas),
    )
    images = image_dataset(config)
    dataset = SeededAugmentation(images, multicrop_augmentation(config), config.seed)
    sampler = EpochSampler(
        len(dataset), config.seed, accelerator.process_index, accelerator.num_processes
    )
    collate = MultiCropCollate(config, model.patch_size)
    batch_size = config.data.batch_size_per_device
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate,
        num_workers=config.data.num_workers,
        drop_last=True,
        # Its own generator: creating an iterator must not draw from the global RNG, which
        # stochastic depth uses (a resumed run would otherwise diverge).
        generator=torch.Generator().manual_seed(config.seed),
    )
    if len(loader) == 0:
        raise ValueError(
            f"{len(dataset)} images give no full batch of {batch_size} per process; "
            "lower data.batch_size_per_device or add data"
        )
    model, optimizer = accelerator.prepare(model, optimizer)
    global_batch = batch_size * accelerator.num_processes * config.gradient_accumulation_steps
    schedules = Schedules.from_config(config, global_batch)

    checkpoints = output / CHECKPOINTS_DIR
    step = 0
    latest = _latest_checkpoint(checkpoints) if config.resume else None
    if latest is not None:
        accelerator.load_state(str(latest))
        step = int(latest.name.split("_")[1])
        logger.info("resumed from %s", latest)

    unwrapped: DistillationModel = accelerator.unwrap_model(model)
    history: list[dict[str, float]] = []
    progress = tqdm(
        total=config.max_steps,
        initial=step,
        desc="pretraining",
        unit="step",
        disable=not accelerator.is_local_main_process,
    )
    steps_per_epoch = len(loader)
    last_stop = config.max_steps if stop_after is None else min(config.max_steps, step + stop_after)
    model.train()
    while step < last_stop:
        epoch, position = divmod(step, steps_per_epoch)
        # Resuming mid-epoch skips the indices already seen, without loading them.
        sampler.set_epoch(epoch, skip=position * batch_size)
        dataset.epoch = epoch
        for batch in loader:
            if step >= last_stop:
                break
            started = time.perf_counter()
            apply_schedules(
                optimizer,
                float(schedules.lr[step]),
                float(schedules.weight_decay[step]),
                float(schedules.last_layer_lr[step]),
            )
            batch = {
                k: v.to(accelerator.device) if torch.is_tensor(v) else v for k, v in batch.items()
            }
            with accelerator.accumulate(model):
                terms = model(batch, teacher_temp=float(schedules.teacher_temp[step]))
                _check_finite(terms, step)
                accelerator.backward(terms["total"])
                if accelerator.sync_gradients:
                    if config.optim.clip_grad:
                        accelerator.clip_grad_norm_(model.parameters(), config.optim.clip_grad)
                    if step < config.optim.freeze_last_layer_steps:
                        unwrapped.cancel_last_layer_gradients()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            if accelerator.sync_gradients:
                unwrapped.update_teacher(float(schedules.momentum[step]))
            step += 1
            seconds = time.perf_counter() - started
            values = {f"loss/{k}": v.item() for k, v in terms.items()}
            values.update(
                {
                    "lr": float(schedules.lr[step - 1]),
                    "weight_decay": float(schedules.weight_decay[step - 1]),
                    "momentum": float(schedules.momentum[step - 1]),
                    "teacher_temp": float(schedules.teacher_temp[step - 1]),
                    "images_per_s": global_batch / max(seconds, 1e-9),
                }
            )
            history.append({"step": step, **values})
            if step % config.log_every == 0 or step == last_stop:
                accelerator.log(values, step=step)
            progress.update(1)
            progress.set_postfix(loss=f"{values['loss/total']:.3f}")
            if step % config.checkpoint_every == 0 or step == config.max_steps:
                _save_checkpoint(accelerator, checkpoints, step, config.keep_checkpoints)
    progress.close()
    export = None
    if step >= config.max_steps and accelerator.is_main_process:
        export = export_teacher(unwrapped, config, output / EXPORT_DIR, step)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {"history": history, "export": export, "step": step}


def _check_finite(terms: dict[str, torch.Tensor], step: int) -> None:
    for name, value in terms.items():
        if not torch.isfinite(value).all():
            raise TrainingError(
                f"step {step + 1}: loss term {name!r} is {value.item()}; training stopped. "
                "The last checkpoint is intact; lower optim.base_lr or check the data."
            )


def _save_checkpoint(accelerator: Accelerator, folder: Path, step: int, keep: int) -> None:
    target = folder / f"step_{step}"
    accelerator.save_state(str(target))
    if accelerator.is_main_process:
        (target / "COMPLETE").write_text(str(step))  # only a finished save is resumed from
        finished = sorted(folder.glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
        for old in finished[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
