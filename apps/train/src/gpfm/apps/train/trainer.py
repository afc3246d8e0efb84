"""The pretraining loop: Accelerate for devices and mixed precision, schedules, EMA teacher,
checkpoints that resume exactly, trackers, NaN guard, collapse watch and the teacher's export."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, ProjectConfiguration, set_seed
from torch.utils.data import DataLoader
from tqdm import tqdm

from gpfm.apps.train.collapse import CollapseWatch
from gpfm.apps.train.config import ExpertConfig, TrainConfig, to_flat_dict, to_yaml
from gpfm.apps.train.data import (
    EpochSampler,
    MultiCropCollate,
    SeededAugmentation,
    epoch_sampler,
    image_dataset,
    multicrop_augmentation,
)
from gpfm.apps.train.tracking import CSVTracker
from gpfm.backbone import VIT_ARCHITECTURES, create_vit, export_encoder, load_checkpoint_strict
from gpfm.distill import (
    DistillationModel,
    ExpertSpec,
    FrozenExpert,
    PretrainSchedules,
    apply_schedules,
    expert_from_encoder,
    gpfm_schedules,
    random_vit_expert,
)
from gpfm.distill.optim import adamw
from gpfm.distill.performance import checkpoint_blocks, compile_blocks

logger = logging.getLogger(__name__)

EXPORT_DIR = "export"
CHECKPOINTS_DIR = "checkpoints"


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. a non-finite loss); the message names the step and term."""


class CollapseError(TrainingError):
    """``stop_on_collapse`` stopped a run whose self-distillation collapsed; the message says
    what collapsed, since when, and which settings usually cause it."""


def schedules_for(config: TrainConfig, global_batch: int) -> PretrainSchedules:
    """GPFM's schedules (``gpfm.distill.gpfm_schedules``) for this configuration."""
    o = config.optim
    return gpfm_schedules(
        config.max_steps,
        global_batch=global_batch,
        base_lr=o.base_lr,
        min_lr=o.min_lr,
        warmup_steps=o.warmup_steps,
        weight_decay=o.weight_decay,
        weight_decay_end=o.weight_decay_end,
        momentum_teacher=o.momentum_teacher,
        momentum_teacher_end=o.momentum_teacher_end,
        teacher_temp=o.teacher_temp,
        warmup_teacher_temp=o.warmup_teacher_temp,
        warmup_teacher_temp_steps=o.warmup_teacher_temp_steps,
        freeze_last_layer_steps=o.freeze_last_layer_steps,
    )


def build_student(config: TrainConfig, load_weights: bool = True) -> torch.nn.Module:
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
    if s.weights and load_weights:
        load_checkpoint_strict(student, s.weights)
    return student


def build_expert(config: ExpertConfig, seed: int, meta: bool = False) -> FrozenExpert:
    """A frozen expert: a random ``create_vit`` architecture (tests, demos) or a zoo encoder.

    On the meta device (``meta=True``) nothing is downloaded or loaded: shapes only.
    """
    preprocessing: Any = config.preprocessing
    if config.encoder in VIT_ARCHITECTURES and config.random_init:
        return random_vit_expert(config.encoder, seed, preprocessing, **config.overrides)
    from gpfm.backbone import load_encoder

    encoder = load_encoder(
        config.encoder,
        weights=None if meta else config.weights,
        device="meta" if meta else "cpu",
        random_init=config.random_init,
    )
    target: Any = config.target
    return expert_from_encoder(encoder, preprocessing=preprocessing, target=target)


def build_model(config: TrainConfig, meta: bool = False) -> DistillationModel:
    """Student, teacher, heads and experts as ``config`` says (shapes only with ``meta``)."""
    experts = {
        e.name: build_expert(e, seed=config.seed + index + 1, meta=meta)
        for index, e in enumerate(config.experts)
    }
    specs = tuple(
        ExpertSpec(e.name, experts[e.name].dim, e.cls_weight, e.patch_weight)
        for e in config.experts
    )
    loss = replace(config.loss, experts=specs)
    return DistillationModel(build_student(config, load_weights=not meta), loss, experts)


def export_teacher(model: DistillationModel, config: TrainConfig, folder: Path, step: int) -> Path:
    """Write the teacher backbone as an encoder folder (``encoder.json`` + safetensors).

    ``gpfm.backbone.load_encoder(folder)`` loads it back, with GPFM's preprocessing (resize to
    the student's input size, ImageNet mean/std) and the class token as the embedding.
    """
    return export_encoder_folder(model.teacher["backbone"], config, folder, step)


def full_teacher_backbone(
    accelerator: Accelerator, model: torch.nn.Module, config: TrainConfig
) -> torch.nn.Module:
    """The teacher backbone with whole (unsharded) weights.

    Under FSDP every process must call this (the shards are gathered); the whole weights are
    on the main process, in a fresh CPU copy of the architecture.
    """
    if accelerator.distributed_type != DistributedType.FSDP:
        unwrapped: DistillationModel = accelerator.unwrap_model(model)
        return unwrapped.teacher["backbone"]
    state = accelerator.get_state_dict(model)  # whole tensors on the main process only
    backbone = build_student(config, load_weights=False)
    if accelerator.is_main_process:
        prefix = "teacher.backbone."
        backbone.load_state_dict(
            {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        )
    return backbone


def export_encoder_folder(
    backbone: torch.nn.Module, config: TrainConfig, folder: Path, step: int
) -> Path:
    """``export_teacher`` for a teacher backbone already in hand (e.g. gathered from shards)."""
    return export_encoder(
        backbone,
        folder,
        name=Path(config.output_dir).name,
        architecture=config.student.arch,
        metadata={"step": step, "config": to_flat_dict(config)},
    )


def export_initial_teacher(config: TrainConfig, folder: Path) -> Path:
    """Export the teacher a run of ``config`` starts from, as ``export_teacher`` would.

    Same seed, so the same initial weights as ``train``'s: the baseline to compare a probe of
    the pretrained encoder with (a pretraining that learned nothing probes the same).
    """
    set_seed(config.seed)  # as train() does right before building the model
    return export_teacher(build_model(config), config, folder, step=0)


def _latest_checkpoint(folder: Path) -> Path | None:
    candidates = sorted(folder.glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
    complete = [p for p in candidates if (p / "COMPLETE").exists()]
    return complete[-1] if complete else None


def _micro_batches(
    loader: DataLoader[Any], sampler: EpochSampler, dataset: SeededAugmentation, start: int
) -> Iterator[dict[str, Any]]:
    """Batches from micro-batch ``start`` on, epoch after epoch (a resumed run skips the
    indices it has seen without loading them)."""
    epoch, position = divmod(start, len(loader))
    while True:
        sampler.set_epoch(epoch, skip=position * int(loader.batch_size or 1))
        dataset.epoch = epoch
        yield from loader
        epoch, position = epoch + 1, 0


def train(config: TrainConfig, stop_after: int | None = None) -> dict[str, Any]:
    """Pretrain as ``config`` says; returns the history of logged values and the export path.

    One step is one optimizer update of ``gradient_accumulation_steps`` micro-batches: the
    schedules, the last-layer freeze, logging and checkpoints count steps, and checkpoints are
    taken between steps only, so a resumed run continues with the same losses.
    ``stop_after`` ends the run early after that many steps (as an interruption would), keeping
    its checkpoints; a later call resumes from the last one.
    """
    output = Path(config.output_dir)
    accumulation = config.gradient_accumulation_steps
    if accumulation < 1:
        raise ValueError(f"gradient_accumulation_steps must be at least 1, got {accumulation}")
    accelerator = Accelerator(
        mixed_precision=config.mixed_precision,
        log_with=["tensorboard", CSVTracker(output / "logs")],
        project_config=ProjectConfiguration(
            project_dir=str(output), logging_dir=str(output / "logs")
        ),
    )
    _check_processes_joined(accelerator)
    set_seed(config.seed)
    logger.info(
        "process %d of %d on %s (%s)",
        accelerator.process_index,
        accelerator.num_processes,
        accelerator.device,
        accelerator.distributed_type.value,
    )
    if accelerator.is_main_process:
        output.mkdir(parents=True, exist_ok=True)
        (output / "config.yaml").write_text(to_yaml(config))
    accelerator.init_trackers("gpfm_train", config=to_flat_dict(config))

    model = build_model(config)
    if config.performance.activation_checkpointing:
        checkpoint_blocks(model.student["backbone"])
    optimizer = adamw(
        model.parameter_groups(config.optim.layer_decay, config.optim.patch_embed_lr_mult),
        betas=(float(config.optim.adam_betas[0]), float(config.optim.adam_betas[1])),
    )
    images = image_dataset(config)
    dataset = SeededAugmentation(images, multicrop_augmentation(config), config.seed)
    sampler = epoch_sampler(images, config, accelerator.process_index, accelerator.num_processes)
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
    global_batch = batch_size * accelerator.num_processes * accumulation
    schedules = schedules_for(config, global_batch)

    checkpoints = output / CHECKPOINTS_DIR
    step = 0
    latest = _latest_checkpoint(checkpoints) if config.resume else None
    if latest is not None:
        accelerator.load_state(str(latest))
        step = int(latest.name.split("_")[1])
        logger.info("resumed from %s", latest)
    exported = output / EXPORT_DIR
    if step >= config.max_steps and (exported / "encoder.json").exists():
        accelerator.end_training()
        return {"history": [], "export": exported, "step": step, "already_complete": True}
    augment = config.augment
    accelerator.print(
        f"{len(dataset)} images; crops 2 x {augment.global_size} px + "
        f"{augment.n_local} x {augment.local_size} px; the exported teacher takes "
        f"{config.student.img_size} px; {config.max_steps - step} steps to go"
    )

    unwrapped: DistillationModel = accelerator.unwrap_model(model)
    if config.performance.compile:
        for side in (unwrapped.student, unwrapped.teacher):
            compile_blocks(side["backbone"], backend=config.performance.compile_backend)
    clipped = unwrapped.clipping_groups()  # the student's parameters, listed once
    history: list[dict[str, float]] = []
    progress = tqdm(
        total=config.max_steps,
        initial=step,
        desc="pretraining",
        unit="step",
        disable=not accelerator.is_local_main_process,
    )
    last_stop = config.max_steps if stop_after is None else min(config.max_steps, step + stop_after)
    batches = _micro_batches(loader, sampler, dataset, start=step * accumulation)
    watch = CollapseWatch(config, accelerator)
    model.train()
    while step < last_stop:
        logging_step = (step + 1) % config.log_every == 0 or step + 1 == last_stop
        unwrapped.keep_teacher_outputs = watch.enabled and logging_step
        started = time.perf_counter()
        scheduled = schedules.at(step)
        apply_schedules(
            optimizer, scheduled["lr"], scheduled["weight_decay"], scheduled["last_layer_lr"]
        )
        sums: dict[str, float] = {}
        for micro in range(accumulation):
            batch = {
                k: v.to(accelerator.device) if torch.is_tensor(v) else v
                for k, v in next(batches).items()
            }
            # Gradients are all-reduced on the last micro-batch only.
            last = micro == accumulation - 1
            with contextlib.nullcontext() if last else accelerator.no_sync(model):
                terms = model(batch, teacher_temp=scheduled["teacher_temp"])
                _check_finite(terms, step)
                accelerator.backward(terms["total"] / accumulation)
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + value.item() / accumulation
        if config.optim.clip_grad:
            accelerator.unscale_gradients()  # once, before clipping (fp16 only)
            for parameters in clipped:
                torch.nn.utils.clip_grad_norm_(parameters, config.optim.clip_grad, foreach=True)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        unwrapped.update_teacher(scheduled["momentum"])
        step += 1
        seconds = time.perf_counter() - started
        values = {f"loss/{k}": v for k, v in sums.items()}
        values.update({k: v for k, v in scheduled.items() if k != "last_layer_lr"})
        values["images_per_s"] = global_batch / max(seconds, 1e-9)
        message = None
        if unwrapped.keep_teacher_outputs:
            diagnostics, message = watch.observe(unwrapped, step)
            values.update(diagnostics)
        history.append({"step": step, **values})
        if logging_step:
            accelerator.log(values, step=step)
        progress.update(1)
        progress.set_postfix(loss=f"{values['loss/total']:.3f}")
        if message is not None and config.stop_on_collapse:
            progress.close()
            accelerator.end_training()
            latest = _latest_checkpoint(checkpoints)
            kept = f"the last checkpoint, {latest}, is kept" if latest else "no checkpoint yet"
            raise CollapseError(f"{message} Training stopped (stop_on_collapse); {kept}.")
        if step % config.checkpoint_every == 0 or step == config.max_steps:
            _save_checkpoint(accelerator, checkpoints, step, config.keep_checkpoints)
    progress.close()
    unwrapped.keep_teacher_outputs, unwrapped.last_teacher_outputs = False, None
    export = None
    if step >= config.max_steps:
        teacher = full_teacher_backbone(accelerator, model, config)  # every process gathers
        if accelerator.is_main_process:
            export = export_encoder_folder(teacher, config, output / EXPORT_DIR, step)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return {"history": history, "export": export, "step": step, "collapse": watch.message}


def _check_processes_joined(accelerator: Accelerator) -> None:
    """Refuse a launch whose processes would each train alone (and overwrite one another)."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > accelerator.num_processes:
        raise TrainingError(
            f"launched as {launched} processes, but Accelerate joined "
            f"{accelerator.num_processes}: each would train alone. Without GPUs, set "
            "ACCELERATE_USE_CPU=true (CPU processes join over gloo); Accelerate's FSDP needs "
            "GPUs (see the gpfm-train guide, 'Scale')."
        )


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
    accelerator.wait_for_everyone()  # every process has written its state
    if accelerator.is_main_process:
        (target / "COMPLETE").write_text(str(step))  # only a finished save is resumed from
        finished = sorted(folder.glob("step_*"), key=lambda p: int(p.name.split("_")[1]))
        for old in finished[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
