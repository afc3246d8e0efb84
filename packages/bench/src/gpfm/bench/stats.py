"""Ranking models over tasks, and the tests that say whether their differences hold up.

All functions take task-level scores, ``{task: {model: score}}`` (one number per model and task,
e.g. a metric's mean over folds), never bootstrap replicates: replicates of one test set are not
independent samples of the task population, and tests on them overstate significance.

- ``rank_models``: mean rank (1 = best; ties share the mean of their ranks), first places (a
  tie for first splits the place equally), mean metric and task count per model.
- ``friedman``: Friedman's chi-square over the tasks every model has (with scipy's tie
  correction) and its p-value.
- ``critical_difference``: the Nemenyi critical difference of mean ranks,
  q_alpha / sqrt(2) * sqrt(k (k + 1) / (6 N)), q_alpha the studentized range quantile for k
  models and infinite degrees of freedom (Demšar 2006).
- ``wilcoxon_holm``: Wilcoxon signed-rank tests between every pair of models on the tasks both
  have, p-values Holm-corrected.
- ``mean_ci``: the mean of a few values (folds, seeds) and its Student-t interval.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as sps

from gpfm.bench.errors import ResultsError

logger = logging.getLogger(__name__)

Scores = Mapping[str, Mapping[str, float]]


def _finite(scores: Scores) -> dict[str, dict[str, float]]:
    return {
        task: {m: float(v) for m, v in row.items() if v is not None and math.isfinite(float(v))}
        for task, row in scores.items()
    }


def task_ranks(row: Mapping[str, float], higher_is_better: bool = True) -> dict[str, float]:
    """Ranks of the models on one task: 1 = best, ties share the mean of their ranks."""
    models = list(row)
    values = np.array([row[m] for m in models], dtype=np.float64)
    ranks = sps.rankdata(-values if higher_is_better else values, method="average")
    return dict(zip(models, ranks.tolist(), strict=True))


def rank_models(scores: Scores, higher_is_better: bool = True) -> dict[str, dict[str, Any]]:
    """Mean rank, first places, mean metric and task count of each model.

    Args:
        scores: ``{task: {model: score}}``; a model absent from a task (or with a NaN/None
            score) is ranked on the tasks it has.
        higher_is_better: direction of the scores.

    Returns:
        ``{model: {"mean_rank", "firsts", "mean_metric", "tasks", "missing"}}`` ordered by mean
        rank (then by more firsts); ``missing`` lists the tasks the model lacks (a warning
        names them too), ``tasks`` counts those it has.
    """
    table = _finite(scores)
    models = sorted({m for row in table.values() for m in row})
    ranks: dict[str, list[float]] = {m: [] for m in models}
    metric: dict[str, list[float]] = {m: [] for m in models}
    firsts = dict.fromkeys(models, 0.0)
    for row in table.values():
        if not row:
            continue
        row_ranks = task_ranks(row, higher_is_better)
        best = min(row_ranks.values())
        winners = [m for m, r in row_ranks.items() if r == best]
        for model, rank in row_ranks.items():
            ranks[model].append(rank)
            metric[model].append(row[model])
        for model in winners:
            firsts[model] += 1.0 / len(winners)
    result: dict[str, dict[str, Any]] = {}
    for model in models:
        missing = [task for task, row in table.items() if model not in row]
        if missing:
            logger.warning(
                "%s lacks %d task(s) (%s); it is ranked on the %d it has",
                model,
                len(missing),
                ", ".join(missing[:5]),
                len(ranks[model]),
            )
        result[model] = {
            "mean_rank": float(np.mean(ranks[model])),
            "firsts": firsts[model],
            "mean_metric": float(np.mean(metric[model])),
            "tasks": len(ranks[model]),
            "missing": missing,
        }
    return dict(sorted(result.items(), key=lambda item: (item[1]["mean_rank"], -firsts[item[0]])))


@dataclass(frozen=True)
class FriedmanResult:
    """Friedman's test over the tasks that every model has.

    Attributes:
        statistic: chi-square with scipy's correction for ties.
        p_value: of chi-square with k - 1 degrees of freedom.
        n_models, n_tasks: k and N.
        models: the models, in the order of ``mean_ranks``.
        mean_ranks: mean rank of each model over those tasks (1 = best).
        tasks: the tasks used (those where every model has a score).
    """

    statistic: float
    p_value: float
    n_models: int
    n_tasks: int
    models: tuple[str, ...]
    mean_ranks: tuple[float, ...]
    tasks: tuple[str, ...]


def complete_tasks(scores: Scores) -> tuple[list[str], list[str]]:
    """(models, tasks) such that every model has a finite score on every task listed."""
    table = _finite(scores)
    models = sorted({m for row in table.values() for m in row})
    tasks = [task for task, row in table.items() if all(m in row for m in models)]
    return models, tasks


def friedman(scores: Scores, higher_is_better: bool = True) -> FriedmanResult:
    """Friedman's test that all models rank alike, over the tasks every model has.

    Equal to ``scipy.stats.friedmanchisquare`` on those tasks (its tie correction included).

    Raises:
        ResultsError: fewer than 3 models or 2 complete tasks.
    """
    table = _finite(scores)
    models, tasks = complete_tasks(table)
    k, n = len(models), len(tasks)
    if k < 3 or n < 2:
        raise ResultsError(
            f"Friedman's test needs 3 or more models on 2 or more common tasks; got {k} models "
            f"on {n} tasks that all of them have"
        )
    ranks = np.array([[task_ranks(table[t], higher_is_better)[m] for m in models] for t in tasks])
    rank_sums = ranks.sum(axis=0)
    ties = 0.0
    for row in ranks:
        _, counts = np.unique(row, return_counts=True)
        ties += float((counts**3 - counts).sum())
    correction = 1.0 - ties / (n * k * (k * k - 1))
    statistic = 12.0 / (n * k * (k + 1)) * float((rank_sums**2).sum()) - 3 * n * (k + 1)
    statistic = statistic / correction if correction > 0 else 0.0
    p_value = float(sps.chi2.sf(statistic, k - 1))
    return FriedmanResult(
        float(statistic),
        p_value,
        k,
        n,
        tuple(models),
        tuple((rank_sums / n).tolist()),
        tuple(tasks),
    )


def critical_difference(n_models: int, n_tasks: int, alpha: float = 0.05) -> float:
    """The Nemenyi critical difference of mean ranks (in ranks).

    q_alpha / sqrt(2) * sqrt(k (k + 1) / (6 N)), q_alpha the (1 - alpha) quantile of the
    studentized range for k models and infinite degrees of freedom. Two models whose mean ranks
    differ by more are different at level alpha. For 9 models and 72 tasks at 0.05: 1.42.
    """
    if n_models < 2 or n_tasks < 1 or not 0 < alpha < 1:
        raise ResultsError(
            f"critical_difference needs n_models >= 2, n_tasks >= 1 and 0 < alpha < 1; got "
            f"{n_models}, {n_tasks}, {alpha}"
        )
    q = float(sps.studentized_range.ppf(1 - alpha, n_models, np.inf))
    return q / math.sqrt(2) * math.sqrt(n_models * (n_models + 1) / (6.0 * n_tasks))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given (each capped at 1)."""
    p = np.asarray(p_values, dtype=np.float64)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for position, index in enumerate(order):
        running = max(running, min(1.0, (m - position) * p[index]))
        adjusted[index] = running
    return adjusted.tolist()


@dataclass(frozen=True)
class PairwiseTest:
    """A Wilcoxon signed-rank test of two models on the tasks both have.

    Attributes:
        model_a, model_b: the pair.
        n_tasks: tasks both have.
        median_difference: median of (a - b) over those tasks.
        statistic, p_value: scipy's two-sided test (p = 1 when every difference is 0).
        p_holm: Holm-corrected over all pairs.
        significant: p_holm < alpha.
    """

    model_a: str
    model_b: str
    n_tasks: int
    median_difference: float
    statistic: float
    p_value: float
    p_holm: float
    significant: bool


def wilcoxon_holm(scores: Scores, alpha: float = 0.05) -> list[PairwiseTest]:
    """Wilcoxon signed-rank tests between every pair of models on task-level scores, with
    Holm's correction over the pairs (pairs with fewer than 2 common tasks are left out)."""
    table = _finite(scores)
    models = sorted({m for row in table.values() for m in row})
    raw = []
    for a, b in itertools.combinations(models, 2):
        common = [t for t, row in table.items() if a in row and b in row]
        if len(common) < 2:
            continue
        x = np.array([table[t][a] for t in common])
        y = np.array([table[t][b] for t in common])
        if np.all(x == y):
            statistic, p_value = 0.0, 1.0
        else:
            test = sps.wilcoxon(x, y)
            statistic, p_value = float(test.statistic), float(test.pvalue)
        raw.append((a, b, len(common), float(np.median(x - y)), statistic, p_value))
    adjusted = holm([row[-1] for row in raw])
    return [
        PairwiseTest(*row, p_holm=p, significant=p < alpha)
        for row, p in zip(raw, adjusted, strict=True)
    ]


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the mean of ``values`` and its Student-t interval (NaN bounds for a
    single value)."""
    array = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if len(array) == 0:
        return math.nan, math.nan, math.nan
    mean = float(array.mean())
    if len(array) < 2:
        return mean, math.nan, math.nan
    half = float(sps.t.ppf(0.5 + confidence / 2, len(array) - 1) * sps.sem(array))
    return mean, mean - half, mean + half


__all__ = [
    "FriedmanResult",
    "PairwiseTest",
    "complete_tasks",
    "critical_difference",
    "friedman",
    "holm",
    "mean_ci",
    "rank_models",
    "task_ranks",
    "wilcoxon_holm",
]
