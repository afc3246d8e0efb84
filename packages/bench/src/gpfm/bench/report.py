"""The benchmark report: one self-contained HTML page (images inlined, no network) and Markdown.

It shows the leaderboard; a heat-map of each model's rank on each task, grouped by panel (like
the GPFM paper's overview figure); a critical-difference diagram (Nemenyi, over the tasks every
model has); per-task bars of the primary metric with intervals; Friedman's test and the
Holm-corrected Wilcoxon tests; the tasks not available; and the resolved settings of every task.
Drawing needs matplotlib (``pip install "gpfm-bench[report]"``).
"""

from __future__ import annotations

import base64
import html
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from gpfm.bench.errors import BenchError, ResultsError
from gpfm.bench.leaderboard import Leaderboard, leaderboard
from gpfm.bench.stats import task_ranks

logger = logging.getLogger(__name__)


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise BenchError(
            'write_report draws with matplotlib: pip install "gpfm-bench[report]"'
        ) from error
    return plt


def _ordered_tasks(board: Leaderboard) -> list[str]:
    """Tasks grouped by panel (in order of first appearance), then as read."""
    panels: dict[str, list[str]] = {}
    for task in board.scores:
        panels.setdefault(board.tasks[task]["panel"], []).append(task)
    return [task for tasks in panels.values() for task in tasks]


def rank_heatmap(board: Leaderboard, path: Path) -> Path:
    """Tasks x models, coloured and labelled by rank (1 = best), grouped by panel."""
    plt = _pyplot()
    tasks, models = _ordered_tasks(board), board.models
    ranks = np.full((len(tasks), len(models)), np.nan)
    for i, task in enumerate(tasks):
        for model, rank in task_ranks(board.scores[task]).items():
            ranks[i, models.index(model)] = rank
    height = 1.6 + 0.28 * len(tasks)
    fig, ax = plt.subplots(figsize=(2.2 + 0.75 * len(models), height))
    image = ax.imshow(
        np.ma.masked_invalid(ranks), cmap="viridis_r", aspect="auto", vmin=1, vmax=len(models)
    )
    for (i, j), rank in np.ndenumerate(ranks):
        text = "–" if math.isnan(rank) else f"{rank:g}"
        colour = "black" if math.isnan(rank) or rank > len(models) * 0.6 else "white"
        ax.text(j, i, text, ha="center", va="center", fontsize=8, color=colour)
    ax.set_xticks(range(len(models)), models, rotation=35, ha="right")
    ax.set_yticks(range(len(tasks)), tasks, fontsize=8)
    ax.xaxis.set_ticks_position("top")
    ax.xaxis.set_label_position("top")
    start = 0
    for panel in dict.fromkeys(board.tasks[t]["panel"] for t in tasks):
        size = sum(board.tasks[t]["panel"] == panel for t in tasks)
        if start:
            ax.axhline(start - 0.5, color="white", linewidth=3)
        ax.text(
            len(models) - 0.4, start + size / 2 - 0.5, panel, rotation=-90, va="center", fontsize=9
        )
        start += size
    fig.colorbar(image, ax=ax, label="rank on the task (1 = best)", shrink=0.6, pad=0.08)
    ax.set_title(f"Rank of each model on each task ({board.protocol} protocol)", pad=12)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def cd_diagram(board: Leaderboard, path: Path, alpha: float = 0.05) -> Path | None:
    """Mean ranks over the tasks every model has, with the Nemenyi critical difference; models
    joined by a bar are not significantly different. None when there are too few tasks."""
    try:
        test = board.friedman()
    except ResultsError as error:
        logger.info("no critical-difference diagram: %s", error)
        return None
    plt = _pyplot()
    cd = board.critical_difference(alpha)
    order = np.argsort(test.mean_ranks)
    names = [test.models[i] for i in order]
    ranks = [test.mean_ranks[i] for i in order]
    k = len(names)
    fig, ax = plt.subplots(figsize=(8, 1.6 + 0.32 * k))
    ax.set_xlim(k + 0.5, 0.5)
    ax.set_ylim(-(k // 2 + 2.2), 1.8)
    ax.axis("off")
    ax.hlines(0, 1, k, color="black")
    for tick in range(1, k + 1):
        ax.vlines(tick, 0, 0.15, color="black")
        ax.text(tick, 0.3, str(tick), ha="center", fontsize=9)
    ax.hlines(1.2, 1, 1 + cd, color="black", linewidth=2)
    ax.text(1 + cd / 2, 1.4, f"CD = {cd:.2f}", ha="center", fontsize=9)
    half = (k + 1) // 2
    for index, (name, rank) in enumerate(zip(names, ranks, strict=True)):
        left = index < half
        depth = -(index + 1) * 0.5 if left else -(k - index) * 0.5
        edge = 0.6 if left else k + 0.4
        ax.plot([rank, rank, edge], [0, depth, depth], color="black", linewidth=1)
        ax.text(
            edge + (0.1 if left else -0.1),
            depth,
            f"{name} ({rank:.2f})",
            ha="right" if left else "left",
            va="center",
            fontsize=9,
        )
    cliques: list[tuple[int, int]] = []
    for i in range(k):
        j = max(j for j in range(k) if ranks[j] - ranks[i] <= cd)
        if j > i and not any(a <= i and j <= b for a, b in cliques):
            cliques.append((i, j))
    for level, (a, b) in enumerate(cliques, start=1):
        ax.hlines(-0.12 - 0.14 * level, ranks[a] - 0.05, ranks[b] + 0.05, linewidth=4, color="0.3")
    ax.set_title(
        f"Mean rank over {test.n_tasks} tasks (Friedman p = {test.p_value:.2g}; Nemenyi "
        f"alpha = {alpha})",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def task_bars(board: Leaderboard, path: Path) -> Path:
    """One panel per task: each model's primary metric with its interval."""
    plt = _pyplot()
    tasks, models = _ordered_tasks(board), board.models
    columns = min(4, len(tasks))
    rows = math.ceil(len(tasks) / columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(3.2 * columns, 2.4 * rows), squeeze=False, sharey=False
    )
    colours = plt.get_cmap("tab10").colors
    for ax, task in zip(axes.flat, tasks, strict=False):
        values = [board.scores[task].get(m, math.nan) for m in models]
        intervals = [board.intervals[task].get(m, (math.nan, math.nan)) for m in models]
        errors = np.array(
            [
                [v - lo if math.isfinite(lo) else 0.0, hi - v if math.isfinite(hi) else 0.0]
                for v, (lo, hi) in zip(values, intervals, strict=True)
            ]
        ).T
        ax.bar(range(len(models)), values, color=[colours[i % 10] for i in range(len(models))])
        ax.errorbar(range(len(models)), values, yerr=errors, fmt="none", ecolor="black", capsize=3)
        finite = [v for v in values if math.isfinite(v)]
        lows = [lo for lo, _ in intervals if math.isfinite(lo)]
        bottom = min(finite + lows) if finite else 0.0
        ax.set_ylim(
            max(0.0, bottom - 0.1),
            min(1.0, max(finite + [hi for _, hi in intervals if math.isfinite(hi)]) + 0.05)
            if finite
            else 1.0,
        )
        ax.set_xticks(range(len(models)), models, rotation=35, ha="right", fontsize=8)
        ax.set_title(task, fontsize=9)
        ax.set_ylabel(board.tasks[task]["metric"], fontsize=8)
    for ax in list(axes.flat)[len(tasks) :]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _settings_rows(board: Leaderboard) -> list[list[str]]:
    rows = [["task", "type", "panel", "head", "training settings", "split", "primary metric"]]
    seen = set()
    for result in board.results:
        if result.task in seen:
            continue
        seen.add(result.task)
        spec = result.spec
        split = spec["split"]
        how = split["kind"] + (f" {split['folds']} folds" if split["kind"] == "kfold" else "")
        how += f", seeds {split['seeds']}"
        train = ", ".join(f"{k}={v}" for k, v in spec["head"]["train"].items()) or "protocol's"
        head = spec["head"]["name"] + "".join(
            f" {k}={v}" for k, v in spec["head"]["options"].items()
        )
        rows.append(
            [result.task, result.type, result.panel, head, train, how, spec["metrics"]["primary"]]
        )
    return rows


def _stats_rows(board: Leaderboard) -> tuple[str, list[list[str]]]:
    try:
        test = board.friedman()
        line = (
            f"Friedman chi² = {test.statistic:.2f}, p = {test.p_value:.3g} over {test.n_tasks} "
            f"tasks that all {test.n_models} models have; Nemenyi critical difference "
            f"{board.critical_difference():.2f} (alpha 0.05)."
        )
    except ResultsError as error:
        line = f"No Friedman test: {error}."
    rows = [["model A", "model B", "tasks", "median A − B", "p", "p (Holm)", "significant"]]
    for pair in board.pairwise():
        rows.append(
            [
                pair.model_a,
                pair.model_b,
                str(pair.n_tasks),
                f"{pair.median_difference:+.4f}",
                f"{pair.p_value:.3g}",
                f"{pair.p_holm:.3g}",
                "yes" if pair.significant else "no",
            ]
        )
    return line, rows


def _html_table(rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in rows[0])
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows[1:]
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _md_table(rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows[1:]]
    return "\n".join(lines)


_STYLE = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:1em 0;font-size:0.9em}"
    "td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#eee}"
    "img{max-width:100%}.note{color:#555}"
)


def write_report(results_dir: str | Path, out: str | Path, *, protocol: str | None = None) -> Path:
    """Write ``report.html`` (self-contained) and ``report.md`` (+ ``figures/*.png``) to ``out``.

    Args:
        results_dir: the folder of ``results.json`` files (``run_task``'s ``out``).
        out: destination folder.
        protocol: which protocol's results (None: the only one present).

    Returns:
        The path of ``report.html``.
    """
    board = leaderboard(results_dir, protocol=protocol)
    out = Path(out)
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    drawn = {
        "Rank of each model on each task": rank_heatmap(board, figures / "rank_heatmap.png"),
        "Critical-difference diagram": cd_diagram(board, figures / "critical_difference.png"),
        "Primary metric per task (bars: intervals)": task_bars(board, figures / "task_bars.png"),
    }
    friedman_line, pairwise = _stats_rows(board)
    unavailable = [["task", "why"], *[[t, r] for t, r in board.not_available.items()]]
    settings = _settings_rows(board)
    versions = board.results[0].versions if board.results else {}
    version_line = ", ".join(f"{k} {v}" for k, v in versions.items())
    title = f"GPFM benchmark report — {board.protocol} protocol"
    parts = [f"<h1>{html.escape(title)}</h1>", "<h2>Leaderboard</h2>", _html_table(board.table())]
    parts.append(
        f'<p class="note">Mean rank over the tasks each model has (1 = best; ties share the '
        f"mean rank and split first places); {len(board.scores)} tasks ranked.</p>"
    )
    md = [f"# {title}", "", "## Leaderboard", "", board.to_markdown()]
    for caption, path in drawn.items():
        if path is None:
            continue
        encoded = base64.b64encode(path.read_bytes()).decode()
        parts += [
            f"<h2>{caption}</h2>",
            f'<img alt="{caption}" src="data:image/png;base64,{encoded}">',
        ]
        md += [f"## {caption}", "", f"![{caption}](figures/{path.name})", ""]
    parts += ["<h2>Statistics</h2>", f"<p>{html.escape(friedman_line)}</p>"]
    parts.append("<p>Wilcoxon signed-rank tests on task-level scores, Holm-corrected:</p>")
    parts.append(_html_table(pairwise))
    md += ["## Statistics", "", friedman_line, "", _md_table(pairwise), ""]
    if len(unavailable) > 1:
        parts += ["<h2>Not available</h2>", _html_table(unavailable)]
        md += ["## Not available", "", _md_table(unavailable), ""]
    parts += [
        "<h2>Resolved settings</h2>",
        _html_table(settings),
        f"<p class='note'>{html.escape(version_line)}</p>",
    ]
    md += ["## Resolved settings", "", _md_table(settings), "", version_line, ""]
    page = (
        f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>"
    )
    (out / "report.md").write_text("\n".join(md), encoding="utf-8")
    target = out / "report.html"
    target.write_text(page, encoding="utf-8")
    return target


__all__ = ["cd_diagram", "rank_heatmap", "task_bars", "write_report"]
