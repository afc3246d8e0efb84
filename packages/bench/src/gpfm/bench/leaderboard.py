"""The leaderboard: computed from results files, never typed in.

``leaderboard(results_dir)`` reads every ``results.json`` of one protocol, takes each task's
primary metric (its mean over folds and seeds) per encoder, and ranks the encoders with
``gpfm.bench.stats.rank_models``. Tasks reported as not available are listed, not ranked.
"""

from __future__ import annotations

import csv
import io
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpfm.bench.errors import ResultsError, SpecError
from gpfm.bench.registry import list_tasks
from gpfm.bench.results import TaskResult, find_results
from gpfm.bench.spec import TaskSpec
from gpfm.bench.stats import (
    FriedmanResult,
    PairwiseTest,
    complete_tasks,
    critical_difference,
    friedman,
    rank_models,
    wilcoxon_holm,
)

logger = logging.getLogger(__name__)

COLUMNS = ("rank", "model", "mean_rank", "firsts", "mean_metric", "tasks", "missing")


@dataclass
class Leaderboard:
    """Models ranked over tasks, with what the ranking rests on.

    Attributes:
        protocol: the protocol of every result used.
        rows: one dict per model, best first: ``model``, ``mean_rank``, ``firsts``,
            ``mean_metric``, ``tasks``, ``missing`` (tasks without a result).
        scores: task -> model -> the primary metric's mean.
        intervals: task -> model -> (low, high) of the primary metric (NaN when unknown).
        tasks: task -> ``type``, ``panel``, ``metric``.
        not_available: task -> why it has no result (e.g. no VQA head yet).
        results: the results files read.
    """

    protocol: str
    rows: list[dict[str, Any]]
    scores: dict[str, dict[str, float]]
    intervals: dict[str, dict[str, tuple[float, float]]]
    tasks: dict[str, dict[str, str]]
    not_available: dict[str, str] = field(default_factory=dict)
    results: list[TaskResult] = field(default_factory=list, repr=False)

    @property
    def models(self) -> list[str]:
        """The models, best first."""
        return [row["model"] for row in self.rows]

    def friedman(self) -> FriedmanResult:
        """Friedman's test over the tasks every model has."""
        return friedman(self.scores)

    def critical_difference(self, alpha: float = 0.05) -> float:
        """The Nemenyi critical difference for these models and their common tasks."""
        models, tasks = complete_tasks(self.scores)
        return critical_difference(len(models), len(tasks), alpha)

    def pairwise(self, alpha: float = 0.05) -> list[PairwiseTest]:
        """Wilcoxon signed-rank tests on task-level scores, Holm-corrected."""
        return wilcoxon_holm(self.scores, alpha)

    def table(self) -> list[list[str]]:
        """Header and rows as strings (what ``str``, CSV and Markdown show)."""
        lines = [list(COLUMNS)]
        for position, row in enumerate(self.rows, start=1):
            lines.append(
                [
                    str(position),
                    row["model"],
                    f"{row['mean_rank']:.2f}",
                    f"{row['firsts']:g}",
                    f"{row['mean_metric']:.4f}",
                    str(row["tasks"]),
                    ", ".join(row["missing"]) or "-",
                ]
            )
        return lines

    def to_csv(self, path: str | Path | None = None) -> str:
        """The table as CSV text (also written to ``path`` when given)."""
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(self.table())
        if path is not None:
            Path(path).write_text(buffer.getvalue(), encoding="utf-8")
        return buffer.getvalue()

    def to_markdown(self) -> str:
        """The table as Markdown."""
        header, *rows = self.table()
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines) + "\n"

    def __str__(self) -> str:
        table = self.table()
        widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
        lines = [
            "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in table
        ]
        title = f"leaderboard ({self.protocol} protocol, {len(self.scores)} tasks)"
        if self.not_available:
            lines.append(f"not available: {', '.join(self.not_available)}")
        return "\n".join([title, *lines])


def _known_tasks() -> list[TaskSpec]:
    try:
        return list_tasks()
    except SpecError as error:  # e.g. a bad file in $GPFM_BENCH_TASKS: order by name instead
        logger.warning("tasks ordered by name: %s", error)
        return []


def leaderboard(results_dir: str | Path, *, protocol: str | None = None) -> Leaderboard:
    """Rank the encoders whose ``results.json`` files lie under ``results_dir``.

    Args:
        results_dir: the ``out`` folder of ``run_task`` (searched recursively).
        protocol: use the results of this protocol; None: the only one present.

    Raises:
        ResultsError: no results, several protocols without ``protocol=``, or tasks whose
            metrics point in different directions.
    """
    results = find_results(results_dir)
    protocols = sorted({r.protocol for r in results})
    if protocol is None and len(protocols) > 1:
        raise ResultsError(
            f"{results_dir}: results of several protocols {protocols}; pass protocol= to choose"
        )
    chosen = protocol or (protocols[0] if protocols else "")
    results = [r for r in results if r.protocol == chosen]
    if not results:
        raise ResultsError(
            f"{results_dir}: no results.json of protocol {chosen!r}; run tasks first"
        )
    scores: dict[str, dict[str, float]] = {}
    intervals: dict[str, dict[str, tuple[float, float]]] = {}
    tasks: dict[str, dict[str, str]] = {}
    not_available: dict[str, str] = {}
    directions = set()
    for result in results:
        if result.status != "done":
            not_available[result.task] = result.reason or result.status
            continue
        directions.add(result.higher_is_better)
        summary = result.metrics.get(result.primary_metric, {})
        scores.setdefault(result.task, {})[result.encoder] = result.primary
        low, high = summary.get("ci_low"), summary.get("ci_high")
        intervals.setdefault(result.task, {})[result.encoder] = (
            math.nan if low is None else float(low),
            math.nan if high is None else float(high),
        )
        tasks[result.task] = {
            "type": result.type,
            "panel": result.panel,
            "metric": result.primary_metric,
        }
    if len(directions) > 1:
        raise ResultsError(
            f"{results_dir}: some tasks' primary metrics are better higher and some lower; "
            "rank them separately"
        )
    # Tasks in the registry's order (the paper's, then the user's), grouped by panel.
    order = {spec.name: index for index, spec in enumerate(_known_tasks())}
    first_of_panel: dict[str, int] = {}
    for task in sorted(tasks, key=lambda t: order.get(t, len(order))):
        first_of_panel.setdefault(tasks[task]["panel"], len(first_of_panel))
    sort_key = lambda t: (first_of_panel[tasks[t]["panel"]], order.get(t, len(order)), t)  # noqa: E731
    scores = {task: scores[task] for task in sorted(scores, key=sort_key)}
    ranked = rank_models(scores, higher_is_better=directions != {False})
    rows = [{"model": model, **values} for model, values in ranked.items()]
    return Leaderboard(chosen, rows, scores, intervals, tasks, not_available, results)


__all__ = ["Leaderboard", "leaderboard"]
