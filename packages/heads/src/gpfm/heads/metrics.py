"""Classification metrics (scikit-learn's definitions) and bootstrap confidence intervals,
resampling patients rather than slides or tiles when patient ids are given."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from sklearn import metrics as skm

from gpfm.heads.errors import InvalidInputError

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
    """A metric on the full data and its bootstrap percentile interval.

    Attributes:
        estimate: the metric on the data as given.
        low, high: the interval's bounds.
        confidence: e.g. 0.95.
        replicates: (R,) the metric on each resample that could be scored.
        n_failed: resamples that could not be scored (e.g. a single class) and were skipped.
    """

    estimate: float
    low: float
    high: float
    confidence: float
    replicates: np.ndarray
    n_failed: int


def bootstrap_ci(
    metric: Callable[..., float],
    *arrays: np.ndarray | Sequence[float],
    groups: np.ndarray | Sequence[str] | None = None,
    n_resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> BootstrapResult:
    """Percentile bootstrap interval of ``metric(*arrays)``.

    Each resample draws, with replacement, as many units as there are: rows, or whole
    ``groups`` (e.g. patient ids, so that the slides of one patient stay together), and scores
    the metric on the rows of the drawn units. Resamples the metric cannot score (it raised
    ``ValueError``, e.g. one class only) are skipped and counted.

    Args:
        metric: called as ``metric(*resampled_arrays)``, e.g. ``macro_auc`` with
            (labels, probabilities) or ``c_index`` with (time, event, risk).
        arrays: arrays with one row per sample, all of one length N.
        groups: (N,) group id of each row, or None to resample rows.
        n_resamples: R (the benchmark: 1000).
        confidence: interval coverage in (0, 1).
        seed: seed of the resampling.

    Raises:
        InvalidInputError: lengths differ, or more than half the resamples failed.
    """
    if not arrays:
        raise InvalidInputError("bootstrap_ci needs at least one array")
    data = [np.asarray(a) for a in arrays]
    n = len(data[0])
    if any(len(a) != n for a in data):
        raise InvalidInputError(f"arrays have different lengths: {[len(a) for a in data]}")
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
    replicates, failed = [], 0
    for _ in range(n_resamples):
        drawn = rng.integers(0, len(members), len(members))
        rows = np.concatenate([members[g] for g in drawn])
        try:
            replicates.append(float(metric(*(a[rows] for a in data))))
        except ValueError:
            failed += 1
    if failed > n_resamples / 2:
        raise InvalidInputError(
            f"{failed} of {n_resamples} bootstrap resamples could not be scored; the data are "
            "too small or too unbalanced for this metric"
        )
    values = np.asarray(replicates)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return BootstrapResult(estimate, float(low), float(high), confidence, values, failed)


__all__ = [
    "BootstrapResult",
    "accuracy",
    "balanced_accuracy",
    "bootstrap_ci",
    "classification_metrics",
    "macro_auc",
    "macro_f1",
]
