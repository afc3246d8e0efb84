"""The settings of ``train_mil``: ours by default, the GPFM paper's with ``protocol="gpfm"``."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, Literal

from gpfm.heads.errors import InvalidInputError
from gpfm.heads.protocol import EvalProtocol, check_protocol

Task = Literal["classification", "survival"]

Monitor = Literal["loss", "error", "auc", "c_index", "metric"]

# The GPFM paper's settings (birkhoffkiki/GPFM at 4f8be2b: utils/core_trainer.py,
# utils/comm_utils.py EarlyStopping(patience=20, stop_epoch=50), train_scripts/*.sh, main.py).
_GPFM_SETTINGS: dict[str, Any] = {
    "epochs": 100,
    "weight_decay": 1e-4,
    "optimizer": "adam",
    "patience": 20,
    # EarlyStopping may stop once the 0-based epoch exceeds 50, i.e. after 52 epochs
    "min_epochs": 52,
    "tie_break": "later",
    "survival_eps": 1e-7,
    "mixed_precision": "no",
}


@dataclass
class TrainConfig:
    """Settings of ``train_mil`` (written next to results by the apps; all plain values).

    ``protocol="gpfm"`` replaces every setting left at its default with the GPFM paper's:
    Adam with L2-coupled weight decay 1e-4, lr 2e-4, up to 100 epochs, patience 20, no stop
    before 52 epochs, the best epoch by validation error (classification; a tie goes to the
    later epoch) or validation c-index (survival), NLL with alpha 0 and probabilities clamped at
    1e-7, full precision. Settings you pass keep your value (one equal to our default counts as
    left at the default).

    Attributes:
        task: ``classification`` (targets ``label``) or ``survival`` (``time``, ``event``).
        epochs: maximum epochs.
        lr, weight_decay: optimizer settings (ours: AdamW 2e-4, 1e-5; GPFM: Adam 2e-4, 1e-4).
        optimizer: ``adamw`` (decoupled weight decay) or ``adam`` (L2 added to the gradient).
        batch_size: bags per step; bags are zero-padded and masked (1 is the MIL default).
        patience: epochs without validation improvement before stopping.
        min_epochs: epochs always trained before early stopping may act.
        monitor: what selects the epoch whose weights are kept: ``loss`` (validation loss),
            ``error`` (1 - accuracy, classification), ``auc`` (classification), ``c_index``
            (survival), or ``metric`` (AUC or c-index by task).
        tie_break: an epoch that equals the best so far replaces it (``later``) or not
            (``earlier``).
        balanced_sampling: classification only: draw every class equally often.
        survival_loss: ``nll`` (discrete-time hazards, ``n_bins`` outputs) or ``cox`` (one
            log-risk output; needs batch_size >= 2).
        survival_alpha: weight of the uncensored term of the NLL (0 = the plain likelihood, what
            GPFM runs).
        survival_eps: None: the NLL in log space; a value: computed from probabilities clamped
            at it, as GPFM does (1e-7).
        survival_cuts: time-bin cut points to use instead of quantiles of the training split's
            event times (GPFM cuts at quantiles of the whole cohort's: pass
            ``time_bins(time, event)`` of all patients).
        n_bins: time bins for the NLL, cut at quantiles of the training split's event times.
        max_grad_norm: clip gradients to this norm (None: no clipping).
        mixed_precision: ``auto`` (bf16 on GPUs that have it, else fp16; none on CPU), ``no``,
            ``bf16`` or ``fp16``.
        cpu: train on the CPU even when a GPU is there.
        num_workers: DataLoader worker processes reading bags.
        seed: seeds sampling, dropout and tile subsampling (seed model initialisation with
            ``torch.manual_seed`` before building the model).
        progress: show a tqdm bar over epochs.
        protocol: ``ours`` or ``gpfm`` (see above).
    """

    task: Task = "classification"
    epochs: int = 20
    lr: float = 2e-4
    weight_decay: float = 1e-5
    optimizer: Literal["adamw", "adam"] = "adamw"
    batch_size: int = 1
    patience: int = 5
    min_epochs: int = 0
    monitor: Monitor = "loss"
    tie_break: Literal["earlier", "later"] = "earlier"
    balanced_sampling: bool = True
    survival_loss: Literal["nll", "cox"] = "nll"
    survival_alpha: float = 0.0
    survival_eps: float | None = None
    survival_cuts: list[float] | None = None
    n_bins: int = 4
    max_grad_norm: float | None = None
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = "auto"
    cpu: bool = False
    num_workers: int = 0
    seed: int = 0
    progress: bool = True
    protocol: EvalProtocol = "ours"

    def __post_init__(self) -> None:
        if check_protocol(self.protocol) != "gpfm":
            return
        defaults = {f.name: f.default for f in fields(self)}
        gpfm = dict(_GPFM_SETTINGS)
        gpfm["monitor"] = "error" if self.task == "classification" else "c_index"
        for name, value in gpfm.items():
            if getattr(self, name) == defaults[name]:
                setattr(self, name, value)

    @property
    def lower_is_better(self) -> bool:
        """Whether the monitored validation value improves downwards (loss, error)."""
        return self.monitor in ("loss", "error")

    def validate(self) -> None:
        """Raise ``InvalidInputError`` naming the first inconsistent setting."""
        classification_only = self.monitor in ("error", "auc")
        checks = [
            (self.task in ("classification", "survival"), "task must be classification/survival"),
            (self.epochs >= 1, "epochs must be >= 1"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.patience >= 1, "patience must be >= 1"),
            (self.optimizer in ("adamw", "adam"), "optimizer must be 'adamw' or 'adam'"),
            (
                self.monitor in ("loss", "error", "auc", "c_index", "metric"),
                "monitor must be loss, error, auc, c_index or metric",
            ),
            (
                not (classification_only and self.task != "classification")
                and not (self.monitor == "c_index" and self.task != "survival"),
                f"monitor {self.monitor!r} does not apply to a {self.task} task",
            ),
            (self.tie_break in ("earlier", "later"), "tie_break must be 'earlier' or 'later'"),
            (self.survival_loss in ("nll", "cox"), "survival_loss must be 'nll' or 'cox'"),
            (0.0 <= self.survival_alpha <= 1.0, "survival_alpha must be in [0, 1]"),
            (self.n_bins >= 2, "n_bins must be >= 2"),
            (
                self.mixed_precision in ("auto", "no", "bf16", "fp16"),
                "mixed_precision must be auto, no, bf16 or fp16",
            ),
            (
                not (self.task == "survival" and self.survival_loss == "cox")
                or self.batch_size >= 2,
                "the Cox loss compares patients within a batch: set batch_size >= 2",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise InvalidInputError(f"TrainConfig: {message}")


__all__ = ["Monitor", "Task", "TrainConfig"]
