"""A task's raw data under ``--data-root``, and the features each encoder needs, made once.

``<data-root>/<task>/`` holds the task's ``labels.csv`` (gpfm-bench's layout) and one of:

- ``features/``: features already extracted (gpfm-bench's layout), used as they are;
- ``slides/``: slide files named ``<slide_id>.<ext>`` (slide classification, survival, VQA,
  report generation), extracted through gpfm-extract;
- ``images/``: image files named ``<id>.<ext>`` (ROI classification and retrieval: ``roi_id``;
  VQA or reports on images: ``slide_id``), encoded with the encoder's own transform.

Extracted features are cached under ``<out>/features`` and shared between the tasks that use
the same slides or images: ``slides/features/<encoder>/<slide_id>.h5`` (gpfm-extract's layout,
with its manifest and resume) and ``images/<encoder>.h5`` (``features`` (N, D) and ``image``,
the resolved path of each row). Each (task, encoder) then gets a data root in gpfm-bench's
layout under ``<out>/tasks/<task>/``: the labels file and links to (or small files of) those
features.
"""

from __future__ import annotations

import csv
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from gpfm.backbone import encode_images, load_encoder
from gpfm.backbone.images import IMAGE_SUFFIXES
from gpfm.bench.data import (
    is_roi_task,
    roi_feature_path,
    slide_feature_path,
    write_roi_features,
)
from gpfm.bench.spec import TaskSpec
from gpfm.heads import write_features
from gpfm.heads.features import atomic_path

logger = logging.getLogger(__name__)


class EvaluateError(Exception):
    """Root of gpfm-evaluate's errors; the message names the file and what to do."""


class TaskDataMissingError(EvaluateError):
    """A task's data are not there (the job is skipped, with this reason)."""


@dataclass
class TaskData:
    """Where one task's data are.

    Attributes:
        root: ``<data-root>/<task>``.
        labels: its labels file.
        ids: the slide or ROI ids of the labels file, in order.
        sources: id -> slide or image file (empty when the features are given).
        kind: ``features`` (given), ``slides`` or ``images``.
    """

    root: Path
    labels: Path
    ids: list[str]
    sources: dict[str, Path] = field(default_factory=dict)
    kind: str = "features"


def task_folder(data_root: str | os.PathLike[str], spec: TaskSpec) -> Path:
    """``<data-root>/<task name>``."""
    return Path(data_root) / spec.name


def _ids(labels: Path, column: str) -> list[str]:
    with open(labels, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        if column not in (reader.fieldnames or []):
            raise TaskDataMissingError(
                f"{labels}: no `{column}` column (docs/bench.md, 'Data layout')"
            )
        return [row[column].strip() for row in reader]


def _files_by_stem(folder: Path, suffixes: Sequence[str] | None) -> dict[str, Path]:
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and (suffixes is None or path.suffix.lower() in suffixes):
            files.setdefault(path.stem, path)
    return files


def find_task_data(data_root: str | os.PathLike[str], spec: TaskSpec) -> TaskData:
    """What ``<data-root>/<task>`` holds for ``spec``.

    Raises:
        TaskDataMissingError: no folder, no labels file, or neither features, slides nor images for
            every id (the first missing ids named).
    """
    root = task_folder(data_root, spec)
    labels = root / spec.dataset.labels_file
    if not labels.is_file():
        raise TaskDataMissingError(f"{labels}: not found; put the task's labels file there")
    ids = _ids(labels, "roi_id" if is_roi_task(spec) else "slide_id")
    for kind, suffixes in (("slides", None), ("images", IMAGE_SUFFIXES)):
        folder = root / kind
        if not folder.is_dir():
            continue
        found = _files_by_stem(folder, suffixes)
        missing = [i for i in ids if i not in found]
        if missing:
            raise TaskDataMissingError(
                f"{folder}: {len(missing)} of {len(ids)} ids of {labels.name} have no file "
                f"({missing[:5]}); add them or drop their rows"
            )
        return TaskData(root, labels, ids, {i: found[i] for i in ids}, kind)
    if (root / "features").is_dir():
        return TaskData(root, labels, ids)
    raise TaskDataMissingError(
        f"{root}: no slides/, images/ or features/ folder; put the task's data there"
    )


def encoder_name(encoder: str) -> str:
    """The name an encoder's features are filed under: ``encoder.json``'s name for an exported
    folder, else the zoo name as given."""
    folder = Path(encoder)
    config = folder / "encoder.json"
    if config.is_file():
        from gpfm.backbone import read_encoder_config

        return str(read_encoder_config(folder)["name"])
    return encoder


def extract_slides(
    slides: Sequence[Path],
    cache: Path,
    encoder: str,
    weights: Mapping[str, str],
    *,
    random_init: bool = False,
    progress: bool = False,
    coords: Path | None = None,
) -> list[str]:
    """Extract the slides' features with ``encoder`` into ``cache`` (gpfm-extract; what is
    there already is kept), tiled anew or from a ``coords`` folder. Returns the errors, one
    per failed slide."""
    from gpfm.apps.extract import extract

    summary = extract(
        sorted(set(slides)),
        cache,
        [encoder],
        dict(weights) or None,
        coords=coords,
        random_init=random_init,
        progress=progress,
    )
    errors = [f"{name}: {text}" for name, text in summary.encoder_errors.items()]
    errors += [
        f"{record.get('slide_id')}: {record.get('error')}"
        for record in summary.records
        if record.get("status") == "failed"
    ]
    return errors


def _read_image_cache(path: Path) -> tuple[list[str], np.ndarray | None]:
    if not path.exists():
        return [], None
    with h5py.File(path, "r") as h5:
        images = [v.decode() if isinstance(v, bytes) else str(v) for v in h5["image"][()]]
        return images, np.asarray(h5["features"][()], dtype=np.float32)


def encode_image_files(
    images: Sequence[Path],
    cache: Path,
    encoder: str,
    weights: Mapping[str, str],
    *,
    random_init: bool = False,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Features of ``images`` with ``encoder``, from the cache file ``cache`` (encoding and
    adding only those not in it). Returns resolved path -> (D,) float32 features."""
    known, stored = _read_image_cache(cache)
    wanted = sorted({str(Path(p).resolve()) for p in images})
    missing = [p for p in wanted if p not in set(known)]
    if missing:
        model = load_encoder(
            encoder, weights=weights.get(encoder_name(encoder)), random_init=random_init
        )
        new = encode_images(model, [Path(p) for p in missing], batch_size=32, progress=progress)
        known = known + missing
        parts = [new.numpy()] if stored is None else [stored, new.numpy()]
        stored = np.concatenate(parts).astype(np.float32)
        cache.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(cache) as temporary, h5py.File(temporary, "w") as h5:
            h5.create_dataset("features", data=stored)
            h5.create_dataset("image", data=np.array(known, dtype=h5py.string_dtype()))
            h5.attrs["encoder"] = encoder_name(encoder)
    assert stored is not None
    row = {path: index for index, path in enumerate(known)}
    return {path: stored[row[path]] for path in wanted}


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        if link.resolve() == target.resolve():
            return
        link.unlink()
    try:
        link.symlink_to(target.resolve())
    except OSError:  # no symlinks here (some file systems): copy
        shutil.copyfile(target, link)


def prepared_root(out: Path, spec: TaskSpec, data: TaskData) -> Path:
    """``<out>/tasks/<task>``, with the task's labels file copied in."""
    root = out / "tasks" / spec.name
    labels = root / spec.dataset.labels_file
    if not labels.exists() or labels.read_bytes() != data.labels.read_bytes():
        labels.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(labels) as temporary:
            shutil.copyfile(data.labels, temporary)
    return root


def link_slide_features(root: Path, cache: Path, name: str, data: TaskData) -> list[str]:
    """Link the cached slide features of ``name`` into ``root``; returns the ids without any."""
    missing = []
    for slide_id in data.ids:
        source = cache / "features" / name / f"{slide_id}.h5"
        if not source.exists():
            missing.append(slide_id)
            continue
        _link(source, slide_feature_path(root, name, slide_id))
    return missing


def write_image_features(
    root: Path, spec: TaskSpec, name: str, data: TaskData, features: Mapping[str, np.ndarray]
) -> None:
    """Write the images' features into ``root``: one ROI file (ROI tasks) or one single-tile
    feature file per image (language and slide tasks on images)."""
    rows = np.stack([features[str(data.sources[i].resolve())] for i in data.ids])
    if is_roi_task(spec):
        write_roi_features(roi_feature_path(root, name), data.ids, rows, encoder=name)
        return
    for slide_id, row in zip(data.ids, rows, strict=True):
        write_features(
            slide_feature_path(root, name, slide_id),
            row[None, :],
            np.zeros((1, 2), dtype=np.int64),
            encoder=name,
        )


__all__ = [
    "EvaluateError",
    "TaskData",
    "TaskDataMissingError",
    "encode_image_files",
    "encoder_name",
    "extract_slides",
    "find_task_data",
    "link_slide_features",
    "prepared_root",
    "task_folder",
    "write_image_features",
]
