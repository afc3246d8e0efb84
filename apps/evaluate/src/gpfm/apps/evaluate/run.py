"""Benchmark runs: (encoder, task) jobs, their features, results, records and the report.

``evaluate`` plans every job, extracts the features that are missing (each slide and image
once per encoder, shared between tasks), runs the jobs through ``gpfm.bench.run_task``, then
writes the report and returns the leaderboard. Each job leaves a record,
``<out>/jobs/<encoder>/<task>.json`` (status ``done``, ``failed``, ``skipped`` or
``not_available``, the reason, seconds); results live in ``<out>/results`` (gpfm-bench's
layout). A rerun keeps finished results, retries failed jobs, and skips again what has no data.

Under ``accelerate launch`` (or torchrun) with N processes, process ``r`` extracts its share of
the slides and encodes the images of every N-th encoder, waits for the others, then runs jobs
``r, r + N, ...``; process 0 writes the report. Results equal those of one process: every job
is seeded and runs alone.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from gpfm.apps.evaluate.data import (
    EvaluateError,
    TaskData,
    TaskDataMissingError,
    encode_image_files,
    encoder_name,
    extract_slides,
    find_task_data,
    link_slide_features,
    prepared_root,
    write_image_features,
)
from gpfm.bench import BenchError, get_task, leaderboard, list_tasks, run_task, write_report
from gpfm.bench.leaderboard import Leaderboard
from gpfm.bench.protocols import unavailable
from gpfm.bench.results import is_paper_task, read_result, result_path
from gpfm.bench.spec import TASK_TYPES, TaskSpec
from gpfm.heads.features import atomic_path

logger = logging.getLogger(__name__)

STATUSES = ("done", "failed", "skipped", "not_available")


@dataclass
class Job:
    """One encoder on one task.

    Attributes:
        encoder: as given (zoo name or exported folder); ``name``: what its files are called.
        spec: the task. protocol: ``gpfm`` or ``ours``.
        data: where the task's data are (None: missing, ``reason`` says why).
        reason: why the job cannot run (missing data, or not available here).
    """

    encoder: str
    name: str
    spec: TaskSpec
    protocol: str
    data: TaskData | None = None
    reason: str = ""

    @property
    def label(self) -> str:
        return f"{self.name} / {self.spec.name}"


def select_tasks(tasks: str, folders: Sequence[str | Path] = ()) -> list[TaskSpec]:
    """``all``, a task type, or comma-separated task names (and types), in registry order.

    Raises:
        gpfm.bench.SpecError: an unknown name (the closest named).
    """
    every = list_tasks(folders=folders)
    wanted = [t.strip() for t in tasks.split(",") if t.strip()]
    if wanted in ([], ["all"]):
        return every
    chosen: dict[str, TaskSpec] = {}
    for item in wanted:
        if item in TASK_TYPES:
            chosen |= {s.name: s for s in every if s.type == item}
        else:
            spec = get_task(item, folders=folders)
            chosen[spec.name] = spec
    return [s for s in every if s.name in chosen]


def process_share() -> tuple[int, int]:
    """(this process's index, number of processes), from the launcher's environment."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


# What torchrun / accelerate launch set to make a process part of a group.
_GROUP_VARIABLES = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "GROUP_RANK",
    "ROLE_RANK",
    "ROLE_WORLD_SIZE",
    "GROUP_WORLD_SIZE",
)


class _FileBarrier:
    """Waits until every process of the launch has reached the same point, through marker
    files under ``folder`` (no process group: the jobs themselves must run alone)."""

    def __init__(self, folder: Path, rank: int, size: int) -> None:
        launch = os.environ.get("TORCHELASTIC_RUN_ID", "") + os.environ.get("MASTER_PORT", "")
        self.folder, self.rank, self.size, self.count = folder / (launch or "run"), rank, size, 0

    def __call__(self, timeout_s: float = 24 * 3600) -> None:
        if self.size == 1:
            return
        self.count += 1
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / f"{self.count}.{self.rank}").touch()
        deadline = time.monotonic() + timeout_s
        while not all((self.folder / f"{self.count}.{r}").exists() for r in range(self.size)):
            if time.monotonic() > deadline:
                raise EvaluateError(f"{self.folder}: the other processes did not arrive")
            time.sleep(0.2)


@contextlib.contextmanager
def _alone() -> Iterator[None]:
    """Hide the launcher's process group from what runs inside (Accelerate in the heads'
    training loops would otherwise join the processes, which run different jobs)."""
    saved = {k: os.environ.pop(k) for k in _GROUP_VARIABLES if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def plan(
    encoders: Sequence[str],
    specs: Sequence[TaskSpec],
    data_root: str | os.PathLike[str],
    protocol: str | None = None,
) -> list[Job]:
    """The jobs, encoder-major, each with its data found (or the reason it is skipped)."""
    jobs = []
    found: dict[str, TaskData | str] = {}
    for spec in specs:
        try:
            found[spec.name] = find_task_data(data_root, spec)
        except TaskDataMissingError as error:
            found[spec.name] = str(error)
    for encoder in encoders:
        for spec in specs:
            chosen = protocol or ("gpfm" if is_paper_task(spec) else "ours")
            job = Job(encoder, encoder_name(encoder), spec, chosen)
            data = found[spec.name]
            if isinstance(data, str):
                job.reason = f"data missing: {data}"
            else:
                job.data = data
                job.reason = unavailable(spec) or ""
            jobs.append(job)
    return jobs


def _record_path(out: Path, job: Job) -> Path:
    return out / "jobs" / job.protocol / job.name / f"{job.spec.name}.json"


def _write_record(
    out: Path, job: Job, status: str, reason: str, seconds: float, rank: int = 0
) -> dict[str, Any]:
    record = {
        "encoder": job.name,
        "task": job.spec.name,
        "type": job.spec.type,
        "protocol": job.protocol,
        "status": status,
        "reason": reason,
        "seconds": round(seconds, 2),
        "process": rank,
    }
    path = _record_path(out, job)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(record, indent=1) + "\n")
    return record


def read_records(out: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """Every job record under ``<out>/jobs``, in path order."""
    return [json.loads(p.read_text()) for p in sorted(Path(out).glob("jobs/*/*/*.json"))]


def describe(jobs: Sequence[Job], out: Path) -> list[str]:
    """One line per job: what will happen to it."""
    lines = []
    for job in jobs:
        path = result_path(out / "results", job.protocol, job.name, job.spec.name)
        if job.reason:
            what = f"skip ({job.reason.splitlines()[0][:160]})"
        elif path.exists() and read_result(path).status == "done":
            what = "done already (kept)"
        else:
            what = f"run ({job.data.kind if job.data else '?'})"
        lines.append(f"{job.label:<48} {job.spec.type:<20} {job.protocol:<5} {what}")
    return lines


@dataclass
class Settings:
    """What ``evaluate`` was asked (see ``gpfm-evaluate --help``)."""

    weights: Mapping[str, str]
    random_init: bool = False
    overrides: Mapping[str, Mapping[str, Any]] | None = None
    progress: bool = True
    coords: Path | None = None
    rank: int = 0
    size: int = 1


def _mine(jobs: Sequence[Job], rank: int, size: int) -> list[Job]:
    return [job for index, job in enumerate(jobs) if index % size == rank]


def prepare_features(jobs: Sequence[Job], out: Path, settings: Settings) -> dict[str, str]:
    """Extract what the runnable jobs need, into the shared cache. Returns encoder -> the
    error that stopped its extraction (its jobs then fail with it)."""
    rank, size = settings.rank, settings.size
    errors: dict[str, str] = {}
    runnable = [job for job in jobs if not job.reason and job.data is not None]
    encoders = list(dict.fromkeys(job.encoder for job in runnable))
    for index, encoder in enumerate(encoders):
        mine = [j for j in runnable if j.encoder == encoder]
        slides = sorted(
            {
                p.resolve()
                for j in mine
                if j.data and j.data.kind == "slides"
                for p in j.data.sources.values()
            }
        )
        images = sorted(
            {
                p.resolve()
                for j in mine
                if j.data and j.data.kind == "images"
                for p in j.data.sources.values()
            }
        )
        try:
            if slides:  # gpfm-extract splits the slides across the processes itself
                failed = extract_slides(
                    slides,
                    out / "features" / "slides",
                    encoder,
                    settings.weights,
                    random_init=settings.random_init,
                    progress=settings.progress,
                    coords=settings.coords,
                )
                if failed:
                    errors[encoder] = "feature extraction failed: " + "; ".join(failed[:3])
            if images and index % size == rank:
                encode_image_files(
                    images,
                    out / "features" / "images" / f"{encoder_name(encoder)}.h5",
                    encoder,
                    settings.weights,
                    random_init=settings.random_init,
                    progress=settings.progress,
                )
        except Exception as error:  # one encoder's failure fails its jobs only
            logger.error("%s: feature extraction failed: %s", encoder, error)
            errors[encoder] = f"feature extraction failed: {type(error).__name__}: {error}"
    return errors


def _data_root(job: Job, out: Path, settings: Settings) -> Path:
    """The gpfm-bench data root of ``job``, with its features in place."""
    data = job.data
    assert data is not None
    if data.kind == "features":
        return data.root
    root = prepared_root(out, job.spec, data)
    if data.kind == "slides":
        missing = link_slide_features(root, out / "features" / "slides", job.name, data)
        if missing:
            raise TaskDataMissingError(
                f"{len(missing)} slides have no features ({missing[:5]}); see "
                f"{out / 'features' / 'slides' / 'manifest.jsonl'}"
            )
    else:
        cache = out / "features" / "images" / f"{job.name}.h5"
        features = encode_image_files(
            list(data.sources.values()),
            cache,
            job.encoder,
            settings.weights,
            random_init=settings.random_init,
        )
        write_image_features(root, job.spec, job.name, data, features)
    return root


def run_job(
    job: Job, out: Path, settings: Settings, extraction_error: str | None
) -> dict[str, Any]:
    """Run one job and write its record (never raises for the job's own failure)."""
    start = time.perf_counter()
    if job.reason:
        status = "not_available" if job.data is not None else "skipped"
        return _write_record(out, job, status, job.reason, 0.0, settings.rank)
    if extraction_error:
        return _write_record(out, job, "failed", extraction_error, 0.0, settings.rank)
    steps = ["features", "run", "record"]
    bar = tqdm(total=len(steps), desc=job.label, leave=False, disable=not settings.progress)
    try:
        root = _data_root(job, out, settings)
        bar.update(1)
        result = run_task(
            job.spec,
            job.name,
            root,
            out / "results",
            protocol=job.protocol,
            overrides=(settings.overrides or {}).get(job.spec.type),
        )
        bar.update(1)
        status, reason = result.status, result.reason
    except (BenchError, TaskDataMissingError) as error:
        status, reason = "failed", f"{type(error).__name__}: {error}"
    except Exception as error:  # a job's crash is recorded, the others go on
        logger.exception("%s failed", job.label)
        status, reason = "failed", f"{type(error).__name__}: {error}"
    finally:
        bar.update(len(steps) - bar.n)
        bar.close()
    return _write_record(out, job, status, reason, time.perf_counter() - start, settings.rank)


def evaluate(
    encoders: Sequence[str],
    tasks: str | Sequence[TaskSpec],
    data_root: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    weights: Mapping[str, str] | None = None,
    task_folders: Sequence[str | Path] = (),
    protocol: str | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    random_init: bool = False,
    progress: bool = True,
    report: bool = True,
    coords: str | os.PathLike[str] | None = None,
    echo: Callable[[str], None] = print,
) -> tuple[list[dict[str, Any]], dict[str, Leaderboard]]:
    """Run every (encoder, task) job (see the module docstring).

    Args:
        encoders: zoo names or exported encoder folders.
        tasks: ``all``, a type, comma-separated names, or specs.
        data_root: ``<data_root>/<task>/`` per task (``gpfm.apps.evaluate.data``).
        out: results, features, records and report.
        weights: encoder name -> weights file, folder or ``hf-hub:`` id.
        task_folders: folders of the user's task spec files.
        protocol: ``gpfm`` or ``ours`` for every task (default: gpfm for the paper's tasks).
        overrides: task type -> spec overrides, e.g. ``{"vqa": {"head": {"options": {...}}}}``.
        random_init: zoo encoders without weights get seeded random ones (tests, demos).
        progress: progress bars (one over jobs, one per job).
        report: write ``<out>/report`` (HTML + Markdown) at the end.
        coords: a ``gpfm-slide tile`` coords folder to use instead of tiling the slides again.
        echo: where the plan and the summary are printed.

    Returns:
        (the job records of this run, of all processes; protocol -> leaderboard); other
        processes than 0 get their own records and no leaderboard.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    specs = select_tasks(tasks, task_folders) if isinstance(tasks, str) else list(tasks)
    jobs = plan(encoders, specs, data_root, protocol)
    rank, size = process_share()
    settings = Settings(
        dict(weights or {}),
        random_init,
        overrides,
        progress,
        Path(coords) if coords else None,
        rank,
        size,
    )
    barrier = _FileBarrier(out / ".processes", rank, size)
    if rank == 0:
        echo(
            f"{len(jobs)} jobs ({len(encoders)} encoders x {len(specs)} tasks), {size} process(es):"
        )
        for line in describe(jobs, out):
            echo(f"  {line}")
    errors = prepare_features(jobs, out, settings)
    barrier()
    records = []
    with _alone():
        for job in tqdm(_mine(jobs, rank, size), desc="jobs", unit="job", disable=not progress):
            records.append(run_job(job, out, settings, errors.get(job.encoder)))
    barrier()
    if rank != 0:
        return records, {}
    wanted = {(j.protocol, j.name, j.spec.name) for j in jobs}
    records = [r for r in read_records(out) if (r["protocol"], r["encoder"], r["task"]) in wanted]
    return records, build_report(out, protocol, report=report)


def build_report(
    out: str | os.PathLike[str], protocol: str | None = None, *, report: bool = True
) -> dict[str, Leaderboard]:
    """The leaderboard of each protocol with results under ``<out>/results``, and its report
    (``<out>/report``; ``<out>/report/<protocol>`` when there are several protocols)."""
    out = Path(out)
    found = sorted({p.parents[2].name for p in (out / "results").glob("*/*/*/results.json")})
    protocols = [protocol] if protocol else found
    boards = {}
    for name in protocols:
        if not any((out / "results" / name).glob("*/*/results.json")):
            continue
        boards[name] = leaderboard(out / "results", protocol=name)
        if report:
            folder = out / "report" if len(protocols) == 1 else out / "report" / name
            write_report(out / "results", folder, protocol=name)
    return boards


def scores_text(board: Leaderboard) -> str:
    """Each task's primary metric per model (models in leaderboard order), as a text table."""
    models = board.models
    header = ["task", "metric", *models]
    rows = [header]
    for task, scores in board.scores.items():
        metric = board.tasks.get(task, {}).get("metric", "")
        rows.append([task, metric, *(f"{scores.get(m, math.nan):.3f}" for m in models)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows
    )


def summary_lines(records: Sequence[Mapping[str, Any]]) -> list[str]:
    """The count per status, and each job that did not finish with its reason."""
    counts = {s: sum(r["status"] == s for r in records) for s in STATUSES}
    lines = [", ".join(f"{n} {s}" for s, n in counts.items() if n)]
    for record in records:
        if record["status"] != "done":
            reason = str(record["reason"]).splitlines()[0][:200]
            lines.append(f"{record['status']}: {record['encoder']} / {record['task']}: {reason}")
    return lines


__all__ = [
    "Job",
    "Settings",
    "build_report",
    "describe",
    "evaluate",
    "plan",
    "prepare_features",
    "process_share",
    "read_records",
    "run_job",
    "scores_text",
    "select_tasks",
    "summary_lines",
]
