"""A task's data under its ``data_root``: the labels file, the feature files, and their checks.

Layouts (``docs/bench.md`` has them with examples):

- slide tasks (slide classification, survival, VQA, report generation): ``labels.csv`` with
  ``slide_id``, ``patient_id`` and the label column (survival: ``time`` in months and ``event``,
  1 = event observed; VQA: ``question`` and ``answer``; reports: ``report``), optionally
  ``split`` (train / val / test), plus one feature file per slide,
  ``features/<encoder>/<slide_id>.h5`` (gpfm-heads' format);
- ROI tasks (classification, retrieval): ``labels.csv`` with ``roi_id`` and the label column,
  optionally ``patient_id`` and ``split``, plus one feature file per encoder,
  ``features/<encoder>.h5`` with datasets ``features`` (N, D) and ``roi_id`` (N,) strings
  (``write_roi_features``).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from gpfm.bench.errors import DataMissingError, LabelFileError
from gpfm.bench.spec import TaskSpec
from gpfm.heads.features import atomic_path

SPLIT_NAMES = ("train", "val", "test")
ROI_TYPES = ("roi_classification", "roi_retrieval")
LANGUAGE_COLUMNS = {"vqa": ("question", "answer"), "report_generation": ("report",)}


def is_roi_task(spec: TaskSpec) -> bool:
    """Whether the task works on ROI features (one file per encoder) rather than slides."""
    return spec.type in ROI_TYPES


def required_columns(spec: TaskSpec) -> list[str]:
    """The columns the task's labels file must have."""
    if is_roi_task(spec):
        columns = ["roi_id", spec.label.column]
    else:
        columns = ["slide_id", "patient_id"]
        if spec.type == "survival":
            columns += [spec.label.time_column, spec.label.event_column]
        elif spec.type in LANGUAGE_COLUMNS:
            columns += list(LANGUAGE_COLUMNS[spec.type])
        else:
            columns.append(spec.label.column)
    if spec.split.kind == "official":
        columns.append("split")
    return columns


@dataclass
class Cohort:
    """The rows of a labels file, checked, one unit (slide, patient or ROI) per row.

    Attributes:
        ids: (N,) unit ids: slide ids, patient ids (survival by patient) or ROI ids.
        members: the slide ids in each unit (one per unit, except patients with several).
        patients: (N,) patient id of each unit (the unit id when the file has none).
        split: (N,) ``train``/``val``/``test`` from the file, or None.
        targets: ``label`` (class index) or ``time`` and ``event``; language tasks: the
            texts to produce, ``answer`` (VQA) or ``report``, as object arrays.
        classes: class names in index order (classification).
        source: the labels file.
        texts: inputs of language tasks: ``question`` (VQA), an object array.
    """

    ids: list[str]
    members: list[list[str]]
    patients: np.ndarray
    split: np.ndarray | None
    targets: dict[str, np.ndarray]
    classes: tuple[str, ...] = ()
    source: Path = field(default_factory=Path)
    texts: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)


def _read_rows(path: Path, columns: Sequence[str]) -> list[dict[str, str]]:
    if not path.exists():
        raise LabelFileError(
            f"{path}: labels file not found; it needs the columns {list(columns)} "
            "(docs/bench.md, 'Data layout')"
        )
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [c for c in columns if c not in header]
        if missing:
            raise LabelFileError(
                f"{path}: missing column(s) {missing} (it has {header}); add them, or change "
                "the spec's [label] column names or its split.kind"
            )
        rows = list(reader)
    if not rows:
        raise LabelFileError(f"{path}: no rows; add one row per slide or ROI")
    for number, row in enumerate(rows, start=2):
        empty = [c for c in columns if not (row.get(c) or "").strip()]
        if empty:
            raise LabelFileError(f"{path}, line {number}: empty {empty}; fill them or drop the row")
    return rows


def _class_indices(
    path: Path, rows: list[dict[str, str]], column: str, classes: tuple[str, ...]
) -> tuple[np.ndarray, tuple[str, ...]]:
    values = [row[column].strip() for row in rows]
    classes = classes or tuple(sorted(set(values)))
    lookup = {name: index for index, name in enumerate(classes)}
    for number, value in enumerate(values, start=2):
        if value not in lookup:
            raise LabelFileError(
                f"{path}, line {number}: `{column}` is {value!r}, not one of the spec's classes "
                f"{list(classes)}; fix the value or the spec's [label] classes"
            )
    if len(set(values)) < 2:
        raise LabelFileError(f"{path}: `{column}` has a single class {values[0]!r}; need two")
    return np.array([lookup[v] for v in values], dtype=np.int64), classes


def _number(path: Path, number: int, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError as error:
        raise LabelFileError(
            f"{path}, line {number}: `{column}` is {text!r}, not a number"
        ) from error
    if not math.isfinite(value) or value < 0:
        raise LabelFileError(f"{path}, line {number}: `{column}` is {value}; must be >= 0")
    return value


def _survival_targets(
    path: Path, rows: list[dict[str, str]], spec: TaskSpec
) -> dict[str, np.ndarray]:
    time_column, event_column = spec.label.time_column, spec.label.event_column
    times, events = [], []
    for number, row in enumerate(rows, start=2):
        times.append(_number(path, number, time_column, row[time_column]))
        event = row[event_column].strip()
        if event not in ("0", "1", "0.0", "1.0"):
            raise LabelFileError(
                f"{path}, line {number}: `{event_column}` is {event!r}; use 1 (event observed) "
                "or 0 (censored)"
            )
        events.append(int(float(event)))
    return {"time": np.array(times), "event": np.array(events, dtype=np.int64)}


def _group_by_patient(path: Path, rows: list[dict[str, str]], spec: TaskSpec) -> list[list[int]]:
    """Row numbers of each patient, in order of first appearance; a patient's rows must agree."""
    groups: dict[str, list[int]] = {}
    for index, row in enumerate(rows):
        groups.setdefault(row["patient_id"].strip(), []).append(index)
    checked = [spec.label.time_column, spec.label.event_column, "split"]
    for patient, members in groups.items():
        for column in checked:
            values = {rows[i].get(column) for i in members}
            if len(values) > 1:
                raise LabelFileError(
                    f"{path}: patient {patient!r} has different `{column}` values {values} on "
                    "its slides; one patient has one value"
                )
    return list(groups.values())


def read_cohort(spec: TaskSpec, data_root: str | Path) -> Cohort:
    """Read and check the task's labels file under ``data_root``.

    Raises:
        LabelFileError: naming the file, the line and column, and what to do.
    """
    path = Path(data_root) / spec.dataset.labels_file
    rows = _read_rows(path, required_columns(spec))
    id_column = "roi_id" if is_roi_task(spec) else "slide_id"
    ids = [row[id_column].strip() for row in rows]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise LabelFileError(f"{path}: `{id_column}` repeats {duplicates[:5]}; ids must be unique")
    if spec.split.kind == "official":
        for number, row in enumerate(rows, start=2):
            if row["split"].strip() not in SPLIT_NAMES:
                raise LabelFileError(
                    f"{path}, line {number}: `split` is {row['split']!r}; use train, val or test"
                )
    patient_of = [(row.get("patient_id") or "").strip() or ids[i] for i, row in enumerate(rows)]
    targets: dict[str, np.ndarray] = {}
    texts: dict[str, np.ndarray] = {}
    classes: tuple[str, ...] = ()
    if spec.type == "survival":
        targets = _survival_targets(path, rows, spec)
    elif spec.type in LANGUAGE_COLUMNS:
        *inputs, output = LANGUAGE_COLUMNS[spec.type]
        texts = {c: np.array([row[c].strip() for row in rows], dtype=object) for c in inputs}
        targets = {output: np.array([row[output].strip() for row in rows], dtype=object)}
    else:
        targets["label"], classes = _class_indices(
            path, rows, spec.label.column, spec.label.classes
        )
    split = (
        np.array([row["split"].strip() for row in rows]) if spec.split.kind == "official" else None
    )
    if spec.label.unit != "patient":
        members = [[i] for i in ids]
        return Cohort(ids, members, np.array(patient_of), split, targets, classes, path, texts)
    groups = _group_by_patient(path, rows, spec)
    first = np.array([members[0] for members in groups])
    return Cohort(
        ids=[patient_of[i] for i in first],
        members=[[ids[i] for i in members] for members in groups],
        patients=np.array([patient_of[i] for i in first]),
        split=None if split is None else split[first],
        targets={key: values[first] for key, values in targets.items()},
        classes=classes,
        source=path,
        texts={key: values[first] for key, values in texts.items()},
    )


def write_labels(path: str | Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """Write a labels file (CSV, the columns of the first row) atomically; folders created."""
    path = Path(path)
    with atomic_path(path) as temporary, open(temporary, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def slide_feature_path(data_root: str | Path, encoder: str, slide_id: str) -> Path:
    """``<data_root>/features/<encoder>/<slide_id>.h5``."""
    return Path(data_root) / "features" / encoder / f"{slide_id}.h5"


def roi_feature_path(data_root: str | Path, encoder: str) -> Path:
    """``<data_root>/features/<encoder>.h5``."""
    return Path(data_root) / "features" / f"{encoder}.h5"


def write_roi_features(
    path: str | Path, roi_ids: Sequence[str], features: np.ndarray, *, encoder: str
) -> Path:
    """Write an ROI feature file (``features`` (N, D), ``roi_id`` (N,)) atomically.

    Args:
        path: the ``.h5`` file, e.g. ``roi_feature_path(data_root, encoder)``.
        roi_ids: (N,) ids matching the labels file's ``roi_id``.
        features: (N, D) float features, one row per ROI.
        encoder: recorded in the ``encoder`` attribute.
    """
    features = np.asarray(features)
    if features.ndim != 2 or len(features) != len(roi_ids):
        raise LabelFileError(
            f"{path}: features must be (N, D) with N = {len(roi_ids)} ROI ids, got {features.shape}"
        )
    with atomic_path(path) as temporary, h5py.File(temporary, "w") as h5:
        h5.create_dataset("features", data=features)
        h5.create_dataset("roi_id", data=np.array(list(roi_ids), dtype=h5py.string_dtype()))
        h5.attrs.update({"encoder": encoder, "embed_dim": int(features.shape[1])})
    return Path(path)


def read_roi_features(path: str | Path, roi_ids: Sequence[str]) -> np.ndarray:
    """The (len(roi_ids), D) float32 features of ``roi_ids``, in that order.

    Raises:
        DataMissingError: the file is missing or lacks some of the ids (the first 5 named).
    """
    path = Path(path)
    if not path.exists():
        raise DataMissingError(f"{path}: ROI feature file not found; extract features first")
    with h5py.File(path, "r") as h5:
        if "features" not in h5 or "roi_id" not in h5:
            raise DataMissingError(
                f"{path}: needs datasets `features` (N, D) and `roi_id` (N,); write it with "
                "gpfm.bench.data.write_roi_features"
            )
        stored = [v.decode() if isinstance(v, bytes) else str(v) for v in h5["roi_id"][()]]
        features = np.asarray(h5["features"][()], dtype=np.float32)
    row_of = {roi: row for row, roi in enumerate(stored)}
    missing = [roi for roi in roi_ids if roi not in row_of]
    if missing:
        raise DataMissingError(
            f"{path}: {len(missing)} ROI ids of the labels file have no features "
            f"({missing[:5]}); re-extract or drop them from the labels file"
        )
    return features[[row_of[roi] for roi in roi_ids]]


def check_task(spec: TaskSpec, data_root: str | Path, encoder: str | None = None) -> list[str]:
    """What is missing for ``spec`` under ``data_root``, in words (an empty list: ready).

    Checks the labels file (present, columns, values) and, for ``encoder`` (or every encoder
    found under ``features/`` when None), the feature files of every slide or ROI.
    """
    root = Path(data_root)
    if not root.is_dir():
        return [f"data root {root} does not exist; put the task's data there ({spec.name})"]
    try:
        cohort = read_cohort(spec, root)
    except LabelFileError as error:
        return [str(error)]
    features = root / "features"
    if encoder is not None:
        encoders = [encoder]
    elif is_roi_task(spec):
        encoders = sorted(p.stem for p in features.glob("*.h5"))
    else:
        encoders = sorted(p.name for p in features.glob("*") if p.is_dir())
    if not encoders:
        return [f"{features}: no features of any encoder; extract them first (docs/bench.md)"]
    problems = []
    for name in encoders:
        if is_roi_task(spec):
            try:
                read_roi_features(roi_feature_path(root, name), cohort.ids)
            except DataMissingError as error:
                problems.append(str(error))
            continue
        slides = [s for members in cohort.members for s in members]
        missing = [s for s in slides if not slide_feature_path(root, name, s).exists()]
        if missing:
            problems.append(
                f"{features / name}: {len(missing)} of {len(slides)} slides have no feature file "
                f"({missing[:5]}); extract them or drop them from {cohort.source.name}"
            )
    return problems


def require_task(spec: TaskSpec, data_root: str | Path, encoder: str) -> None:
    """Raise ``DataMissingError`` listing ``check_task``'s problems, if any."""
    problems = check_task(spec, data_root, encoder)
    if problems:
        raise DataMissingError(f"task {spec.name!r} is not ready:\n- " + "\n- ".join(problems))


__all__ = [
    "Cohort",
    "check_task",
    "is_roi_task",
    "read_cohort",
    "read_roi_features",
    "require_task",
    "required_columns",
    "roi_feature_path",
    "slide_feature_path",
    "write_labels",
    "write_roi_features",
]
