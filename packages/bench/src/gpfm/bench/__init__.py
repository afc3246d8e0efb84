"""gpfm.bench: the GPFM paper's 72-task benchmark as a library.

tasks = list_tasks("survival")                         # the paper's 72, plus your spec files
check_task(get_task("TCGA-BRCA"), data_root)           # what is missing, in words
result = run_task("TCGA-BRCA", "uni", data_root, out)  # -> <out>/gpfm/uni/TCGA-BRCA/results.json
print(leaderboard(out))                                # mean rank, firsts, mean metric
write_report(out, "report")                            # HTML + Markdown (needs gpfm-bench[report])

The top level holds the names most users call; the rest live in submodules: ``gpfm.bench.spec``,
``.registry``, ``.data``, ``.splits``, ``.protocols``, ``.results``, ``.stats``,
``.leaderboard``, ``.report`` and ``.synthetic``.
"""

from __future__ import annotations

from gpfm.bench.data import check_task
from gpfm.bench.errors import (
    BenchError,
    DataMissingError,
    LabelFileError,
    ResultsError,
    SpecError,
)
from gpfm.bench.leaderboard import Leaderboard, leaderboard
from gpfm.bench.registry import get_task, list_tasks
from gpfm.bench.report import write_report
from gpfm.bench.results import TaskResult, run_task
from gpfm.bench.spec import TaskSpec, load_task
from gpfm.bench.stats import critical_difference, friedman, rank_models, wilcoxon_holm
from gpfm.bench.synthetic import make_synthetic_benchmark

__all__ = [
    "BenchError",
    "DataMissingError",
    "LabelFileError",
    "Leaderboard",
    "ResultsError",
    "SpecError",
    "TaskResult",
    "TaskSpec",
    "check_task",
    "critical_difference",
    "friedman",
    "get_task",
    "leaderboard",
    "list_tasks",
    "load_task",
    "make_synthetic_benchmark",
    "rank_models",
    "run_task",
    "wilcoxon_holm",
    "write_report",
]
