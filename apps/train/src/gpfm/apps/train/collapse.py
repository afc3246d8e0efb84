"""gpfm-train's collapse watch: the diagnostics every ``log_every`` steps, one warning in words."""

from __future__ import annotations

import logging
from dataclasses import astuple, fields

import torch
from accelerate import Accelerator

from gpfm.apps.train.config import TrainConfig
from gpfm.distill import DistillationModel
from gpfm.distill.diagnostics import CollapseDetector, CollapseStatistics

logger = logging.getLogger(__name__)


def collapse_advice(config: TrainConfig) -> str:
    """The settings that usually cause a collapse, with this run's values."""
    s, o = config.student, config.optim
    return (
        "Settings that usually cause it: LayerScale initialised small "
        f"(student.init_values={s.init_values}) in a shallow or small ViT gives every image "
        "nearly the same class token, which the teacher centre then absorbs, and a soft "
        f"teacher (optim.teacher_temp={o.teacher_temp}, optim.warmup_teacher_temp="
        f"{o.warmup_teacher_temp}) cannot sharpen the differences that are left. At small "
        "scale, student.init_values=1.0 with optim.teacher_temp=0.02 and "
        "optim.warmup_teacher_temp=0.02 learns (the small_patches configuration; see the "
        "gpfm-train guide, 'Collapse')."
    )


class CollapseWatch:
    """Computes the diagnostics on logging steps and warns once when the detector fires.

    The statistics are averaged over processes, so every process sees the same ones and
    stops (``stop_on_collapse``) at the same step.
    """

    def __init__(self, config: TrainConfig, accelerator: Accelerator) -> None:
        settings = config.collapse
        start = settings.start_step
        if start is None:
            start = config.optim.warmup_teacher_temp_steps
        self.enabled = settings.check
        self.config = config
        self.accelerator = accelerator
        self.detector = CollapseDetector(
            start_step=start,
            patience=settings.patience_steps,
            uniform_tolerance=settings.uniform_tolerance,
            cosine_threshold=settings.cosine_threshold,
        )
        self.message: str | None = None  # set once, when the collapse is detected

    def observe(self, model: DistillationModel, step: int) -> tuple[dict[str, float], str | None]:
        """The logged diagnostics of this step and, on the step it is detected, the warning."""
        statistics = self._mean_over_processes(model.collapse_statistics())
        model.last_teacher_outputs = None
        event = self.detector.update(step, statistics)
        new = None
        if event is not None:
            new = self.message = f"{event.describe()} {collapse_advice(self.config)}"
            logger.warning(new)
        return statistics.as_dict(), new

    def _mean_over_processes(self, statistics: CollapseStatistics) -> CollapseStatistics:
        if self.accelerator.num_processes == 1:
            return statistics
        values = torch.tensor(astuple(statistics), dtype=torch.float64)
        mean = self.accelerator.reduce(values.to(self.accelerator.device), reduction="mean")
        numbers = [float(v) for v in mean.cpu()]
        kwargs = {f.name: v for f, v in zip(fields(statistics), numbers, strict=True)}
        kwargs["prototypes"] = statistics.prototypes
        return CollapseStatistics(**kwargs)  # type: ignore[arg-type]
