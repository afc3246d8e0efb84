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
import textwrap
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
    """Tasks grouped by panel (the leaderboard keeps them so: the registry's order)."""
    return list(board.scores)


def rank_heatmap(board: Leaderboard, path: Path) -> Path:
    """Tasks x models, coloured and labelled by rank (1 = best), grouped by panel."""
    plt = _pyplot()
    tasks, models = _ordered_tasks(board), board.models
    ranks = np.full((len(tasks), len(models)), np.nan)
    for i, task in enumerate(tasks):
        for model, rank in task_ranks(board.scores[task]).items():
            ranks[i, models.index(model)] = rank
    fig, ax = plt.subplots(figsize=(3.4 + 0.7 * len(models), 2.2 + 0.3 * len(tasks)))
    image = ax.imshow(
        np.ma.masked_invalid(ranks), cmap="RdYlGn_r", aspect="auto", vmin=1, vmax=len(models)
    )
    for (i, j), rank in np.ndenumerate(ranks):
        text = "–" if math.isnan(rank) else f"{rank:g}"
        ax.text(j, i, text, ha="center", va="center", fontsize=8)
    ax.set_xticks(range(len(models)), models, rotation=35, ha="left")
    ax.set_yticks(range(len(tasks)), tasks, fontsize=8)
    ax.xaxis.tick_top()
    start = 0
    for panel in dict.fromkeys(board.tasks[t]["panel"] for t in tasks):
        size = sum(board.tasks[t]["panel"] == panel for t in tasks)
        if start:
            ax.axhline(start - 0.5, color="black", linewidth=2)
        ax.annotate(
            panel,
            xy=(1.02, start + size / 2 - 0.5),
            xycoords=("axes fraction", "data"),
            rotation=-90,
            va="center",
            fontsize=9,
            annotation_clip=False,
        )
        start += size
    colorbar = fig.colorbar(image, ax=ax, orientation="horizontal", shrink=0.7, pad=0.03)
    colorbar.set_label(
        f"rank of each model on each task ({board.protocol} protocol; 1 = best, – no result)"
    )
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _cliques(ranks: list[float], cd: float) -> list[tuple[int, int]]:
    """Maximal runs (i, j) of models sorted by rank whose ranks differ by at most ``cd``."""
    cliques: list[tuple[int, int]] = []
    for i in range(len(ranks)):
        j = max(j for j in range(len(ranks)) if ranks[j] - ranks[i] <= cd)
        if j > i and not any(a <= i and j <= b for a, b in cliques):
            cliques.append((i, j))
    return cliques


def _pack(cliques: list[tuple[int, int]]) -> list[int]:
    """A row (1, 2, ...) for each clique, sharing a row with cliques it does not overlap."""
    rows: list[int] = []
    for index, (a, _) in enumerate(cliques):
        taken = {rows[i] for i, (_, b) in enumerate(cliques[:index]) if b >= a - 1}
        rows.append(min(set(range(1, len(cliques) + 2)) - taken))
    return rows


def cd_diagram(board: Leaderboard, path: Path, alpha: float = 0.05) -> Path | None:
    """Mean ranks over the tasks every model has, with the Nemenyi critical difference; models
    joined by a grey bar are not significantly different. None when there are too few tasks."""
    try:
        test = board.friedman()
    except ResultsError as error:
        logger.info("no critical-difference diagram: %s", error)
        return None
    plt = _pyplot()
    cd = board.critical_difference(alpha)
    order = np.argsort(test.mean_ranks, kind="stable")
    names = [test.models[i] for i in order]
    ranks = [float(test.mean_ranks[i]) for i in order]
    k = len(names)
    cliques = _cliques(ranks, cd)
    levels = _pack(cliques)
    half = (k + 1) // 2
    step = 0.35
    top = 0.25 * max(levels, default=0) + 0.35
    bottom = top + step * (half + 0.5)
    margin = 0.45 * (k - 1) + 0.9
    fig, ax = plt.subplots(figsize=(9, 1.4 + 0.45 * (half + max(levels, default=0) / 2)))
    ax.set_xlim(1 - margin, k + margin)
    ax.set_ylim(-bottom, 1.0)
    ax.axis("off")
    ax.hlines(0, 1, k, color="black")
    for tick in range(1, k + 1):
        ax.vlines(tick, 0, 0.1, color="black")
        ax.text(tick, 0.18, str(tick), ha="center", fontsize=9)
    ax.hlines(0.75, 1, 1 + cd, color="black", linewidth=2)
    ax.vlines([1, 1 + cd], 0.7, 0.8, color="black")
    ax.text(1 + cd / 2, 0.85, f"CD = {cd:.2f}", ha="center", fontsize=9)
    for (a, b), level in zip(cliques, levels, strict=True):
        ax.hlines(-0.25 * level, ranks[a] - 0.03, ranks[b] + 0.03, linewidth=5, color="0.55")
    for index, (name, rank) in enumerate(zip(names, ranks, strict=True)):
        left = index < half
        depth = -(top + step * ((index if left else k - 1 - index) + 1))
        edge = 1 - 0.25 if left else k + 0.25
        ax.plot([rank, rank, edge], [0, depth, depth], color="black", linewidth=1)
        ax.text(
            edge + (-0.08 if left else 0.08),
            depth,
            f"{name} ({rank:.2f})",
            ha="right" if left else "left",
            va="center",
            fontsize=9,
        )
    ax.set_title(
        f"Mean rank over the {test.n_tasks} tasks all {k} models have (1 = best); Friedman "
        f"p = {test.p_value:.2g}; grey bars: no significant difference (Nemenyi, alpha {alpha})",
        fontsize=9,
    )
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def task_bars(board: Leaderboard, path: Path, tasks_per_row: int = 8) -> Path:
    """Grouped bars: each task's primary metric per model, with its interval (black lines)."""
    plt = _pyplot()
    tasks, models = _ordered_tasks(board), board.models
    chunks = [tasks[i : i + tasks_per_row] for i in range(0, len(tasks), tasks_per_row)]
    fig, axes = plt.subplots(
        len(chunks),
        1,
        figsize=(2 + 1.5 * min(len(tasks), tasks_per_row), 2.6 * len(chunks) + 0.6),
        squeeze=False,
    )
    colours = plt.get_cmap("tab10" if len(models) <= 10 else "tab20").colors
    width = 0.8 / len(models)
    for ax, chunk in zip(axes[:, 0], chunks, strict=True):
        for m, model in enumerate(models):
            x = np.arange(len(chunk)) + (m - (len(models) - 1) / 2) * width
            values = np.array([board.scores[t].get(model, np.nan) for t in chunk])
            bounds = np.array([board.intervals[t].get(model, (np.nan, np.nan)) for t in chunk])
            ax.bar(x, values, width, color=colours[m % len(colours)], label=model)
            known = np.isfinite(bounds).all(axis=1) & np.isfinite(values)
            ax.vlines(x[known], bounds[known, 0], bounds[known, 1], color="black", linewidth=0.8)
        shown = [v for t in chunk for v in board.scores[t].values() if math.isfinite(v)]
        shown += [lo for t in chunk for lo, _ in board.intervals[t].values() if math.isfinite(lo)]
        if shown:
            ax.set_ylim(max(0.0, min(shown) - 0.05), 1.0)
        labels = [
            textwrap.fill(t.replace("-", "- "), 16).replace("- ", "-")
            + f"\n({board.tasks[t]['metric']})"
            for t in chunk
        ]
        ax.set_xticks(range(len(chunk)), labels, fontsize=7)
        ax.set_xlim(-0.5, (tasks_per_row if len(chunks) > 1 else len(chunk)) - 0.5)
        ax.grid(axis="y", linewidth=0.3)
    axes[0, 0].legend(
        ncols=min(len(models), 9), fontsize=8, loc="lower left", bbox_to_anchor=(0, 1.02)
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


_SHOWN_SETTINGS = (
    "optimizer",
    "lr",
    "weight_decay",
    "epochs",
    "patience",
    "min_epochs",
    "monitor",
    "n_bins",
    "mixed_precision",
)


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
        resolved = (result.runs[0].get("selection", {}) if result.runs else {}).get("settings")
        if resolved:  # what the protocol made of them
            train = ", ".join(f"{k}={resolved[k]}" for k in _SHOWN_SETTINGS if k in resolved)
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
