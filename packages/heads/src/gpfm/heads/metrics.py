"""Classification metrics and bootstrap intervals, in two flavours.

- Ours: scikit-learn's definitions; percentile bootstrap intervals that resample whole patients
  when patient ids are given (``bootstrap_ci``).
- The GPFM paper's (``protocol="gpfm"``): the definitions of torchmetrics 0.10.3, the version
  its code pins (``multiclass_accuracy`` with ``top_k``, ``multiclass_f1``, ``multiclass_auroc``:
  every class 0..C-1 counts in a macro mean, an absent class as 0), and torchmetrics'
  ``BootStrapper`` (Poisson resampling, mean and standard deviation; ``poisson_bootstrap``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from sklearn import metrics as skm

from gpfm.heads.errors import InvalidInputError
from gpfm.heads.protocol import EvalProtocol, check_protocol

logger = logging.getLogger(__name__)


def _labels(labels: Sequence[int] | np.ndarray) -> np.ndarray:
    array = np.asarray(labels)
    if array.ndim != 1 or len(array) == 0:
        raise InvalidInputError(f"labels must be a non-empty 1-D array, got shape {array.shape}")
    return array


def accuracy(labels: Sequence[int] | np.ndarray, predictions: Sequence[int] | np.ndarray) -> float:
    """Fraction of (N,) ``predictions`` equal to (N,) ``labels``."""
    return float(skm.accuracy_score(_labels(labels), np.asarray(predictions)))


def balanced_accuracy(
    labels: Sequence[int] | np.ndarray, predictions: Sequence[int] | np.ndarray
) -> float:
    """Mean over the classes present in ``labels`` of each class's recall."""
    return float(skm.balanced_accuracy_score(_labels(labels), np.asarray(predictions)))


def macro_f1(labels: Sequence[int] | np.ndarray, predictions: Sequence[int] | np.ndarray) -> float:
    """Unweighted mean of the per-class F1 scores (classes in labels or predictions)."""
    return float(
        skm.f1_score(_labels(labels), np.asarray(predictions), average="macro", zero_division=0)
    )


def macro_auc(labels: Sequence[int] | np.ndarray, probabilities: np.ndarray) -> float:
    """Area under the ROC curve: binary, or the macro mean of one-vs-rest AUCs.

    Args:
        labels: (N,) class indices 0..C-1.
        probabilities: (N, C) class probabilities (or scores); (N,) is taken as the positive
            class's score of a binary task.

    Classes absent from ``labels`` have no AUC and are left out of the mean (with a warning);
    with every class present this equals ``roc_auc_score(..., multi_class="ovr")``.

    Raises:
        InvalidInputError: fewer than two classes present, or shapes disagree.
    """
    labels = _labels(labels)
    scores = np.asarray(probabilities, dtype=np.float64)
    if scores.ndim == 1:
        scores = np.stack([1.0 - scores, scores], axis=1)
    if scores.ndim != 2 or len(scores) != len(labels):
        raise InvalidInputError(
            f"probabilities must be (N, C) with N = {len(labels)}, got {scores.shape}"
        )
    present = np.unique(labels)
    if len(present) < 2:
        raise InvalidInputError(
            f"AUC needs at least two classes among the labels, got only {present.tolist()}"
        )
    if scores.shape[1] == 2:
        return float(skm.roc_auc_score(labels == 1, scores[:, 1]))
    if len(present) < scores.shape[1]:
        logger.warning(
            "macro AUC over %d of %d classes (the others have no sample)",
            len(present),
            scores.shape[1],
        )
    return float(np.mean([skm.roc_auc_score(labels == c, scores[:, c]) for c in present]))


def classification_metrics(
    labels: Sequence[int] | np.ndarray, probabilities: np.ndarray
) -> dict[str, float]:
    """``accuracy``, ``balanced_accuracy``, ``macro_f1`` (of the argmax class) and ``auc``.

    Args:
        labels: (N,) class indices.
        probabilities: (N, C) class probabilities.
    """
    probabilities = np.asarray(probabilities)
    predictions = probabilities.argmax(axis=1)
    return {
        "accuracy": accuracy(labels, predictions),
        "balanced_accuracy": balanced_accuracy(labels, predictions),
        "macro_f1": macro_f1(labels, predictions),
        "auc": macro_auc(labels, probabilities),
    }


@dataclass(frozen=True)
class BootstrapResult:
    """A metric on the full data and its bootstrap distribution.

    Attributes:
        estimate: the metric on the data as given.
        low, high: the percentile interval's bounds.
        confidence: e.g. 0.95.
        replicates: (R,) the metric on each resample that could be scored.
        n_failed: resamples that could not be scored (e.g. a single class) and were skipped.
        mean, std: mean and standard deviation (n - 1) of the replicates: what the GPFM paper
            reports (torchmetrics' ``BootStrapper``).
    """

    estimate: float
    low: float
    high: float
    confidence: float
    replicates: np.ndarray
    n_failed: int
    mean: float = float("nan")
    std: float = float("nan")


def _percentile_result(
    estimate: float, values: np.ndarray, confidence: float, failed: int
) -> BootstrapResult:
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    std = float(values.std(ddof=1)) if len(values) > 1 else float("nan")
    return BootstrapResult(
        estimate, float(low), float(high), confidence, values, failed, float(values.mean()), std
    )


def bootstrap_ci(
    metric: Callable[..., float],
    *arrays: np.ndarray | Sequence[float],
    groups: np.ndarray | Sequence[str] | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    protocol: EvalProtocol = "ours",
) -> BootstrapResult:
    """Bootstrap distribution of ``metric(*arrays)``: percentile interval, mean and std.

    ``protocol="ours"``: each resample draws, with replacement, as many units as there are:
    rows, or whole ``groups`` (e.g. patient ids, so that the slides of one patient stay
    together). ``protocol="gpfm"``: torchmetrics' ``BootStrapper`` as the paper uses it, each row
    repeated Poisson(1) times (see ``poisson_bootstrap``); report ``mean`` ± ``std``. Resamples
    the metric cannot score (it raised ``ValueError``, e.g. one class only) are skipped and
    counted.

    Args:
        metric: called as ``metric(*resampled_arrays)``, e.g. ``macro_auc`` with
            (labels, probabilities) or ``c_index`` with (time, event, risk).
        arrays: arrays with one row per sample, all of one length N.
        groups: (N,) group id of each row, or None to resample rows (``ours`` only).
        n_resamples: R (the benchmark: 1000).
        confidence: coverage of the percentile interval, in (0, 1).
        seed: seed of the resampling.
        protocol: ``ours`` or ``gpfm``.

    Raises:
        InvalidInputError: lengths differ, more than half the resamples failed, or ``groups``
            with ``protocol="gpfm"``.
    """
    if check_protocol(protocol) == "gpfm":
        if groups is not None:
            raise InvalidInputError(
                "the GPFM bootstrap resamples rows; pass groups=None or protocol='ours'"
            )
        return poisson_bootstrap(
            {"metric": metric}, *arrays, n_resamples=n_resamples, seed=seed, confidence=confidence
        )["metric"]
    data = _same_length(arrays)
    n = len(data[0])
    if not 0 < confidence < 1:
        raise InvalidInputError(f"confidence must be in (0, 1), got {confidence}")
    if groups is None:
        members = [np.array([row]) for row in range(n)]
    else:
        group_ids = np.asarray(groups)
        if len(group_ids) != n:
            raise InvalidInputError(f"groups has {len(group_ids)} entries for {n} rows")
        _, inverse = np.unique(group_ids, return_inverse=True)
        order = np.argsort(inverse, kind="stable")
        members = np.split(order, np.flatnonzero(np.diff(inverse[order])) + 1)
    estimate = float(metric(*data))
    rng = np.random.default_rng(seed)
    rows_of_resamples = []
    for _ in range(n_resamples):
        drawn = rng.integers(0, len(members), len(members))
        rows_of_resamples.append(np.concatenate([members[g] for g in drawn]))
    values, failed = _score_resamples(metric, data, rows_of_resamples)
    return _percentile_result(estimate, values, confidence, failed)


def _same_length(arrays: Sequence[np.ndarray | Sequence[float]]) -> list[np.ndarray]:
    if not arrays:
        raise InvalidInputError("a bootstrap needs at least one array")
    data = [np.asarray(a) for a in arrays]
    if any(len(a) != len(data[0]) for a in data):
        raise InvalidInputError(f"arrays have different lengths: {[len(a) for a in data]}")
    return data


def _score_resamples(
    metric: Callable[..., float], data: list[np.ndarray], resamples: list[np.ndarray]
) -> tuple[np.ndarray, int]:
    replicates, failed = [], 0
    for rows in resamples:
        if len(rows) == 0:
            failed += 1
            continue
        try:
            replicates.append(float(metric(*(a[rows] for a in data))))
        except ValueError:
            failed += 1
    if failed > len(resamples) / 2:
        raise InvalidInputError(
            f"{failed} of {len(resamples)} bootstrap resamples could not be scored; the data are "
            "too small or too unbalanced for this metric"
        )
    return np.asarray(replicates), failed


def poisson_bootstrap(
    metrics: Mapping[str, Callable[..., float]],
    *arrays: np.ndarray | Sequence[float],
    n_resamples: int = 1000,
    seed: int = 0,
    batch_size: int | None = None,
    confidence: float = 0.95,
) -> dict[str, BootstrapResult]:
    """The GPFM paper's bootstrap: torchmetrics' ``BootStrapper(num_bootstraps=n_resamples)``.

    Rows are fed in batches of ``batch_size`` (all at once when None), as the reference's data
    loader feeds its ``MetricCollection``; for each batch, each metric (in sorted name order, as
    ``MetricCollection`` keeps them) and each resample, every row of the batch is repeated
    Poisson(1) times. A resample's value is the metric on all its rows; ``mean`` and ``std``
    (n - 1) over the resamples are what the paper reports. Draws come from a CPU generator
    seeded with ``seed``: the stream ``torch.manual_seed(seed)`` gives torchmetrics, so the
    replicates equal the reference's.

    Args:
        metrics: name -> ``metric(*resampled_arrays)``.
        arrays: arrays with one row per sample, all of one length N.
        n_resamples: resamples per metric (the paper: 1000).
        seed: seed of the Poisson draws.
        batch_size: rows per update (the reference's loaders: 1024 for the linear probe's test
            split, 256 for kNN, everything at once for retrieval).
        confidence: coverage of the percentile interval also returned.

    Returns:
        name -> ``BootstrapResult`` (``estimate`` is the metric on the data as given).
    """
    data = _same_length(arrays)
    n = len(data[0])
    step = batch_size or n
    if step < 1 or n_resamples < 2:
        raise InvalidInputError("batch_size must be >= 1 and n_resamples >= 2")
    generator = torch.Generator().manual_seed(seed)
    names = sorted(metrics)
    rows: dict[str, list[list[torch.Tensor]]] = {
        name: [[] for _ in range(n_resamples)] for name in names
    }
    for start in range(0, n, step):
        size = min(step, n - start)
        for name in names:
            for resample in rows[name]:
                counts = torch.poisson(torch.ones(size), generator=generator)
                resample.append(torch.arange(start, start + size).repeat_interleave(counts.long()))
    results = {}
    for name in names:
        resamples = [torch.cat(parts).numpy() for parts in rows[name]]
        values, failed = _score_resamples(metrics[name], data, resamples)
        estimate = float(metrics[name](*data))
        results[name] = _percentile_result(estimate, values, confidence, failed)
    return results


def _scores_tensor(
    labels: Sequence[int] | np.ndarray, scores: np.ndarray | torch.Tensor, num_classes: int | None
) -> tuple[torch.Tensor, torch.Tensor, int]:
    target = torch.as_tensor(_labels(labels)).long()
    values = torch.as_tensor(scores)
    if values.ndim == 1:
        values = values.long()
    elif values.ndim != 2 or len(values) != len(target):
        raise InvalidInputError(
            f"scores must be (N, C) or predicted labels (N,), N = {len(target)}; "
            f"got {tuple(values.shape)}"
        )
    classes = num_classes or (values.shape[1] if values.ndim == 2 else int(target.max()) + 1)
    if values.ndim == 2 and values.shape[1] != classes:
        raise InvalidInputError(f"scores have {values.shape[1]} columns for {classes} classes")
    if int(target.max()) >= classes or int(target.min()) < 0:
        raise InvalidInputError(f"labels must be in 0..{classes - 1}")
    return target, values, classes


def _stat_scores(
    target: torch.Tensor, values: torch.Tensor, classes: int, top_k: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-class true positives, false positives and false negatives (torchmetrics 0.10.3:
    top-1 is the first argmax; with top_k > 1 all k classes of ``torch.topk`` are predicted)."""
    if values.ndim == 1:
        predicted = torch.nn.functional.one_hot(values, classes)
    else:
        k = min(top_k, classes)
        chosen = values.argmax(dim=1, keepdim=True) if k == 1 else values.topk(k, dim=1).indices
        predicted = torch.zeros(values.shape, dtype=torch.long).scatter_(1, chosen, 1)
    truth = torch.nn.functional.one_hot(target, classes)
    tp = ((predicted == 1) & (truth == 1)).sum(0)
    fp = ((predicted == 1) & (truth == 0)).sum(0)
    fn = ((predicted == 0) & (truth == 1)).sum(0)
    return tp.double(), fp.double(), fn.double()


def _safe_divide(numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    return numerator / torch.where(denominator == 0, torch.ones_like(denominator), denominator)


def _average(per_class: torch.Tensor, support: torch.Tensor, average: str) -> float:
    if average == "macro":
        return float(per_class.mean())
    if average == "weighted":
        return float(_safe_divide((per_class * support).sum(), support.sum()))
    raise InvalidInputError(f"average must be 'macro' or 'weighted', got {average!r}")


def multiclass_accuracy(
    labels: Sequence[int] | np.ndarray,
    scores: np.ndarray | torch.Tensor,
    *,
    top_k: int = 1,
    average: Literal["macro", "weighted"] = "macro",
    num_classes: int | None = None,
) -> float:
    """torchmetrics 0.10.3 ``MulticlassAccuracy``: per-class recall of the top-k classes.

    A sample is a hit for its class when the class is among the ``top_k`` highest ``scores``
    (top-1: the first maximum; ties beyond that as ``torch.topk`` breaks them). ``macro`` is the
    plain mean of the C recalls, a class without samples counting 0 (the GPFM paper's "top-1
    accuracy" of ROI classification is this balanced accuracy, and its retrieval "Acc@k" is this
    with k = 1, 3, 5); ``weighted`` weights recalls by class support (= plain accuracy at
    top-1). ``top_k`` >= C makes every sample a hit (torchmetrics refuses it).

    Args:
        labels: (N,) class indices. scores: (N, C) scores (logits or probabilities), or (N,)
            predicted classes (top-1 only).
        num_classes: C (default: the columns of ``scores``).
    """
    target, values, classes = _scores_tensor(labels, scores, num_classes)
    tp, _, fn = _stat_scores(target, values, classes, top_k)
    return _average(_safe_divide(tp, tp + fn), tp + fn, average)


def multiclass_f1(
    labels: Sequence[int] | np.ndarray,
    scores: np.ndarray | torch.Tensor,
    *,
    average: Literal["macro", "weighted"] = "macro",
    num_classes: int | None = None,
) -> float:
    """torchmetrics 0.10.3 ``F1Score(task="multiclass")`` of the argmax class: per-class F1,
    then the plain mean over all C classes (``macro``) or the support-weighted mean."""
    target, values, classes = _scores_tensor(labels, scores, num_classes)
    tp, fp, fn = _stat_scores(target, values, classes, 1)
    return _average(_safe_divide(2 * tp, 2 * tp + fp + fn), tp + fn, average)


def multiclass_auroc(
    labels: Sequence[int] | np.ndarray,
    scores: np.ndarray | torch.Tensor,
    *,
    num_classes: int | None = None,
) -> float:
    """torchmetrics 0.10.3 ``AUROC(task="multiclass", average="macro")``.

    Scores outside [0, 1] are taken as logits and softmaxed first; the one-vs-rest AUC of every
    class 0..C-1 is averaged, a class without positive (or negative) samples counting 0.
    """
    target, values, classes = _scores_tensor(labels, scores, num_classes)
    if values.ndim != 2:
        raise InvalidInputError("multiclass_auroc needs (N, C) scores, not predicted labels")
    values = values.float()
    if not bool(((values >= 0) & (values <= 1)).all()):
        values = values.softmax(dim=1)
    truth = target.numpy()
    aucs = []
    for cls in range(classes):
        positive = truth == cls
        if positive.all() or not positive.any():
            aucs.append(0.0)
        else:
            aucs.append(float(skm.roc_auc_score(positive, values[:, cls].numpy())))
    return float(np.mean(aucs))


__all__ = [
    "BootstrapResult",
    "accuracy",
    "balanced_accuracy",
    "bootstrap_ci",
    "classification_metrics",
    "macro_auc",
    "macro_f1",
    "multiclass_accuracy",
    "multiclass_auroc",
    "multiclass_f1",
    "poisson_bootstrap",
]
