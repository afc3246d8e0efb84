"""Language-task data: PathVQA-style and report-style tables, samples, batches.

A VQA table has the columns ``image_id``, ``question``, ``answer`` and optionally ``split``; a
report table ``slide_id``, ``report`` and optionally ``split``. Either comes from a CSV file, a
JSON-lines file, or a Hugging Face ``datasets`` dataset (anything iterable of row dicts).

Each sample's visual input is a tensor/array, (N, D) rows (a slide's tile features, or an ROI's
CLS + patch tokens) or (D,), or the path of a feature file (``features`` dataset, read when the
sample is loaded).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from gpfm.heads.errors import InvalidInputError
from gpfm.heads.features import read_bag

VQA_COLUMNS = ("image_id", "question", "answer")
REPORT_COLUMNS = ("slide_id", "report")
Features = Tensor | np.ndarray | str | Path


def _rows(source: str | Path | Iterable[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    if isinstance(source, str | Path):
        path = Path(source)
        if not path.is_file():
            raise InvalidInputError(f"no table file {path}")
        if path.suffix == ".csv":
            with path.open(newline="") as handle:
                return [dict(row) for row in csv.DictReader(handle)], str(path)
        if path.suffix in (".jsonl", ".json"):
            lines = path.read_text().splitlines()
            return [json.loads(line) for line in lines if line.strip()], str(path)
        raise InvalidInputError(f"{path}: a table must be .csv or .jsonl (JSON lines)")
    return [dict(row) for row in source], type(source).__name__


def _read(
    source: str | Path | Iterable[Mapping[str, Any]], columns: Sequence[str], split: str | None
) -> list[dict[str, Any]]:
    rows, name = _rows(source)
    for number, row in enumerate(rows):
        missing = [column for column in columns if column not in row]
        if missing:
            raise InvalidInputError(
                f"{name}, row {number}: no column {missing}; a table needs {list(columns)} "
                "(and optionally split)"
            )
    if split is not None:
        rows = [row for row in rows if str(row.get("split", "")) == split]
    return [{**row, **{column: str(row[column]) for column in columns}} for row in rows]


def read_vqa(
    source: str | Path | Iterable[Mapping[str, Any]], split: str | None = None
) -> list[dict[str, Any]]:
    """PathVQA-style rows (``image_id``, ``question``, ``answer``, ``split``), of one split."""
    return _read(source, VQA_COLUMNS, split)


def read_reports(
    source: str | Path | Iterable[Mapping[str, Any]], split: str | None = None
) -> list[dict[str, Any]]:
    """Report-style rows (``slide_id``, ``report``, ``split``), of one split."""
    return _read(source, REPORT_COLUMNS, split)


@dataclass
class LanguageSample:
    """One training or test sample: visual input, prompt, target text."""

    id: str
    features: Features
    prompt: str
    target: str


def _lookup(features: Mapping[str, Features] | str | Path, key: str) -> Features:
    if isinstance(features, str | Path):
        return Path(features) / f"{key}.h5"
    if key not in features:
        raise InvalidInputError(f"no features for {key!r}: the mapping has no such id")
    return features[key]


def vqa_samples(
    rows: Sequence[Mapping[str, Any]], features: Mapping[str, Features] | str | Path
) -> list[LanguageSample]:
    """Samples from ``read_vqa`` rows; ``features`` maps image ids to inputs, or is a folder
    of ``<image_id>.h5`` feature files."""
    return [
        LanguageSample(
            row["image_id"], _lookup(features, row["image_id"]), row["question"], row["answer"]
        )
        for row in rows
    ]


def report_samples(
    rows: Sequence[Mapping[str, Any]],
    features: Mapping[str, Features] | str | Path,
    prompt: str = "Write the pathology report of this slide.",
) -> list[LanguageSample]:
    """Samples from ``read_reports`` rows, each with the same instruction as prompt."""
    return [
        LanguageSample(row["slide_id"], _lookup(features, row["slide_id"]), prompt, row["report"])
        for row in rows
    ]


def load_features(features: Features) -> Tensor:
    """A sample's visual input as a float32 (N, D) tensor."""
    if isinstance(features, str | Path):
        features = read_bag(features)
    tensor = torch.as_tensor(np.asarray(features) if not isinstance(features, Tensor) else features)
    tensor = tensor.float()
    return tensor.unsqueeze(0) if tensor.dim() == 1 else tensor


class LanguageDataset(Dataset[dict[str, Any]]):
    """Samples as dataset items: ``features`` (N, D), ``prompt``, ``target``, ``id``."""

    def __init__(self, samples: Sequence[LanguageSample]) -> None:
        self.samples = list(samples)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        return {
            "id": sample.id,
            "features": load_features(sample.features),
            "prompt": sample.prompt,
            "target": sample.target,
        }


def collate_language(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Pad features to (B, N_max, D) with a (B, N_max) mask; keep texts as lists."""
    longest = max(item["features"].shape[0] for item in items)
    dim = items[0]["features"].shape[1]
    features = torch.zeros(len(items), longest, dim)
    mask = torch.zeros(len(items), longest, dtype=torch.bool)
    for index, item in enumerate(items):
        rows = item["features"].shape[0]
        features[index, :rows] = item["features"]
        mask[index, :rows] = True
    return {
        "features": features,
        "mask": mask,
        "prompts": [item["prompt"] for item in items],
        "targets": [item["target"] for item in items],
        "ids": [item["id"] for item in items],
    }
