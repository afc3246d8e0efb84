"""Task specs: one TOML file per benchmark task, read into a checked, frozen ``TaskSpec``.

A spec says what a task is (name, type, panel), where its data come from (dataset, source), how
its labels read (column, classes), how it is split (official split, k-fold grouped by patient
and stratified, or train/val/test ratios), which head and settings run it, and what it reports
(metrics, the primary one). ``docs/bench.md`` lists every field. Errors name the file, the field
and what to do.
"""

from __future__ import annotations

import difflib
import json
import tomllib
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal, get_args

from gpfm.bench.errors import SpecError
from gpfm.heads import TrainConfig

TaskType = Literal[
    "slide_classification",
    "survival",
    "roi_classification",
    "roi_retrieval",
    "vqa",
    "report_generation",
]
TASK_TYPES: tuple[str, ...] = get_args(TaskType)
SPLIT_KINDS = ("official", "kfold", "ratio")

# Metrics each type can report, the primary first (what ranks models by default).
TYPE_METRICS: dict[str, tuple[str, ...]] = {
    "slide_classification": ("auc", "balanced_accuracy", "macro_f1"),
    "survival": ("c_index",),
    "roi_classification": ("balanced_accuracy", "macro_f1", "macro_auc"),
    "roi_retrieval": ("acc@1", "acc@3", "acc@5", "mvacc@5", "map@5"),
    "vqa": ("accuracy",),
    "report_generation": ("bleu_1", "bleu_2", "bleu_3", "bleu_4", "meteor", "rouge_l"),
}


@dataclass(frozen=True)
class DatasetSpec:
    """Where a task's data come from.

    Attributes:
        name: the dataset's name.
        public: whether anyone can obtain it.
        source: where a user obtains it (a URL, or who to ask).
        labels_file: the labels CSV under the task's data root.
    """

    name: str
    public: bool = True
    source: str = ""
    labels_file: str = "labels.csv"


@dataclass(frozen=True)
class LabelSpec:
    """How the labels file reads.

    Attributes:
        column: the label column (classification) or answer/report column (language tasks).
        classes: class names in index order; empty: the sorted values found in the file.
        time_column, event_column: survival only: follow-up time (months) and 1 = event seen.
        unit: ``slide`` (one bag per slide) or ``patient`` (a patient's slides in one bag);
            ``roi`` for ROI tasks.
    """

    column: str = "label"
    classes: tuple[str, ...] = ()
    time_column: str = "time"
    event_column: str = "event"
    unit: Literal["slide", "patient", "roi"] = "slide"


@dataclass(frozen=True)
class SplitSpec:
    """How rows are split into training, validation and test.

    Attributes:
        kind: ``official`` (a ``split`` column: train / val / test; no val: one is carved from
            train), ``kfold`` (``folds`` folds grouped by patient and stratified; each fold's
            validation carved from its training part) or ``ratio`` (``ratios`` of patients).
        folds: number of folds (``kfold``).
        ratios: (train, val, test) fractions of patients (``ratio``), summing to 1.
        validation_fraction: the share of training patients carved out as validation where a
            split has none.
        seeds: one run per seed (splits of ``ratio``, model initialisation, sampling).
    """

    kind: Literal["official", "kfold", "ratio"] = "official"
    folds: int = 5
    ratios: tuple[float, float, float] = (0.7, 0.1, 0.2)
    validation_fraction: float = 0.2
    seeds: tuple[int, ...] = (0,)


@dataclass(frozen=True)
class HeadSpec:
    """The head that measures an encoder on this task, and its settings.

    Attributes:
        name: ``abmil`` (MIL, any of gpfm-heads' ``make_mil`` names), ``linear`` (linear probe),
            ``knn`` (kNN probe), ``retrieval``, or ``language`` (VQA / report heads).
        options: passed to the head's constructor or fit function.
        train: ``TrainConfig`` settings (MIL); left out: the protocol's defaults.
    """

    name: str = "abmil"
    options: Mapping[str, Any] = field(default_factory=dict)
    train: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class MetricSpec:
    """What a task reports.

    Attributes:
        names: metrics computed on the test data.
        primary: the metric that ranks models.
        higher_is_better: direction of the primary metric.
        bootstrap: bootstrap resamples for the confidence intervals of one evaluation (0: none).
        confidence: coverage of the intervals.
    """

    names: tuple[str, ...]
    primary: str
    higher_is_better: bool = True
    bootstrap: int = 1000
    confidence: float = 0.95


@dataclass(frozen=True)
class TaskSpec:
    """One benchmark task (see the module docstring); ``path`` is the file it was read from."""

    name: str
    type: TaskType
    dataset: DatasetSpec
    label: LabelSpec
    split: SplitSpec
    head: HeadSpec
    metrics: MetricSpec
    panel: str = "other"
    description: str = ""
    path: Path | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON/TOML-ready dict of every field (tuples as lists, without ``path``)."""
        data = json.loads(json.dumps(asdict(self), default=str))
        data.pop("path", None)
        return data

    def with_overrides(self, overrides: Mapping[str, Any] | None) -> TaskSpec:
        """A copy with ``{"section": {"field": value}}`` (or top-level fields) replaced, checked
        as a spec file is (e.g. ``{"head": {"train": {"epochs": 5}}}``)."""
        if not overrides:
            return self
        data = self.to_dict()
        for key, value in overrides.items():
            if isinstance(value, Mapping) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        return parse_spec(data, source=f"{self.path or self.name} (with overrides)", path=self.path)


_SECTIONS: dict[str, type] = {
    "dataset": DatasetSpec,
    "label": LabelSpec,
    "split": SplitSpec,
    "head": HeadSpec,
    "metrics": MetricSpec,
}
_TOP = {"name", "type", "panel", "description", *_SECTIONS}


def _unknown(source: str, where: str, key: str, allowed: set[str]) -> SpecError:
    close = difflib.get_close_matches(key, sorted(allowed), n=1)
    hint = f"; did you mean `{where}{close[0]}`?" if close else f"; allowed: {sorted(allowed)}"
    return SpecError(f"{source}: unknown field `{where}{key}`{hint}")


def _section(source: str, name: str, raw: Any, defaults: dict[str, Any]) -> Any:
    cls = _SECTIONS[name]
    if not isinstance(raw, Mapping):
        raise SpecError(f"{source}: `{name}` must be a table ([{name}]), got {type(raw).__name__}")
    allowed = {f.name for f in fields(cls)}
    for key in raw:
        if key not in allowed:
            raise _unknown(source, f"{name}.", key, allowed)
    values = {**defaults, **raw}
    for f in fields(cls):
        if f.name not in values:
            continue
        value = values[f.name]
        if isinstance(value, list):
            values[f.name] = tuple(value)
        elif isinstance(value, Mapping):
            values[f.name] = dict(value)
    try:
        return cls(**values)
    except TypeError as error:
        missing = str(error).split("argument")[-1].strip(": ")
        raise SpecError(f"{source}: [{name}] lacks required field(s) {missing}") from error


def _check(source: str, ok: bool, field_name: str, message: str) -> None:
    if not ok:
        raise SpecError(f"{source}: `{field_name}` {message}")


def parse_spec(
    data: Mapping[str, Any], *, source: str = "<spec>", path: Path | None = None
) -> TaskSpec:
    """Check a spec read from TOML (or built in Python) and return it as a ``TaskSpec``.

    Raises:
        SpecError: naming ``source``, the field and what to do.
    """
    for key in data:
        if key not in _TOP:
            raise _unknown(source, "", key, _TOP)
    for key in ("name", "type"):
        _check(source, isinstance(data.get(key), str) and bool(data.get(key)), key, "is required")
    task_type = data["type"]
    _check(source, task_type in TASK_TYPES, "type", f"must be one of {list(TASK_TYPES)}")
    metric_names = TYPE_METRICS[task_type]
    unit = {"survival": "patient", "roi_classification": "roi", "roi_retrieval": "roi"}
    defaults: dict[str, dict[str, Any]] = {
        "dataset": {"name": data["name"]},
        "label": {"unit": unit.get(task_type, "slide")},
        "split": {"kind": "kfold"} if task_type == "survival" else {},
        "head": {"name": _DEFAULT_HEADS[task_type]},
        "metrics": {"names": metric_names, "primary": metric_names[0]},
    }
    sections = {
        name: _section(source, name, data.get(name, {}), defaults[name]) for name in _SECTIONS
    }
    split: SplitSpec = sections["split"]
    metrics: MetricSpec = sections["metrics"]
    label: LabelSpec = sections["label"]
    _check(source, split.kind in SPLIT_KINDS, "split.kind", f"must be one of {list(SPLIT_KINDS)}")
    _check(source, split.folds >= 2, "split.folds", "must be 2 or more")
    _check(
        source,
        len(split.ratios) == 3 and abs(sum(split.ratios) - 1) < 1e-6 and min(split.ratios) >= 0,
        "split.ratios",
        "must be three fractions (train, val, test) >= 0 that sum to 1",
    )
    _check(
        source,
        0 < split.validation_fraction <= 0.5,
        "split.validation_fraction",
        "must be in (0, 0.5]",
    )
    _check(source, len(split.seeds) >= 1, "split.seeds", "must list at least one seed")
    _check(source, label.unit in ("slide", "patient", "roi"), "label.unit", "is slide/patient/roi")
    unknown = [m for m in metrics.names if m not in metric_names]
    _check(source, not unknown, "metrics.names", f"has {unknown}; {task_type} has {metric_names}")
    _check(source, metrics.primary in metrics.names, "metrics.primary", "must be in names")
    _check(source, metrics.bootstrap >= 0, "metrics.bootstrap", "must be >= 0")
    _check(source, 0 < metrics.confidence < 1, "metrics.confidence", "must be in (0, 1)")
    allowed_train = {f.name for f in fields(TrainConfig)} - {"task", "protocol", "seed"}
    for key in sections["head"].train:
        if key not in allowed_train:
            raise _unknown(source, "head.train.", key, allowed_train)
    for key in ("panel", "description"):
        _check(source, isinstance(data.get(key, ""), str), key, "must be a string")
    return TaskSpec(
        name=data["name"],
        type=task_type,
        panel=data.get("panel", "other"),
        description=data.get("description", ""),
        path=path,
        **sections,
    )


_DEFAULT_HEADS = {
    "slide_classification": "abmil",
    "survival": "abmil",
    "roi_classification": "linear",
    "roi_retrieval": "retrieval",
    "vqa": "language",
    "report_generation": "language",
}


def load_task(path: str | Path) -> TaskSpec:
    """Read and check one spec file (TOML).

    Raises:
        SpecError: the file is missing, not TOML, or a field is wrong (named in the message).
    """
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise SpecError(f"{path}: spec file not found; check the path") from error
    except tomllib.TOMLDecodeError as error:
        raise SpecError(f"{path}: not valid TOML ({error}); fix the line it names") from error
    return parse_spec(data, source=str(path), path=path)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        inner = ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{" + inner + "}" if inner else "{}"
    raise SpecError(f"cannot write {value!r} ({type(value).__name__}) to a spec file")


def spec_to_toml(spec: TaskSpec | Mapping[str, Any]) -> str:
    """The TOML text of a spec (strings, numbers, booleans, lists and inline tables)."""
    data = spec.to_dict() if isinstance(spec, TaskSpec) else dict(spec)
    lines = [f"{key} = {_toml_value(value)}" for key, value in data.items() if key not in _SECTIONS]
    for section in _SECTIONS:
        if section in data:
            lines += ["", f"[{section}]"]
            lines += [f"{k} = {_toml_value(v)}" for k, v in data[section].items()]
    return "\n".join(lines) + "\n"


def write_spec(spec: TaskSpec | Mapping[str, Any], path: str | Path) -> Path:
    """Write a spec as TOML (checked first) and return its path."""
    text = spec_to_toml(spec)
    parse_spec(tomllib.loads(text), source=str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


__all__ = [
    "SPLIT_KINDS",
    "TASK_TYPES",
    "TYPE_METRICS",
    "DatasetSpec",
    "HeadSpec",
    "LabelSpec",
    "MetricSpec",
    "SplitSpec",
    "TaskSpec",
    "TaskType",
    "load_task",
    "parse_spec",
    "spec_to_toml",
    "write_spec",
]
