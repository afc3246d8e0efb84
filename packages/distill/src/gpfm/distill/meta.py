"""``DistillationModel``: student, EMA teacher, heads, frozen experts and the unified loss."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from gpfm.distill.diagnostics import CollapseStatistics, TeacherOutputs, collapse_statistics
from gpfm.distill.distributed import is_sharded
from gpfm.distill.ema import TeacherEMA
from gpfm.distill.errors import DistillConfigError
from gpfm.distill.experts import FrozenExpert
from gpfm.distill.heads import DINOHead
from gpfm.distill.optim import merge_parameter_groups, parameter_groups
from gpfm.distill.unified import LossConfig, UnifiedDistillationLoss


class DistillationModel(nn.Module):
    """GPFM's pretraining model around any ViT with ``forward(x, masks)`` -> cls/patch tokens.

    ``forward(batch, teacher_temp)`` takes a ``collate_multicrop`` batch and returns the named
    loss terms and ``total``. Gradients reach the student (backbone, DINO/iBOT heads) and the
    expert heads only; the teacher is updated by ``update_teacher`` and the experts never.

    Every parameter named ``last_layer`` (the prototypes and the expert heads' output layers)
    takes the last-layer learning rate, 0 during the first epoch (``gpfm_schedules``).

    With ``keep_teacher_outputs`` on, each forward pass keeps the teacher's class tokens,
    logits and targets of the global crops (``last_teacher_outputs``) for
    ``collapse_statistics``; the loss is the same either way.

    Args:
        backbone: the student ViT (copied to make the teacher).
        loss: the objective's configuration (prototypes, heads, weights, experts).
        experts: frozen experts by name; their names and sizes must match ``loss.experts``.
    """

    def __init__(
        self,
        backbone: nn.Module,
        loss: LossConfig | None = None,
        experts: dict[str, FrozenExpert] | None = None,
    ) -> None:
        super().__init__()
        loss = loss or LossConfig()
        dim = int(backbone.embed_dim)  # type: ignore[arg-type]

        def head() -> DINOHead:
            return DINOHead(
                dim,
                loss.prototypes,
                loss.head_hidden_dim,
                loss.head_bottleneck_dim,
                loss.head_layers,
            )

        student = {"backbone": backbone, "dino_head": head()}
        if loss.separate_ibot_head:
            student["ibot_head"] = head()
        self.student = nn.ModuleDict(student)
        self.teacher = copy.deepcopy(self.student).requires_grad_(False).eval()
        self.loss = UnifiedDistillationLoss(dim, loss)
        experts = experts or {}
        expected = {spec.name: spec.dim for spec in loss.experts}
        given = {name: expert.dim for name, expert in experts.items()}
        if expected != given:
            raise DistillConfigError(
                f"experts {given} do not match the loss configuration {expected}"
            )
        # Held outside the module tree: frozen experts are neither trained, nor averaged, nor
        # written into checkpoints (they would double a checkpoint's size); ``_apply`` still
        # moves them with the model.
        self.experts: dict[str, FrozenExpert] = dict(experts)
        self.patch_size = int(backbone.patch_size)  # type: ignore[arg-type]
        self.num_layers = len(backbone.blocks)  # type: ignore[arg-type]
        # FSDP wraps each transformer block, of student and teacher alike, as its own unit
        # when Accelerate's TRANSFORMER_BASED_WRAP is given no class name.
        self._no_split_modules = [type(b).__name__ for b in backbone.blocks[:1]]  # type: ignore[index]
        self.keep_teacher_outputs = False
        self.last_teacher_outputs: TeacherOutputs | None = None
        self._ema: TeacherEMA | None = None  # paired on the first update, after any wrapping

    def _apply(self, fn: Any, recurse: bool = True) -> DistillationModel:
        super()._apply(fn, recurse)
        for expert in self.experts.values():
            expert._apply(fn, recurse)
        return self

    def train(self, mode: bool = True) -> DistillationModel:
        super().train(mode)
        self.teacher.eval()  # no stochastic depth in the teacher
        for expert in self.experts.values():
            expert.eval()
        return self

    def forward(self, batch: dict[str, Any], teacher_temp: float) -> dict[str, Tensor]:
        """The loss terms of one multi-crop batch (see ``collate_multicrop``)."""
        targets = self.teacher_targets(batch, teacher_temp)
        experts = self.expert_outputs(batch["global_crops"])
        student = self.student_outputs(batch)
        return self.loss_terms(batch, targets, experts, student)

    @torch.no_grad()
    def teacher_targets(self, batch: dict[str, Any], teacher_temp: float) -> dict[str, Tensor]:
        """Teacher targets of the global crops' class tokens and of the masked patch tokens."""
        masks = batch["masks"]
        teacher = self.teacher["backbone"](batch["global_crops"])
        cls_logits, patch_logits = self._head_logits(
            self.teacher, teacher["cls"], teacher["patch"][masks]
        )
        # The patch logits are this call's own (a product of their own): targets overwrite them.
        cls, patch = self.loss.teacher_targets(
            cls_logits, patch_logits, teacher_temp, overwrite_patch_logits=True
        )
        if self.keep_teacher_outputs:
            kept = TeacherOutputs(teacher["cls"], cls_logits, cls, teacher_temp)
            self.last_teacher_outputs = kept
        return {"cls": cls, "patch": patch}

    @torch.no_grad()
    def collapse_statistics(self) -> CollapseStatistics:
        """Collapse diagnostics of the last forward pass (``gpfm.distill.diagnostics``).

        Needs ``keep_teacher_outputs = True`` before that pass. Under FSDP every process
        must call it (the sharded prototypes are gathered).
        """
        if self.last_teacher_outputs is None:
            raise DistillConfigError(
                "no teacher outputs kept: set keep_teacher_outputs = True before the forward pass"
            )
        head = self.teacher["dino_head"]
        assert isinstance(head, DINOHead)
        prototypes = head.last_layer.weight
        if is_sharded(prototypes):
            prototypes = prototypes.full_tensor()  # type: ignore[attr-defined]
        return collapse_statistics(self.last_teacher_outputs, prototypes)

    @torch.no_grad()
    def expert_outputs(self, global_crops: Tensor) -> dict[str, dict[str, Tensor | None]]:
        """Each frozen expert's tokens of the unmasked global crops."""
        return {name: expert(global_crops) for name, expert in self.experts.items()}

    def student_outputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Student tokens of all crops (global ones masked) and its prototype logits."""
        # One backbone call per crop size, global crops first (as the grouped call ran them, so
        # stochastic depth draws the same numbers), without copying the crops into a list batch.
        backbone = self.student["backbone"]
        outputs = [backbone(batch["global_crops"], masks=batch["masks"])]
        if int(batch["n_local"]):
            outputs.append(backbone(batch["local_crops"]))
        all_cls = torch.cat([out["cls"] for out in outputs])
        cls_logits, patch_logits = self._head_logits(
            self.student, all_cls, outputs[0]["patch"][batch["masks"]]
        )
        return {"global": outputs[0], "cls_logits": cls_logits, "patch_logits": patch_logits}

    def _head_logits(
        self, side: nn.ModuleDict, cls_tokens: Tensor, patch_tokens: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Prototype logits of class tokens and masked patch tokens: one head call when the
        iBOT head is the DINO head (row by row the same values as two calls, as DINOv2 does)."""
        if "ibot_head" in side:
            return side["dino_head"](cls_tokens), side["ibot_head"](patch_tokens)
        cls_logits, patch_logits = side["dino_head"](
            torch.cat([cls_tokens, patch_tokens]), split=cls_tokens.shape[0]
        )
        return cls_logits, patch_logits

    def loss_terms(
        self,
        batch: dict[str, Any],
        targets: dict[str, Tensor],
        experts: dict[str, dict[str, Tensor | None]],
        student: dict[str, Any],
    ) -> dict[str, Tensor]:
        """The weighted terms and ``total`` from the three sides' outputs."""
        n_global, n_local = int(batch["n_global"]), int(batch["n_local"])
        global_crops = batch["global_crops"]
        grid = (
            global_crops.shape[-2] // self.patch_size,
            global_crops.shape[-1] // self.patch_size,
        )
        student_global = student["global"]
        return self.loss(
            student_cls_logits=list(student["cls_logits"].chunk(n_global + n_local)),
            teacher_cls_targets=list(targets["cls"].chunk(n_global)),
            student_patch_logits=student["patch_logits"],
            teacher_patch_targets=targets["patch"],
            masks=batch["masks"],
            student_global_cls=list(student_global["cls"].chunk(n_global)),
            student_global_patch=student_global["patch"],
            grid=grid,
            expert_outputs=experts,
        )

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """EMA step of the teacher; call after each real optimiser step."""
        if self._ema is None or not self._ema.tracks(self.teacher):
            self._ema = TeacherEMA(self.teacher, self.student)
        self._ema(momentum)

    def trainable_named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The student's and the expert heads' parameters (never the teacher's or experts')."""
        named = [(f"student.{n}", p) for n, p in self.student.named_parameters()]
        named += [(f"loss.{n}", p) for n, p in self.loss.named_parameters()]
        return [(n, p) for n, p in named if p.requires_grad]

    def parameter_groups(
        self, layer_decay: float = 0.9, patch_embed_lr_mult: float = 0.2, merge: bool = True
    ) -> list[dict[str, Any]]:
        """AdamW groups with layer-wise lr decay over the student backbone (see ``optim``).

        Parameters with equal settings share a group (``names`` lists them), so that a
        foreach or fused AdamW updates each group in a few kernels; ``merge=False`` gives one
        group per parameter (``name``), as before.
        """
        groups = parameter_groups(
            self.trainable_named_parameters(),
            self.num_layers,
            layer_decay=layer_decay,
            patch_embed_lr_mult=patch_embed_lr_mult,
            backbone_prefix="student.backbone.",
        )
        return merge_parameter_groups(groups) if merge else groups

    def clipping_groups(self) -> list[list[nn.Parameter]]:
        """The parameter sets whose gradient norms are clipped, each on its own.

        The reference clips each student module separately (backbone, DINO head, iBOT head)
        and leaves the expert heads unclipped (GPFM ``train/train.py:255-262``).
        """
        return [
            [p for p in module.parameters() if p.requires_grad] for module in self.student.values()
        ]
