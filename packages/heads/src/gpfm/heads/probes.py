"""ROI-level probes on frozen features: a logistic-regression linear probe and a cosine kNN,
each with its hyperparameter chosen on the validation split, and SimpleShot few-shot episodes.

The fitting functions take training and validation data only; test data reach a fitted probe
only through ``predict``/``predict_proba``, so test labels cannot steer any choice. With
``protocol="gpfm"`` the linear and kNN probes are the GPFM paper's (``gpfm.heads.probes_gpfm``).
"""

from __future__ import annotations

import copy
import logging
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, overload

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from gpfm.heads.errors import InvalidInputError
from gpfm.heads.metrics import accuracy, balanced_accuracy, macro_f1
from gpfm.heads.probes_gpfm import TorchLinearProbe, fit_gpfm_linear_probe, gpfm_knn_votes
from gpfm.heads.protocol import EvalProtocol, check_protocol
from gpfm.heads.retrieval import Normalization, nearest_neighbours

logger = logging.getLogger(__name__)

SelectBy = Literal["balanced_accuracy", "accuracy", "macro_f1", "log_loss"]
_SCORERS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "balanced_accuracy": balanced_accuracy,
    "accuracy": accuracy,
    "macro_f1": macro_f1,
}
DEFAULT_CS = tuple(float(c) for c in np.logspace(-4, 4, 17))


def _xy(
    features: np.ndarray, labels: Sequence[int] | np.ndarray, name: str
) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(features, dtype=np.float32)
    y = np.asarray(labels)
    if x.ndim != 2 or y.shape != (x.shape[0],) or x.shape[0] == 0:
        raise InvalidInputError(
            f"{name}: features (N, D) and labels (N,) expected, got {x.shape} and {y.shape}"
        )
    return x, y


def _score(
    select_by: str, labels: np.ndarray, probabilities: np.ndarray, classes: np.ndarray
) -> float:
    """Validation score, higher is better (log-loss is negated)."""
    if select_by == "log_loss":
        return -float(log_loss(labels, probabilities, labels=classes))
    if select_by not in _SCORERS:
        raise InvalidInputError(
            f"select_by must be one of {[*_SCORERS, 'log_loss']}, got {select_by!r}"
        )
    return _SCORERS[select_by](labels, classes[probabilities.argmax(axis=1)])


@dataclass
class LinearProbe:
    """A fitted logistic-regression probe.

    Attributes:
        C: the inverse regularisation strength chosen on validation.
        sweep: (C, validation score) for every C tried, in order.
        classes: the class labels, in the column order of ``predict_proba``.
    """

    C: float
    sweep: list[tuple[float, float]]
    classes: np.ndarray
    model: LogisticRegression = field(repr=False)
    scaler: StandardScaler | None = field(default=None, repr=False)

    def _prepare(self, features: np.ndarray) -> np.ndarray:
        x = np.asarray(features, dtype=np.float32)
        return self.scaler.transform(x) if self.scaler is not None else x

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """(N, C) class probabilities of (N, D) features."""
        return np.asarray(self.model.predict_proba(self._prepare(features)))

    def predict(self, features: np.ndarray) -> np.ndarray:
        """(N,) predicted class labels of (N, D) features."""
        return np.asarray(self.model.predict(self._prepare(features)))


@overload
def fit_linear_probe(
    train_features: np.ndarray,
    train_labels: Sequence[int] | np.ndarray,
    val_features: np.ndarray,
    val_labels: Sequence[int] | np.ndarray,
    *,
    protocol: Literal["ours"] = ...,
    **options: Any,
) -> LinearProbe: ...
@overload
def fit_linear_probe(
    train_features: np.ndarray,
    train_labels: Sequence[int] | np.ndarray,
    val_features: np.ndarray,
    val_labels: Sequence[int] | np.ndarray,
    *,
    protocol: Literal["gpfm"],
    **options: Any,
) -> TorchLinearProbe: ...
def fit_linear_probe(
    train_features: np.ndarray,
    train_labels: Sequence[int] | np.ndarray,
    val_features: np.ndarray,
    val_labels: Sequence[int] | np.ndarray,
    *,
    protocol: EvalProtocol = "ours",
    **options: Any,
) -> LinearProbe | TorchLinearProbe:
    """Fit a linear probe on the training split, choosing its setting on the validation split.

    ``protocol="ours"``: logistic regression with C swept on validation
    (``fit_logistic_probe``; ``options``: ``Cs``, ``select_by``, ``standardize``,
    ``class_weight``, ``max_iter``, ``tol``, ``progress``). ``protocol="gpfm"``: the paper's
    ``nn.Linear`` trained with AdamW, the epoch chosen by validation macro-AUC
    (``gpfm.heads.probes_gpfm.fit_gpfm_linear_probe``; ``options``: ``epochs``, ``batch_size``,
    ``lr``, ``weight_decay``, ``final_lr``, ``patience``, ``seed``, ``device``, ``progress``).
    Neither takes test data: call ``predict_proba(x_test)`` on the result.

    Args:
        train_features: (N, D). train_labels: (N,) class labels (``gpfm``: indices 0..C-1).
        val_features: (M, D). val_labels: (M,).
        protocol: ``ours`` or ``gpfm``.
    """
    x_train, y_train = _xy(train_features, train_labels, "training split")
    x_val, y_val = _xy(val_features, val_labels, "validation split")
    if x_val.shape[1] != x_train.shape[1]:
        raise InvalidInputError(f"validation D={x_val.shape[1]} but training D={x_train.shape[1]}")
    if len(np.unique(y_train)) < 2:
        raise InvalidInputError("the training split has a single class; a probe needs two or more")
    if check_protocol(protocol) == "gpfm":
        return fit_gpfm_linear_probe(x_train, y_train, x_val, y_val, **options)
    return fit_logistic_probe(x_train, y_train, x_val, y_val, **options)


def fit_logistic_probe(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    Cs: Sequence[float] = DEFAULT_CS,  # noqa: N803 - scikit-learn's name
    select_by: SelectBy = "balanced_accuracy",
    standardize: bool = True,
    class_weight: Literal["balanced"] | None = None,
    max_iter: int = 10_000,
    tol: float = 1e-6,
    progress: bool = False,
) -> LinearProbe:
    """Fit logistic regression on the training split for each C, keep the best on validation.

    C is swept from strong to weak regularisation, each fit warm-started from the previous one
    and run to convergence (``tol``; scikit-learn's default 1e-4 stops L-BFGS early and leaves
    weakly regularised fits under-fit); the first C with the best validation score wins (ties
    favour stronger regularisation). The kept model is the one fitted on the training split with
    that C.

    Args:
        x_train: (N, D). y_train: (N,) class labels.
        x_val: (M, D). y_val: (M,).
        Cs: inverse regularisation strengths to try (default 1e-4 … 1e4, 17 values).
        select_by: validation criterion.
        standardize: z-score features with the training split's mean and std first.
        class_weight: "balanced" weights classes inversely to their frequency.
        max_iter: L-BFGS iterations per fit at most (a warning names any C that hits it).
        tol: L-BFGS stopping tolerance.
        progress: show a progress bar over the sweep.
    """
    x_train, y_train = _xy(x_train, y_train, "training split")
    x_val, y_val = _xy(x_val, y_val, "validation split")
    scaler = StandardScaler().fit(x_train) if standardize else None
    if scaler is not None:
        x_train, x_val = scaler.transform(x_train), scaler.transform(x_val)
    model = LogisticRegression(
        max_iter=max_iter, tol=tol, warm_start=True, class_weight=class_weight
    )
    sweep: list[tuple[float, float]] = []
    best: tuple[float, float, LogisticRegression] | None = None
    for c in tqdm(sorted(Cs), desc="linear probe C sweep", disable=not progress, leave=False):
        model.set_params(C=c)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            model.fit(x_train, y_train)
        if int(np.max(model.n_iter_)) >= max_iter:
            logger.warning("linear probe: C=%g did not converge in %d iterations", c, max_iter)
        score = _score(select_by, y_val, model.predict_proba(x_val), model.classes_)
        sweep.append((c, score))
        if best is None or score > best[1]:
            best = (c, score, copy.deepcopy(model))
    if best is None:
        raise InvalidInputError("Cs is empty; pass regularisation strengths to try")
    logger.info("linear probe: C=%g chosen on validation (%s %.4f)", best[0], select_by, best[1])
    return LinearProbe(best[0], sweep, best[2].classes_, best[2], scaler)


@dataclass
class KNNProbe:
    """A kNN classifier over L2-normalised training features (cosine similarity).

    Attributes:
        k: neighbours that vote, chosen on validation (or the default).
        sweep: (k, validation score) for every k tried.
        classes: class labels, in the column order of ``predict_proba``.
        temperature: ``ours``: None for one vote per neighbour, else votes weighted
            exp(similarity / T); ``gpfm``: votes softmax(similarity / T) over the max(ks)
            nearest.
        protocol: ``ours`` (a tie goes to the tied label of the nearest) or ``gpfm`` (the
            paper's votes; a tie goes to the first class).
        ks: the k the probe was built for (``gpfm`` normalises votes over the max(ks) nearest).
    """

    k: int
    sweep: list[tuple[int, float]]
    classes: np.ndarray
    temperature: float | None
    normalization: Normalization
    train_features: np.ndarray = field(repr=False)
    train_labels: np.ndarray = field(repr=False)
    protocol: EvalProtocol = "ours"
    ks: tuple[int, ...] = ()

    def _vote(self, features: np.ndarray, k: int | None) -> tuple[np.ndarray, np.ndarray]:
        k = k or self.k
        if self.protocol == "gpfm":
            votes = gpfm_knn_votes(
                self.train_features,
                self.train_labels,
                features,
                sorted({*self.ks, k}),
                temperature=self.temperature or 0.07,
                num_classes=len(self.classes),
            )[k]
            shares = votes / votes.sum(dim=1, keepdim=True)
            return shares.numpy(), self.classes[votes.argmax(dim=1).numpy()]
        neighbours, similarity = nearest_neighbours(
            features, self.train_features, k, normalization=self.normalization
        )
        return _vote(self.train_labels, self.classes, neighbours, similarity, self.temperature)

    def predict_proba(self, features: np.ndarray, k: int | None = None) -> np.ndarray:
        """(N, C) vote shares of (N, D) features, with ``k`` neighbours (default ``self.k``)."""
        return self._vote(np.asarray(features, dtype=np.float32), k)[0]

    def predict(self, features: np.ndarray, k: int | None = None) -> np.ndarray:
        """(N,) labels with the most votes, with ``k`` neighbours (default ``self.k``)."""
        return self._vote(np.asarray(features, dtype=np.float32), k)[1]


def _vote(
    train_labels: np.ndarray,
    classes: np.ndarray,
    neighbours: np.ndarray,
    similarity: np.ndarray,
    temperature: float | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Vote shares (Q, C) and winners (Q,) from neighbour indices/similarities (Q, k)."""
    labels = np.searchsorted(classes, train_labels[neighbours])  # class column of each neighbour
    weights = np.ones_like(similarity) if temperature is None else np.exp(similarity / temperature)
    shares = np.zeros((len(neighbours), len(classes)))
    np.add.at(shares, (np.arange(len(neighbours))[:, None], labels), weights)
    shares /= shares.sum(axis=1, keepdims=True)
    first = np.full(shares.shape, np.inf)
    ranks = np.broadcast_to(np.arange(neighbours.shape[1]), labels.shape)
    np.minimum.at(first, (np.arange(len(neighbours))[:, None], labels), ranks)
    tied = shares >= shares.max(axis=1, keepdims=True) - 1e-12
    winners = np.where(tied, first, np.inf).argmin(axis=1)
    return shares, classes[winners]


def fit_knn_probe(
    train_features: np.ndarray,
    train_labels: Sequence[int] | np.ndarray,
    val_features: np.ndarray | None = None,
    val_labels: Sequence[int] | np.ndarray | None = None,
    *,
    ks: Sequence[int] | None = None,
    default_k: int = 20,
    select_by: Literal["balanced_accuracy", "accuracy", "macro_f1"] = "balanced_accuracy",
    temperature: float | None = None,
    normalization: Normalization = "none",
    protocol: EvalProtocol = "ours",
) -> KNNProbe:
    """A cosine kNN probe whose k is chosen on the validation split.

    Without validation data, k = ``default_k`` (20). Ks larger than the training split are
    skipped; the first k with the best validation score wins (ties favour smaller k).
    ``protocol="gpfm"``: the paper's votes (``gpfm.heads.probes_gpfm.gpfm_knn_votes``), ks
    (1, 20) and T = 0.07 by default, plain cosine; it reports both k
    (``probe.predict(x, k=1)``) with ``multiclass_accuracy(..., average="weighted")`` and
    ``multiclass_f1(..., average="weighted")`` under ``poisson_bootstrap``.

    Args:
        train_features: (N, D). train_labels: (N,) (``gpfm``: class indices 0..C-1).
        val_features: (M, D) or None. val_labels: (M,) or None.
        ks: candidate k (default 1, 3, 5, 10, 20, 50, 100; ``gpfm``: 1, 20).
        default_k: k without validation data.
        select_by: validation criterion.
        temperature: None: one vote per neighbour; T: votes weighted exp(cosine / T)
            (DINOv2's kNN uses 0.07).
        normalization: ``center``/``zscore`` with the training split's statistics before the
            cosine (``none``: plain cosine; ``gpfm`` allows only this).
        protocol: ``ours`` or ``gpfm``.
    """
    x_train, y_train = _xy(train_features, train_labels, "training split")
    gpfm = check_protocol(protocol) == "gpfm"
    if gpfm:
        if normalization != "none":
            raise InvalidInputError("the GPFM kNN uses plain cosine: normalization='none'")
        ks = ks or (1, 20)
        temperature = temperature or 0.07
        classes = np.arange(int(y_train.max()) + 1)
    else:
        ks = ks or (1, 3, 5, 10, 20, 50, 100)
        classes = np.unique(y_train)
    candidates = sorted({int(k) for k in ks if 1 <= int(k) <= len(y_train)})
    if not candidates:
        raise InvalidInputError(f"no k in {list(ks)} fits a training split of {len(y_train)}")
    probe = KNNProbe(
        min(default_k, len(y_train)),
        [],
        classes,
        temperature,
        normalization,
        x_train,
        y_train,
        protocol="gpfm" if gpfm else "ours",
        ks=tuple(candidates),
    )
    if val_features is None or val_labels is None:
        return probe
    x_val, y_val = _xy(val_features, val_labels, "validation split")
    if gpfm:
        votes = gpfm_knn_votes(
            x_train,
            y_train,
            x_val,
            candidates,
            temperature=temperature or 0.07,
            num_classes=len(classes),
        )
        predictions = {k: classes[votes[k].argmax(dim=1).numpy()] for k in candidates}
    else:
        neighbours, similarity = nearest_neighbours(
            x_val, x_train, candidates[-1], normalization=normalization
        )
        predictions = {
            k: _vote(y_train, classes, neighbours[:, :k], similarity[:, :k], temperature)[1]
            for k in candidates
        }
    probe.sweep = [(k, _SCORERS[select_by](y_val, predictions[k])) for k in candidates]
    probe.k = max(probe.sweep, key=lambda item: (item[1], -item[0]))[0]
    logger.info("kNN probe: k=%d chosen on validation", probe.k)
    return probe


@dataclass(frozen=True)
class FewShotResult:
    """SimpleShot over episodes.

    Attributes:
        n_shot: support examples per class in each episode.
        metric: name of the metric scored on the queries.
        mean: mean metric over episodes.
        low, high: percentile interval of the episodes' metric (``confidence`` coverage).
        per_episode: (episodes,) the metric of each episode.
    """

    n_shot: int
    metric: str
    mean: float
    low: float
    high: float
    confidence: float
    per_episode: np.ndarray


def simpleshot(
    support_features: np.ndarray,
    support_labels: Sequence[int] | np.ndarray,
    query_features: np.ndarray,
    query_labels: Sequence[int] | np.ndarray,
    *,
    n_shot: int,
    n_episodes: int = 100,
    metric: Literal["balanced_accuracy", "accuracy", "macro_f1"] = "balanced_accuracy",
    confidence: float = 0.95,
    seed: int = 0,
) -> FewShotResult:
    """SimpleShot few-shot classification (Wang et al. 2019, "CL2N"), over random episodes.

    Each episode draws ``n_shot`` support examples of every class (without replacement),
    subtracts the mean of those support features from support and queries, L2-normalises
    both, takes each class's mean support feature as its prototype, and labels every query
    with its nearest prototype (Euclidean). No hyperparameter is tuned.

    Args:
        support_features: (N, D) pool the support sets are drawn from. support_labels: (N,).
        query_features: (M, D) evaluation features. query_labels: (M,).
        n_shot: support examples per class.
        n_episodes: number of episodes.
        metric: scored on all queries in each episode.
        confidence: coverage of the percentile interval over episodes.
        seed: seed of the episode draws.
    """
    x_pool, y_pool = _xy(support_features, support_labels, "support pool")
    x_query, y_query = _xy(query_features, query_labels, "queries")
    classes, counts = np.unique(y_pool, return_counts=True)
    if n_shot < 1 or counts.min() < n_shot:
        raise InvalidInputError(
            f"n_shot={n_shot} but class {classes[counts.argmin()]} has only {counts.min()} "
            "support examples"
        )
    rng = np.random.default_rng(seed)
    by_class = [np.flatnonzero(y_pool == c) for c in classes]
    queries = torch.from_numpy(x_query)
    results = []
    for _ in range(n_episodes):
        chosen = np.concatenate([rng.choice(rows, n_shot, replace=False) for rows in by_class])
        support = torch.from_numpy(x_pool[chosen])
        center = support.mean(dim=0)
        support = torch.nn.functional.normalize(support - center, dim=1)
        normalized_queries = torch.nn.functional.normalize(queries - center, dim=1)
        prototypes = support.view(len(classes), n_shot, -1).mean(dim=1)
        nearest = torch.cdist(normalized_queries, prototypes).argmin(dim=1).numpy()
        results.append(_SCORERS[metric](y_query, classes[nearest]))
    values = np.asarray(results)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return FewShotResult(
        n_shot, metric, float(values.mean()), float(low), float(high), confidence, values
    )


__all__ = [
    "FewShotResult",
    "KNNProbe",
    "LinearProbe",
    "TorchLinearProbe",
    "fit_knn_probe",
    "fit_linear_probe",
    "fit_logistic_probe",
    "simpleshot",
]
