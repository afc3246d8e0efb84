"""ROI retrieval: rank a database of features by cosine similarity to each query, and score the
ranking with Acc@k, MVAcc@k and mAP@k (any number of classes)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch

from gpfm.heads.errors import InvalidInputError

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
) -> dict[str, float]:
    """Retrieval metrics of cosine-similarity search, averaged over the queries.

    For a query with label y and its top-k database neighbours (most similar first):

    - ``acc@k``: 1 if at least one of the k neighbours has label y, else 0.
    - ``mvacc@k``: 1 if the majority label of the k neighbours is y, else 0; a tie between
      labels goes to the tied label whose nearest occurrence ranks first.
    - ``map@k``: average precision at k, Σ_{i<=k} precision@i · rel_i / min(k, R), where rel_i
      is 1 when neighbour i has label y and R is the number of database items with label y
      (the query itself not counted); 0 when R = 0.

    Args:
        query_features: (Q, D). query_labels: (Q,).
        database_features: (M, D). database_labels: (M,).
        ks: the cut-offs k to report.
        normalization: see ``nearest_neighbours`` (statistics from the database).
        exclude_self: leave each query out of its own neighbours. None (default) does so
            exactly when ``query_features is database_features`` (the same object), as in a
            leave-one-out evaluation of one set.
        chunk_size: queries compared at a time.

    Returns:
        {"acc@1": ..., "mvacc@1": ..., "map@1": ..., "acc@3": ...}, each in [0, 1].
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
    if not ks:
        raise InvalidInputError("ks is empty; pass cut-offs such as (1, 3, 5)")
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


__all__ = ["majority_vote", "nearest_neighbours", "retrieval_scores"]
