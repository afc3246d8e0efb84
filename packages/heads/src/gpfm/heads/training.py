"""Training loop for MIL heads on feature bags: slide classification and survival.

``train_mil`` trains on the training split, scores the validation split after every epoch,
keeps the weights of the best validation epoch (early stopping with patience), and only then
predicts the test split — the test split is not read before that final evaluation. Devices
and mixed precision come from Accelerate: CPU, one GPU (bf16, or fp16 where bf16 is missing,
autocast by default), or several with ``accelerate launch``.
"""

from __future__ import annotations

import inspect
import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import Tensor, nn
from torch.utils.data import DataLoader, RandomSampler
from tqdm.auto import tqdm

from gpfm.heads.concordance import c_index
from gpfm.heads.data import FeatureBagDataset, balanced_sampler, collate_bags
from gpfm.heads.errors import HeadsError, InvalidInputError
from gpfm.heads.metrics import classification_metrics, macro_auc
from gpfm.heads.mil import MILOutput
from gpfm.heads.survival import (
    cox_loss,
    discretize_time,
    nll_survival_loss,
    risk_score,
    time_bins,
)
from gpfm.heads.train_config import Task, TrainConfig

logger = logging.getLogger(__name__)


def resolve_mixed_precision(
    requested: str, *, cuda: bool, bf16_supported: bool
) -> Literal["no", "bf16", "fp16"]:
    """The mixed precision to use: ``auto`` is bf16 (or fp16) on a GPU and none on the CPU."""
    if requested == "auto":
        if not cuda:
            return "no"
        return "bf16" if bf16_supported else "fp16"
    if requested not in ("no", "bf16", "fp16"):
        raise InvalidInputError(f"mixed_precision must be auto, no, bf16 or fp16, not {requested}")
    return requested  # type: ignore[return-value]


def make_accelerator(config: TrainConfig) -> Accelerator:
    """An Accelerator for ``config`` (device and mixed precision).

    Accelerate keeps one state per process: every ``train_mil`` call of a process must ask for
    the same mixed precision, or pass its own ``accelerator=``.
    """
    cuda = torch.cuda.is_available() and not config.cpu
    precision = resolve_mixed_precision(
        config.mixed_precision, cuda=cuda, bf16_supported=cuda and torch.cuda.is_bf16_supported()
    )
    try:
        return Accelerator(mixed_precision=precision, cpu=config.cpu)
    except ValueError as error:
        raise HeadsError(
            f"Accelerate is already set up in this process with other settings than "
            f"mixed_precision={precision!r}, cpu={config.cpu}: use one setting per process, or "
            f"pass accelerator= ({error})"
        ) from error


@dataclass
class Predictions:
    """Model outputs on a dataset, in dataset order.

    Attributes:
        task: ``classification`` or ``survival``.
        index: (N,) positions in the dataset.
        names: (N,) bag names.
        logits: (N, C) float32 logits (class logits, hazard logits per bin, or (N, 1) Cox
            log-risk).
        targets: the dataset's target columns, each (N,).
    """

    task: str
    index: np.ndarray
    names: list[str]
    logits: np.ndarray
    targets: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def probabilities(self) -> np.ndarray:
        """(N, C) class probabilities (softmax of the logits)."""
        shifted = self.logits - self.logits.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        return exp / exp.sum(axis=1, keepdims=True)

    @property
    def risk(self) -> np.ndarray:
        """(N,) survival risk scores (higher = shorter survival)."""
        return risk_score(torch.from_numpy(self.logits)).numpy()

    def metrics(self) -> dict[str, float]:
        """Classification: accuracy, balanced accuracy, macro-F1, AUC. Survival: c-index."""
        if self.task == "survival":
            return {"c_index": c_index(self.targets["time"], self.targets["event"], self.risk)}
        return classification_metrics(self.targets["label"], self.probabilities)


@dataclass
class TrainResult:
    """What ``train_mil`` returns.

    Attributes:
        model: the trained model (unwrapped, best-epoch weights, eval mode).
        history: one dict per epoch: ``epoch``, ``train_loss``, ``val_loss``, ``val_metric``
            (AUC or c-index), ``seconds``.
        best_epoch: the epoch (1-based) whose weights were kept.
        stopped_early: training ended before ``config.epochs``.
        time_bins: (n_bins - 1,) survival cut points from the training split, or None.
        test: predictions on the test split, or None without one.
        test_metrics: metrics of ``test``, or None.
        config: the settings used.
    """

    model: nn.Module
    history: list[dict[str, float]]
    best_epoch: int
    stopped_early: bool
    time_bins: np.ndarray | None
    test: Predictions | None
    test_metrics: dict[str, float] | None
    config: TrainConfig

    def summary(self) -> dict[str, Any]:
        """JSON-ready record: config, history (undefined values as None), best epoch, test
        metrics, time bins."""
        return {
            "config": asdict(self.config),
            "history": [
                {key: value if math.isfinite(value) else None for key, value in row.items()}
                for row in self.history
            ],
            "best_epoch": self.best_epoch,
            "stopped_early": self.stopped_early,
            "time_bins": None if self.time_bins is None else self.time_bins.tolist(),
            "test_metrics": self.test_metrics,
        }


def _as_output(result: MILOutput | Tensor) -> MILOutput:
    if isinstance(result, MILOutput):
        return result
    return MILOutput(logits=result, attention=result.new_zeros(result.shape[0], 0))


def _takes_target(model: nn.Module) -> bool:
    return "target" in inspect.signature(model.forward).parameters


class _Objective:
    """The task's loss on a batch of outputs and targets (float32)."""

    def __init__(self, config: TrainConfig, cuts: np.ndarray | None) -> None:
        self.config, self.cuts = config, cuts

    def __call__(self, logits: Tensor, batch: dict[str, Tensor]) -> Tensor:
        logits = logits.float()
        if self.config.task == "classification":
            return nn.functional.cross_entropy(logits, batch["label"].long())
        if self.config.survival_loss == "cox":
            return cox_loss(logits.reshape(-1), batch["time"], batch["event"])
        bins = discretize_time(batch["time"].double(), torch.as_tensor(self.cuts))
        return nll_survival_loss(
            logits, bins, batch["event"], self.config.survival_alpha, eps=self.config.survival_eps
        )

    def total(self, output: MILOutput, batch: dict[str, Tensor]) -> Tensor:
        loss = self(output.logits, batch)
        if output.instance_logits is not None:
            loss = 0.5 * (loss + self(output.instance_logits, batch))
        if output.aux_loss is not None:
            loss = loss + output.aux_loss.float()
        return loss

    def metric(self, logits: Tensor, batch: dict[str, Tensor]) -> float:
        """Validation AUC (classification) or c-index (survival); NaN when undefined."""
        try:
            if self.config.task == "classification":
                probabilities = torch.softmax(logits.float(), dim=1).numpy()
                return macro_auc(batch["label"].numpy(), probabilities)
            return c_index(
                batch["time"].numpy(), batch["event"].numpy(), risk_score(logits).numpy()
            )
        except InvalidInputError:
            return math.nan

    @staticmethod
    def error(logits: Tensor, batch: dict[str, Tensor]) -> float:
        """Validation error: the fraction of bags whose largest logit is not their label."""
        return float((logits.argmax(dim=1) != batch["label"]).double().mean())

    def monitored(self, row: dict[str, float]) -> float:
        """The history row's monitored value, signed so that lower is better."""
        key = {"loss": "val_loss", "error": "val_error"}.get(self.config.monitor, "val_metric")
        return row[key] if self.config.lower_is_better else -row[key]


def _required_targets(config: TrainConfig) -> tuple[str, ...]:
    return ("label",) if config.task == "classification" else ("time", "event")


def _check_dataset(
    dataset: FeatureBagDataset, role: str, config: TrainConfig, model: nn.Module
) -> None:
    missing = [t for t in _required_targets(config) if t not in dataset.target_names]
    if missing:
        raise InvalidInputError(
            f"the {role} split has no target {missing} for a {config.task} task (it has "
            f"{dataset.target_names}); pass targets={{...}} to FeatureBagDataset"
        )
    in_dim = getattr(model, "in_dim", None)
    if in_dim is not None and dataset.embed_dim != in_dim:
        raise InvalidInputError(
            f"the {role} split's features have D={dataset.embed_dim} ({dataset.names[0]}) but the "
            f"model expects in_dim={in_dim}; build the model for this encoder"
        )


def _loader(
    dataset: FeatureBagDataset, config: TrainConfig, *, train: bool, generator: torch.Generator
) -> DataLoader[dict[str, Tensor]]:
    sampler: Any = None
    if train:
        if config.task == "classification" and config.balanced_sampling:
            sampler = balanced_sampler(dataset.targets("label"), generator=generator)
        else:
            sampler = RandomSampler(dataset, generator=generator)
    return DataLoader(
        dataset,
        batch_size=config.batch_size,
        sampler=sampler,
        shuffle=False,
        collate_fn=collate_bags,
        num_workers=config.num_workers,
        pin_memory=torch.cuda.is_available() and not config.cpu,
        generator=generator,
    )


@torch.no_grad()
def _predict_batches(
    model: nn.Module, loader: DataLoader[dict[str, Tensor]], accelerator: Accelerator | None
) -> tuple[Tensor, dict[str, Tensor]]:
    """Logits (N, C) float32 and targets of every bag, ordered by dataset index.

    With an accelerator, batches arrive on its device and results are gathered from every
    process; without one, batches are moved to the model's device.
    """
    model.eval()
    device = next(model.parameters()).device
    logits, targets = [], []
    for batch in loader:
        if accelerator is None:
            batch = {key: value.to(device) for key, value in batch.items()}
        output = _as_output(model(batch["features"], batch["mask"]))
        # Per-bag columns only; bools travel as uint8 (collective ops lack bool on some backends).
        outputs = {"logits": output.logits.float()}
        outputs.update(
            {
                k: v.to(torch.uint8) if v.dtype == torch.bool else v
                for k, v in batch.items()
                if v.ndim == 1
            }
        )
        gathered = accelerator.gather_for_metrics(outputs) if accelerator is not None else outputs
        logits.append(gathered.pop("logits").cpu())
        targets.append({k: v.cpu() for k, v in gathered.items()})
    all_logits = torch.cat(logits)
    columns = {key: torch.cat([t[key] for t in targets]) for key in targets[0]}
    order = torch.argsort(columns["index"])
    return all_logits[order], {key: value[order] for key, value in columns.items()}


def predict(
    model: nn.Module,
    dataset: FeatureBagDataset,
    *,
    task: Task = "classification",
    batch_size: int = 1,
    accelerator: Accelerator | None = None,
) -> Predictions:
    """Run a MIL model over every bag of ``dataset`` (eval mode, no gradients).

    Args:
        model: a MIL model (``forward(features (B, N, D), mask (B, N))``).
        dataset: the bags; its target columns are copied into the predictions.
        task: how to read the logits (probabilities, or risk).
        batch_size: bags per forward pass (padded).
        accelerator: to predict on several processes; default: on the model's current device.
    """
    loader: DataLoader[dict[str, Tensor]] = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_bags
    )
    if accelerator is not None:
        loader = accelerator.prepare(loader)
    return _as_predictions(task, dataset, *_predict_batches(model, loader, accelerator))


def _as_predictions(
    task: str, dataset: FeatureBagDataset, logits: Tensor, columns: dict[str, Tensor]
) -> Predictions:
    columns = dict(columns)
    index = columns.pop("index").numpy()
    return Predictions(
        task=task,
        index=index,
        names=[dataset.names[i] for i in index],
        logits=logits.numpy(),
        targets={key: value.numpy() for key, value in columns.items()},
    )


def _train_epoch(
    model: nn.Module,
    loader: DataLoader[dict[str, Tensor]],
    optimizer: torch.optim.Optimizer,
    objective: _Objective,
    accelerator: Accelerator,
    config: TrainConfig,
    pass_target: bool,
) -> float:
    """One pass over the training loader; returns the mean training loss."""
    model.train()
    losses = []
    for batch in loader:
        kwargs = {"target": batch["label"]} if pass_target else {}
        output = _as_output(model(batch["features"], batch["mask"], **kwargs))
        loss = objective.total(output, batch)
        optimizer.zero_grad(set_to_none=True)
        accelerator.backward(loss)
        if config.max_grad_norm is not None:
            accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
        optimizer.step()
        losses.append(float(loss.detach()))
    return float(np.mean(losses))


def train_mil(
    model: nn.Module,
    train: FeatureBagDataset,
    val: FeatureBagDataset,
    test: FeatureBagDataset | None = None,
    config: TrainConfig | None = None,
    *,
    accelerator: Accelerator | None = None,
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> TrainResult:
    """Train a MIL model with early stopping on the validation split; predict the test split.

    The model must output C logits per bag: C classes for classification, ``n_bins`` hazard
    logits for the survival NLL, or 1 log-risk for the Cox loss. The test split is untouched
    until training has ended and the best validation epoch's weights are restored.

    Args:
        model: e.g. ``ABMIL(in_dim, n_classes)``; ``forward(features, mask[, target])``
            returning ``MILOutput`` or a logits tensor.
        train: feature bags with targets (``label``, or ``time`` and ``event``).
        val: validation bags, the same way; every selection is made on them.
        test: bags to predict once at the end (optional).
        config: training settings (``TrainConfig()`` by default).
        accelerator: an Accelerate ``Accelerator`` to use instead of one built from
            ``config.mixed_precision`` and ``config.cpu``.
        on_epoch: called with each epoch's history row as soon as it is complete.

    Returns:
        ``TrainResult`` with the per-epoch history, the best epoch, the model with its weights,
        and the test predictions and metrics.
    """
    config = config or TrainConfig()
    config.validate()
    _check_dataset(train, "training", config, model)
    _check_dataset(val, "validation", config, model)
    if test is not None:  # its target names and feature width only: no bag or target is read
        _check_dataset(test, "test", config, model)
    set_seed(config.seed)
    accelerator = accelerator or make_accelerator(config)
    generator = torch.Generator().manual_seed(config.seed)

    cuts = None
    if config.task == "survival" and config.survival_loss == "nll":
        if config.survival_cuts is not None:
            cuts = np.asarray(config.survival_cuts, dtype=np.float64)
        else:
            cuts = time_bins(train.targets("time"), train.targets("event"), config.n_bins)
        logger.info("survival time bins cut at %s", np.round(cuts, 3).tolist())
    objective = _Objective(config, cuts)
    pass_target = config.task == "classification" and _takes_target(model)

    optimizer_class = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    optimizer = optimizer_class(
        [p for p in model.parameters() if p.requires_grad],
        lr=config.lr,
        weight_decay=config.weight_decay,
    )
    prepared_model, optimizer, train_loader, val_loader = accelerator.prepare(
        model,
        optimizer,
        _loader(train, config, train=True, generator=generator),
        _loader(val, config, train=False, generator=generator),
    )
    best_value, best_epoch, best_state = math.inf, 0, None
    history: list[dict[str, float]] = []
    bar = tqdm(
        range(1, config.epochs + 1),
        desc=f"train {type(model).__name__}",
        unit="epoch",
        disable=not config.progress or not accelerator.is_local_main_process,
    )
    for epoch in bar:
        start = time.perf_counter()
        train_loss = _train_epoch(
            prepared_model, train_loader, optimizer, objective, accelerator, config, pass_target
        )
        if not math.isfinite(train_loss):
            raise HeadsError(
                f"training loss became {train_loss} at epoch {epoch}; lower lr or set max_grad_norm"
            )
        val_logits, val_columns = _predict_batches(prepared_model, val_loader, accelerator)
        val_loss = float(objective(val_logits, val_columns))
        val_metric = objective.metric(val_logits, val_columns)
        row = {
            "epoch": float(epoch),
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_metric": val_metric,
        }
        if config.task == "classification":
            row["val_error"] = objective.error(val_logits, val_columns)
        row["seconds"] = time.perf_counter() - start
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        monitored = objective.monitored(row)
        improved = (
            monitored <= best_value if config.tie_break == "later" else monitored < best_value
        )
        if math.isfinite(monitored) and improved:
            best_value, best_epoch = monitored, epoch
            unwrapped = accelerator.unwrap_model(prepared_model)
            best_state = {k: v.detach().clone() for k, v in unwrapped.state_dict().items()}
        bar.set_postfix(train_loss=row["train_loss"], val_loss=val_loss, val_metric=val_metric)
        logger.info(
            "epoch %d: train loss %.4f, val loss %.4f, val %s %.4f",
            epoch,
            row["train_loss"],
            val_loss,
            "AUC" if config.task == "classification" else "c-index",
            val_metric,
        )
        if epoch >= config.min_epochs and epoch - best_epoch >= config.patience:
            break
    bar.close()

    model = accelerator.unwrap_model(prepared_model)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    logger.info("kept the weights of epoch %d (validation %s)", best_epoch, config.monitor)

    test_predictions = test_metrics = None
    if test is not None:  # first and only access to the test split's bags and targets
        test_loader = accelerator.prepare(_loader(test, config, train=False, generator=generator))
        test_predictions = _as_predictions(
            config.task, test, *_predict_batches(prepared_model, test_loader, accelerator)
        )
        test_metrics = test_predictions.metrics()
        logger.info("test: %s", test_metrics)
    return TrainResult(
        model=model,
        history=history,
        best_epoch=best_epoch,
        stopped_early=len(history) < config.epochs,
        time_bins=cuts,
        test=test_predictions,
        test_metrics=test_metrics,
        config=config,
    )


__all__ = [
    "Predictions",
    "TrainConfig",
    "TrainResult",
    "make_accelerator",
    "predict",
    "resolve_mixed_precision",
    "train_mil",
]
