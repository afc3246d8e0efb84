"""``run_task`` and the results files it writes, one per (protocol, encoder, task).

``<out>/<protocol>/<encoder>/<task>/results.json`` holds the raw per-fold/per-seed metrics, what
was chosen on validation, the test predictions, each metric's mean, spread and interval, the
resolved spec, the versions of the software, and timings. It is written atomically; a finished
file with the same resolved spec is reused (``force=True`` recomputes it).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import platform
import re
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from gpfm.bench.data import read_cohort, require_task
from gpfm.bench.errors import ResultsError
from gpfm.bench.protocols import RUNNERS, unavailable
from gpfm.bench.registry import get_task, shipped_task_files
from gpfm.bench.spec import TaskSpec, load_task
from gpfm.bench.splits import make_folds
from gpfm.bench.stats import mean_ci
from gpfm.heads.features import atomic_path
from gpfm.heads.protocol import check_protocol

logger = logging.getLogger(__name__)

RESULTS_FORMAT_VERSION = 1
PROTOCOL_ALIASES = ("uni",)


@dataclass
class TaskResult:
    """One encoder on one task under one protocol (the content of a ``results.json``).

    Attributes:
        task, type, panel, encoder, protocol: what was run.
        status: ``done`` or ``not_available`` (``reason`` says why).
        primary_metric, higher_is_better: what ranks models on this task.
        metrics: name -> ``mean``, ``std``, ``ci_low``, ``ci_high``, ``ci_method``, ``values``
            (one per fold and seed).
        runs: per fold and seed: metrics, bootstrap intervals, what was chosen on validation,
            sizes, seconds.
        predictions: per test unit and run: id, fold, seed, targets, head output.
        spec: the resolved spec. spec_hash: its hash (a changed spec is recomputed).
        versions: of Python and the packages used. timings: seconds (``total``, ``head``,
            ``eval``). created: UTC time written. path: the file (not stored).
    """

    task: str
    type: str
    panel: str
    encoder: str
    protocol: str
    status: str
    primary_metric: str
    higher_is_better: bool
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)
    predictions: list[dict[str, Any]] = field(default_factory=list)
    spec: dict[str, Any] = field(default_factory=dict)
    spec_hash: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    reason: str = ""
    created: str = ""
    format_version: int = RESULTS_FORMAT_VERSION
    path: Path | None = None

    @property
    def primary(self) -> float:
        """The mean of the primary metric (NaN when not available)."""
        mean = (self.metrics.get(self.primary_metric) or {}).get("mean")
        return math.nan if mean is None else float(mean)

    def to_json(self) -> str:
        """The JSON text of the file (NaN written as null)."""
        data = asdict(self)
        data.pop("path")
        return json.dumps(_nan_to_none(data), indent=1)


def _nan_to_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_nan_to_none(v) for v in value]
    return value


def read_result(path: str | Path) -> TaskResult:
    """Read a ``results.json``.

    Raises:
        ResultsError: the file is not JSON or lacks fields (named).
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ResultsError(
            f"{path}: not a readable results file ({error}); rerun the task"
        ) from error
    known = set(TaskResult.__dataclass_fields__) - {"path"}
    try:
        return TaskResult(**{k: v for k, v in data.items() if k in known}, path=path)
    except TypeError as error:
        raise ResultsError(f"{path}: {error}; rerun the task with force=True") from error


def find_results(results_dir: str | Path) -> list[TaskResult]:
    """Every ``results.json`` under ``results_dir``, read, in path order."""
    return [read_result(p) for p in sorted(Path(results_dir).rglob("results.json"))]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("_")


def result_path(out: str | Path, protocol: str, encoder: str, task: str) -> Path:
    """``<out>/<protocol>/<encoder>/<task>/results.json`` (names made file-safe)."""
    return Path(out) / _slug(protocol) / _slug(encoder) / _slug(task) / "results.json"


def software_versions() -> dict[str, str]:
    """Versions of Python and of the packages a run depends on."""
    versions = {"python": platform.python_version()}
    for package in ("gpfm-bench", "gpfm-heads", "torch", "numpy", "scipy", "scikit-learn"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "0+unknown"
    return versions


def _spec_hash(spec: dict[str, Any], protocol: str) -> str:
    text = json.dumps({"spec": spec, "protocol": protocol}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _summaries(spec: TaskSpec, runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    names = sorted({name for run in runs for name in run["metrics"]})
    summaries = {}
    for name in names:
        values = [run["metrics"].get(name, math.nan) for run in runs]
        mean, low, high = mean_ci(values, spec.metrics.confidence)
        method = "t over folds/seeds"
        if len(runs) == 1 and name in runs[0].get("ci", {}):
            low, high = runs[0]["ci"][name]
            method = "bootstrap"
        finite = [v for v in values if v is not None and math.isfinite(v)]
        std = float(_std(finite))
        summaries[name] = {
            "mean": mean,
            "std": std,
            "ci_low": low,
            "ci_high": high,
            "ci_method": method if math.isfinite(low) else "none",
            "values": values,
        }
    return summaries


def _std(values: list[float]) -> float:
    if len(values) < 2:
        return math.nan
    mean = sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _as_spec(spec: TaskSpec | str | Path) -> TaskSpec:
    if isinstance(spec, TaskSpec):
        return spec
    if isinstance(spec, Path) or str(spec).endswith(".toml"):
        return load_task(spec)
    return get_task(str(spec))


def is_paper_task(spec: TaskSpec) -> bool:
    """Whether ``spec`` is one of the shipped tasks of the paper (read from the package)."""
    return spec.path is not None and spec.path.resolve() in {
        p.resolve() for p in shipped_task_files()
    }


def run_task(
    spec: TaskSpec | str | Path,
    encoder: str,
    data_root: str | Path,
    out: str | Path,
    *,
    protocol: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    force: bool = False,
) -> TaskResult:
    """Measure ``encoder`` on a task and write its ``results.json``.

    Args:
        spec: a ``TaskSpec``, a task name, or a spec file path.
        encoder: the encoder whose features are read (``features/<encoder>/...``).
        data_root: the task's data folder (``docs/bench.md``, "Data layout").
        out: results root; the file goes to ``<out>/<protocol>/<encoder>/<task>/results.json``.
        protocol: ``gpfm`` (the paper's heads and settings; the default for the paper's tasks)
            or ``ours`` (``uni`` is the same; the default for the user's tasks).
        overrides: spec fields to replace, e.g. ``{"head": {"train": {"epochs": 5}}}``; part
            of the resolved spec written to the file.
        force: recompute even when a finished result with the same resolved spec exists.

    Returns:
        The ``TaskResult``; ``status`` is ``not_available`` (``reason`` says what to install)
        for VQA and report generation where the language extra or the LLM is missing; such a
        result is recomputed by the next call.

    Raises:
        DataMissingError, LabelFileError, SpecError: the data or the spec are not usable.
    """
    spec = _as_spec(spec)
    if protocol is None:
        protocol = "gpfm" if is_paper_task(spec) else "ours"
    protocol = check_protocol(protocol, aliases=PROTOCOL_ALIASES)
    resolved = spec.with_overrides(overrides)
    spec_dict = resolved.to_dict()
    spec_hash = _spec_hash(spec_dict, protocol)
    path = result_path(out, protocol, encoder, spec.name)
    if path.exists() and not force:
        previous = read_result(path)
        if previous.spec_hash == spec_hash and previous.status == "done":
            logger.info("%s: finished result reused (force=True recomputes)", path)
            return previous
        logger.info("%s: the spec changed since it was written; recomputing", path)
    result = TaskResult(
        task=spec.name,
        type=spec.type,
        panel=spec.panel,
        encoder=encoder,
        protocol=protocol,
        status="done",
        primary_metric=spec.metrics.primary,
        higher_is_better=spec.metrics.higher_is_better,
        spec=spec_dict,
        spec_hash=spec_hash,
        versions=software_versions(),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        path=path,
    )
    start = time.perf_counter()
    reason = unavailable(resolved)
    if reason is not None:
        result.status, result.reason = "not_available", reason
        logger.warning("%s: %s", spec.name, result.reason)
    else:
        root = Path(data_root)
        require_task(resolved, root, encoder)
        cohort = read_cohort(resolved, root)
        folds = make_folds(resolved, cohort)
        output = RUNNERS[spec.type](resolved, cohort, folds, encoder, root, protocol)
        result.runs, result.predictions = output.runs, output.predictions
        result.metrics = _summaries(resolved, output.runs)
    result.timings = {
        "total": time.perf_counter() - start,
        "head": sum(run.get("head_seconds", 0.0) for run in result.runs),
        "eval": sum(run.get("eval_seconds", 0.0) for run in result.runs),
    }
    with atomic_path(path) as temporary:
        temporary.write_text(result.to_json(), encoding="utf-8")
    logger.info(
        "%s %s (%s): %s %.4f", encoder, spec.name, protocol, result.primary_metric, result.primary
    )
    return result


__all__ = [
    "TaskResult",
    "find_results",
    "is_paper_task",
    "read_result",
    "result_path",
    "run_task",
    "software_versions",
]
