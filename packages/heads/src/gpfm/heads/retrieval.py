"""ROI retrieval: rank a database of features for each query, and score the ranking.

Two protocols:

- ``"uni"`` (the default; ``"ours"`` is the same): cosine similarity, and per query Acc@k (a
  top-k neighbour shares its label), MVAcc@k and mAP@k, as UNI reports them; any number of
  classes.
- ``"gpfm"``: the GPFM paper's "Acc@k" (birkhoffkiki/GPFM ``ROI_tasks/roi_retrieval.py``):
  features z-scored with the database's mean and (n - 1) standard deviation, the C nearest
  database items by L2 distance (C = number of classes) vote 1.0, 0.9, 0.8, ... by rank, the
  votes are softmaxed into class scores, and Acc@k is the macro-averaged top-k accuracy of those
  class scores (torchmetrics ``MulticlassAccuracy(top_k=k, average="macro")``), with the
  paper's Poisson bootstrap beside it. It is a different quantity from UNI's Acc@k.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Literal

import numpy as np
import torch

from gpfm.heads.errors import InvalidInputError
from gpfm.heads.metrics import multiclass_accuracy, poisson_bootstrap
from gpfm.heads.protocol import check_protocol

logger = logging.getLogger(__name__)

Normalization = Literal["none", "center", "zscore"]


def _as_tensor(features: np.ndarray | torch.Tensor, name: str) -> torch.Tensor:
    tensor = torch.as_tensor(features).detach().to("cpu", torch.float32)
    if tensor.ndim != 2 or tensor.shape[0] == 0:
        raise InvalidInputError(
            f"{name} must be a non-empty (N, D) array, got {tuple(tensor.shape)}"
        )
    return tensor


def nearest_neighbours(
    query_features: np.ndarray | torch.Tensor,
    database_features: np.ndarray | torch.Tensor,
    k: int,
    *,
    normalization: Normalization = "none",
    exclude_self: bool = False,
    chunk_size: int = 512,
) -> tuple[np.ndarray, np.ndarray]:
    """The k most cosine-similar database items of each query.

    Args:
        query_features: (Q, D) query features.
        database_features: (M, D) database features.
        k: neighbours per query.
        normalization: ``center`` subtracts the database mean, ``zscore`` also divides by the
            database standard deviation, before the cosine; ``none`` uses the features as given.
        exclude_self: query i is database item i (the same set), and is never its own neighbour.
        chunk_size: queries compared at a time (memory: chunk_size x M floats).

    Returns:
        indices (Q, k) int64 into the database, most similar first (equal similarities keep
        database order), and their similarities (Q, k) float32.
    """
    queries = _as_tensor(query_features, "query_features")
    database = _as_tensor(database_features, "database_features")
    if queries.shape[1] != database.shape[1]:
        raise InvalidInputError(
            f"query features have D={queries.shape[1]}, database features D={database.shape[1]}"
        )
    if exclude_self and queries.shape[0] != database.shape[0]:
        raise InvalidInputError("exclude_self needs the queries to be the database itself")
    available = database.shape[0] - int(exclude_self)
    if not 1 <= k <= available:
        raise InvalidInputError(f"k={k} but the database offers {available} neighbours per query")
    if normalization not in ("none", "center", "zscore"):
        raise InvalidInputError(
            f"normalization must be 'none', 'center' or 'zscore', got {normalization!r}"
        )
    if normalization != "none":
        mean = database.mean(dim=0)
        scale = database.std(dim=0).clamp_min(1e-12) if normalization == "zscore" else 1.0
        queries, database = (queries - mean) / scale, (database - mean) / scale
    queries = torch.nn.functional.normalize(queries, dim=1)
    database = torch.nn.functional.normalize(database, dim=1)
    indices, similarities = [], []
    for start in range(0, queries.shape[0], chunk_size):
        similarity = queries[start : start + chunk_size] @ database.T
        if exclude_self:
            rows = torch.arange(similarity.shape[0])
            similarity[rows, rows + start] = float("-inf")
        values, order = torch.sort(similarity, dim=1, descending=True, stable=True)
        indices.append(order[:, :k])
        similarities.append(values[:, :k])
    return torch.cat(indices).numpy(), torch.cat(similarities).numpy()


def majority_vote(neighbour_labels: np.ndarray) -> np.ndarray:
    """The most frequent label of each row of (Q, k) labels, ordered nearest first.

    Ties go to the tied label that occurs first in the row (the one with the nearest neighbour).
    """
    votes = []
    for row in neighbour_labels:
        values, first, counts = np.unique(row, return_index=True, return_counts=True)
        tied = counts == counts.max()
        votes.append(values[tied][np.argmin(first[tied])])
    return np.asarray(votes)


def retrieval_scores(
    query_features: np.ndarray | torch.Tensor,
    query_labels: Sequence[int] | np.ndarray,
    database_features: np.ndarray | torch.Tensor,
    database_labels: Sequence[int] | np.ndarray,
    ks: Sequence[int] = (1, 3, 5),
    *,
    normalization: Normalization = "none",
    exclude_self: bool | None = None,
    chunk_size: int = 512,
    protocol: Literal["uni", "ours", "gpfm"] = "uni",
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """Retrieval metrics of nearest-neighbour search, averaged over the queries.

    ``protocol="uni"`` (default): cosine similarity; for a query with label y and its top-k
    database neighbours (most similar first):

    - ``acc@k``: 1 if at least one of the k neighbours has label y, else 0.
    - ``mvacc@k``: 1 if the majority label of the k neighbours is y, else 0; a tie between
      labels goes to the tied label whose nearest occurrence ranks first.
    - ``map@k``: average precision at k, Σ_{i<=k} precision@i · rel_i / min(k, R), where rel_i
      is 1 when neighbour i has label y and R is the number of database items with label y
      (the query itself not counted); 0 when R = 0.

    ``protocol="gpfm"``: the paper's ``acc@k`` for each k, the macro top-k accuracy of the
    rank-vote class scores (``rank_vote_scores``; the module docstring has the recipe), on the
    whole query set; beside each, ``acc@k_bootstrap_mean`` and ``acc@k_bootstrap_std`` over
    ``n_bootstrap`` Poisson resamples (0: none). The database is the training set; its
    statistics z-score both sides (``normalization`` is not used). With k >= C every class is
    in the top k (the reference's torchmetrics refuses such k; here every sample is a hit).

    Args:
        query_features: (Q, D). query_labels: (Q,).
        database_features: (M, D). database_labels: (M,).
        ks: the cut-offs k to report.
        normalization: see ``nearest_neighbours`` (statistics from the database).
        exclude_self: leave each query out of its own neighbours. None (default) does so
            exactly when ``query_features is database_features`` (the same object), as in a
            leave-one-out evaluation of one set.
        chunk_size: queries compared at a time.
        protocol: ``uni`` (or ``ours``) or ``gpfm``.
        n_bootstrap: ``gpfm`` only: Poisson resamples (the paper: 1000).
        seed: ``gpfm`` only: seed of the resampling.

    Returns:
        {"acc@1": ..., "mvacc@1": ..., "map@1": ..., "acc@3": ...}, each in [0, 1]; under
        ``gpfm`` {"acc@1": ..., "acc@1_bootstrap_mean": ..., "acc@1_bootstrap_std": ..., ...}.
    """
    same = query_features is database_features
    if exclude_self is None:
        exclude_self = same
    query_labels = np.asarray(query_labels)
    database_labels = np.asarray(database_labels)
    if len(query_labels) != len(query_features) or len(database_labels) != len(database_features):
        raise InvalidInputError(
            f"{len(query_labels)} query labels for {len(query_features)} queries, "
            f"{len(database_labels)} database labels for {len(database_features)} items"
        )
    if exclude_self and not np.array_equal(query_labels, database_labels):
        raise InvalidInputError(
            "the queries are the database (exclude_self) but their labels differ; pass the same "
            "labels for both"
        )
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1:
        raise InvalidInputError("ks must hold cut-offs >= 1, such as (1, 3, 5)")
    if check_protocol(protocol, aliases=("uni",)) == "gpfm":
        return _gpfm_scores(
            query_features,
            query_labels,
            database_features,
            database_labels,
            ks,
            exclude_self=exclude_self,
            n_bootstrap=n_bootstrap,
            seed=seed,
        )
    neighbours, _ = nearest_neighbours(
        query_features,
        database_features,
        ks[-1],
        normalization=normalization,
        exclude_self=exclude_self,
        chunk_size=chunk_size,
    )
    neighbour_labels = database_labels[neighbours]  # (Q, k_max)
    relevant = neighbour_labels == query_labels[:, None]
    classes, counts = np.unique(database_labels, return_counts=True)
    per_class = dict(zip(classes.tolist(), counts.tolist(), strict=True))
    n_relevant = np.array([per_class.get(label, 0) for label in query_labels.tolist()])
    n_relevant = n_relevant - int(exclude_self)
    precision_at = np.cumsum(relevant, axis=1) / np.arange(1, ks[-1] + 1)
    scores: dict[str, float] = {}
    for k in ks:
        hits = relevant[:, :k]
        denominator = np.minimum(k, n_relevant)
        average_precision = np.divide(
            (precision_at[:, :k] * hits).sum(axis=1),
            denominator,
            out=np.zeros(len(query_labels)),
            where=denominator > 0,
        )
        scores[f"acc@{k}"] = float(hits.any(axis=1).mean())
        scores[f"mvacc@{k}"] = float(
            (majority_vote(neighbour_labels[:, :k]) == query_labels).mean()
        )
        scores[f"map@{k}"] = float(average_precision.mean())
    return scores


def rank_vote_scores(
    query_features: np.ndarray | torch.Tensor,
    database_features: np.ndarray | torch.Tensor,
    database_labels: Sequence[int] | np.ndarray,
    num_classes: int,
    *,
    exclude_self: bool = False,
    chunk_size: int = 256,
) -> torch.Tensor:
    """The GPFM paper's retrieval class scores (Q, C), float32 (``roi_retrieval.py``).

    Both sides are z-scored with the database's mean and (n - 1) standard deviation; the C
    nearest database items by L2 distance (C = ``num_classes``; ``torch.topk``) vote for their
    labels with weights 1.0, 0.9, 0.8, ... (rank 11 on gets 0 or less, as in the reference);
    the vote sums are softmaxed over the classes.

    Args:
        query_features: (Q, D). database_features: (M, D). database_labels: (M,) in 0..C-1.
        num_classes: C, also the number of neighbours.
        exclude_self: the queries are the database; leave each query out of its neighbours.
        chunk_size: queries per distance computation (the reference's scripts: 256).
    """
    queries = _as_tensor(query_features, "query_features")
    database = _as_tensor(database_features, "database_features")
    labels = torch.as_tensor(np.asarray(database_labels)).long()
    available = database.shape[0] - int(exclude_self)
    if not 1 <= num_classes <= available:
        raise InvalidInputError(
            f"{num_classes} neighbours (one per class) but the database offers {available}"
        )
    if num_classes > 11:
        logger.warning(
            "GPFM retrieval with %d classes: the votes of rank 12 on are negative, as in the "
            "reference",
            num_classes,
        )
    variance, mean = torch.var_mean(database, dim=0, keepdim=True)
    std = torch.sqrt(variance)
    queries, database = (queries - mean) / std, (database - mean) / std
    indices = []
    for start in range(0, queries.shape[0], chunk_size):
        distance = torch.cdist(queries[start : start + chunk_size], database)
        if exclude_self:
            own = torch.arange(distance.shape[0])
            distance[own, own + start] = float("inf")
        indices.append(torch.topk(distance, num_classes, largest=False, sorted=True).indices)
    neighbour_labels = labels[torch.cat(indices)]  # (Q, C), nearest first
    votes = torch.zeros(neighbour_labels.shape[0], num_classes)
    rows = torch.arange(neighbour_labels.shape[0])
    weight = 1.0  # decremented in float64 exactly as the reference's loop does
    for rank in range(num_classes):
        votes[rows, neighbour_labels[:, rank]] += weight
        weight -= 0.1
    return torch.softmax(votes, dim=-1)


def _gpfm_scores(
    query_features: np.ndarray | torch.Tensor,
    query_labels: np.ndarray,
    database_features: np.ndarray | torch.Tensor,
    database_labels: np.ndarray,
    ks: list[int],
    *,
    exclude_self: bool,
    n_bootstrap: int,
    seed: int,
) -> dict[str, float]:
    num_classes = int(max(query_labels.max(), database_labels.max())) + 1
    scores = rank_vote_scores(
        query_features,
        database_features,
        database_labels,
        num_classes,
        exclude_self=exclude_self,
    ).numpy()

    def top_k_accuracy(k: int) -> Callable[[np.ndarray, np.ndarray], float]:
        def metric(labels: np.ndarray, class_scores: np.ndarray) -> float:
            return multiclass_accuracy(labels, class_scores, top_k=k, num_classes=num_classes)

        return metric

    metrics = {f"top{k} acc": top_k_accuracy(k) for k in ks}  # the reference's metric names
    results: dict[str, float] = {}
    for k in ks:
        results[f"acc@{k}"] = metrics[f"top{k} acc"](query_labels, scores)
    if n_bootstrap:
        boot = poisson_bootstrap(metrics, query_labels, scores, n_resamples=n_bootstrap, seed=seed)
        for k in ks:
            results[f"acc@{k}_bootstrap_mean"] = boot[f"top{k} acc"].mean
            results[f"acc@{k}_bootstrap_std"] = boot[f"top{k} acc"].std
    return results


__all__ = ["majority_vote", "nearest_neighbours", "rank_vote_scores", "retrieval_scores"]
