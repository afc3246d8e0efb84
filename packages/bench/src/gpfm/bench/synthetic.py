"""A small synthetic benchmark: one task of each of the six types, with spec files, labels and
feature files in the documented data layout, and encoders of known quality.

Every slide, patient and ROI has a latent state (a class, or a log-hazard) that its tiles carry
along a few latent directions. Encoder ``e`` sees the latent signal scaled by its quality
``q_e`` (default ``good`` 1.0, ``fair`` 0.5, ``poor`` 0.15) under the same unit Gaussian noise,
through its own random rotation of the feature space, so a better encoder really scores higher:

- slide classification: 3 classes; a third of a slide's tiles carry a class direction;
- survival: per patient (1-2 slides), log-hazard 1.2 z, exponential times (months), about a
  third censored; every tile carries z;
- ROI classification and retrieval: 4 classes, ROI features = class mean + noise, 6 ROIs per
  patient;
- VQA and report generation: answers and reports that state the slide's class; their specs
  train the LLM for a few steps only (``language`` settings), enough to run the protocol.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gpfm.bench.data import roi_feature_path, slide_feature_path, write_roi_features
from gpfm.bench.spec import TaskSpec, load_task, write_spec
from gpfm.heads import write_features

DEFAULT_ENCODERS: Mapping[str, float] = {"good": 1.0, "fair": 0.5, "poor": 0.15}
SLIDE_CLASSES = ("benign", "in_situ", "invasive")
ROI_CLASSES = ("tumour", "stroma", "immune", "necrosis")
# Small enough for seconds per run on a CPU with SmolLM2-135M; the numbers are real, not good.
SYNTHETIC_LANGUAGE: Mapping[str, Any] = {
    "num_visual_tokens": 2,
    "lora_r": 4,
    "max_steps": 2,
    "batch_size": 8,
    "max_new_tokens": 8,
    "max_train": 16,
}


@dataclass(frozen=True)
class SyntheticBenchmark:
    """What ``make_synthetic_benchmark`` wrote.

    Attributes:
        tasks_dir: the folder of the six spec files (pass it as ``folders=[...]``).
        specs: the six specs, in type order.
        data_roots: task name -> its data folder.
        encoders: encoder name -> quality, best first.
    """

    tasks_dir: Path
    specs: tuple[TaskSpec, ...]
    data_roots: dict[str, Path]
    encoders: dict[str, float]


class _Encoders:
    """Turns latent tile signals (N, L) into each encoder's (N, D) features."""

    def __init__(self, qualities: Mapping[str, float], latent: int, dim: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.qualities = dict(qualities)
        self.rotations = {
            name: np.linalg.qr(rng.normal(size=(dim, dim)))[0][:latent] for name in qualities
        }
        self.rng, self.dim = rng, dim

    def features(self, signal: np.ndarray) -> dict[str, np.ndarray]:
        noise = self.rng.normal(size=(len(signal), self.dim))
        return {
            name: (q * signal @ self.rotations[name] + noise).astype(np.float32)
            for name, q in self.qualities.items()
        }


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def _write_slides(
    root: Path, encoders: _Encoders, signals: Sequence[np.ndarray], slide_ids: Sequence[str]
) -> None:
    for slide_id, signal in zip(slide_ids, signals, strict=True):
        coords = np.stack([np.arange(len(signal)) % 8, np.arange(len(signal)) // 8], 1) * 448
        for name, features in encoders.features(signal).items():
            write_features(
                slide_feature_path(root, name, slide_id),
                features,
                coords,
                encoder=name,
                mpp=0.5,
                patch_size=224,
                patch_size_level0=448,
            )


def _splits(rng: np.random.Generator, n: int, fractions: tuple[float, float, float]) -> list[str]:
    counts = np.round(np.array(fractions) * n).astype(int)
    names = ["train"] * counts[0] + ["val"] * counts[1]
    names += ["test"] * (n - len(names))
    return list(rng.permutation(names))


def _class_slides(
    rng: np.random.Generator, n_slides: int, tiles: tuple[int, int], latent: int
) -> tuple[list[int], list[np.ndarray]]:
    labels = list(rng.permutation(np.arange(n_slides) % len(SLIDE_CLASSES)))
    signals = []
    for label in labels:
        signal = np.zeros((int(rng.integers(*tiles)), latent))
        carriers = rng.random(len(signal)) < 1 / 3
        signal[carriers, label] = 2.5
        signals.append(signal)
    return labels, signals


def _spec(name: str, task_type: str, description: str, **sections: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": task_type,
        "panel": "synthetic",
        "description": description,
        "dataset": {
            "name": name,
            "public": True,
            "source": "generated by gpfm.bench.make_synthetic_benchmark",
        },
        **sections,
    }


def make_synthetic_benchmark(
    out: str | Path,
    *,
    encoders: Mapping[str, float] | None = None,
    n_slides: int = 36,
    n_patients_survival: int = 40,
    n_rois: int = 240,
    tiles: tuple[int, int] = (8, 20),
    dim: int = 16,
    epochs: int = 12,
    bootstrap: int = 200,
    seed: int = 0,
    language: Mapping[str, Any] | None = None,
) -> SyntheticBenchmark:
    """Write one small task of each type under ``out`` (``tasks/`` specs, ``data/<task>/``).

    Args:
        out: destination folder.
        encoders: encoder name -> quality (signal scale; noise is 1), default good/fair/poor.
        n_slides: slides of the slide classification, VQA and report tasks.
        n_patients_survival: patients of the survival task (a quarter have two slides).
        n_rois: ROIs of the ROI classification and retrieval tasks.
        tiles: (low, high) tiles per slide.
        dim: feature dimension D.
        epochs: MIL training epochs written into the specs (the paper's protocol runs 100).
        bootstrap: resamples for the ROI confidence intervals.
        seed: seed of everything generated.
        language: ``head.options`` of the VQA and report specs (``gpfm.bench.language.
            LanguageOptions``); default: ``SYNTHETIC_LANGUAGE``, a few training steps.
    """
    out = Path(out)
    qualities = dict(encoders or DEFAULT_ENCODERS)
    latent = 4
    rng = np.random.default_rng(seed)
    coder = _Encoders(qualities, latent, dim, seed + 1)
    data = out / "data"
    small_mil = {"hidden_dim": 32, "attention_dim": 16}
    train = {"epochs": epochs, "patience": epochs, "lr": 1e-3, "mixed_precision": "no"}
    specs = []

    # Slide classification: 3 classes, a third of the tiles carry the class direction.
    root = data / "synthetic-slide-classification"
    labels, signals = _class_slides(rng, n_slides, tiles, latent)
    ids = [f"slide-{i:03d}" for i in range(n_slides)]
    patients = [f"patient-{i // 2 if i < n_slides // 3 else i:03d}" for i in range(n_slides)]
    _write_slides(root, coder, signals, ids)
    # A split column too (the spec splits by ratio; set split.kind = "official" to use it).
    by_patient = dict(
        zip(sorted(set(patients)), _splits(rng, len(set(patients)), (0.6, 0.2, 0.2)), strict=True)
    )
    rows: list[dict[str, Any]] = [
        {"slide_id": s, "patient_id": p, "label": SLIDE_CLASSES[y], "split": by_patient[p]}
        for s, p, y in zip(ids, patients, labels, strict=True)
    ]
    _write_csv(root / "labels.csv", rows)
    specs.append(
        _spec(
            "synthetic-slide-classification",
            "slide_classification",
            "3 classes carried by a third of the tiles",
            label={"classes": list(SLIDE_CLASSES)},
            split={"kind": "ratio", "ratios": [0.6, 0.2, 0.2]},
            head={"name": "abmil", "options": small_mil, "train": train},
            metrics={"bootstrap": bootstrap},
        )
    )

    # Survival: per patient, every tile carries the risk z; exponential times, censoring.
    root = data / "synthetic-survival"
    rows = []
    survival_split = _splits(rng, n_patients_survival, (0.6, 0.2, 0.2))
    for patient in range(n_patients_survival):
        z = rng.normal()
        event_time = rng.exponential(24.0 / np.exp(1.2 * z))
        censor_time = rng.exponential(60.0)
        for slide in range(1 + int(patient % 4 == 0)):
            signal = np.zeros((int(rng.integers(*tiles)), latent))
            signal[:, 3] = 1.5 * z
            slide_id = f"case-{patient:03d}-{slide}"
            _write_slides(root, coder, [signal], [slide_id])
            rows.append(
                {
                    "slide_id": slide_id,
                    "patient_id": f"case-{patient:03d}",
                    "time": round(float(min(event_time, censor_time)), 3),
                    "event": int(event_time <= censor_time),
                    "split": survival_split[patient],
                }
            )
    _write_csv(root / "labels.csv", rows)
    specs.append(
        _spec(
            "synthetic-survival",
            "survival",
            "log-hazard 1.2 z carried by every tile",
            split={"kind": "kfold", "folds": 3},
            head={"name": "abmil", "options": small_mil, "train": train},
            metrics={"bootstrap": bootstrap},
        )
    )

    # ROI classification and retrieval: 4 classes, 6 ROIs per patient.
    means = rng.normal(size=(len(ROI_CLASSES), latent)) * 1.2
    for task_type, name in (
        ("roi_classification", "synthetic-roi-classification"),
        ("roi_retrieval", "synthetic-roi-retrieval"),
    ):
        root = data / name
        roi_labels = rng.permutation(np.arange(n_rois) % len(ROI_CLASSES))
        roi_ids = [f"roi-{i:04d}" for i in range(n_rois)]
        patient_split = _splits(rng, n_rois // 6 + 1, (0.7, 0.0, 0.3))
        rows = [
            {
                "roi_id": roi,
                "patient_id": f"p{i // 6:03d}",
                "label": ROI_CLASSES[y],
                "split": patient_split[i // 6],
            }
            for i, (roi, y) in enumerate(zip(roi_ids, roi_labels, strict=True))
        ]
        _write_csv(root / "labels.csv", rows)
        features = coder.features(means[roi_labels])
        for encoder, values in features.items():
            write_roi_features(roi_feature_path(root, encoder), roi_ids, values, encoder=encoder)
        specs.append(
            _spec(
                name,
                task_type,
                "4 classes, class mean + noise; official train/test, validation carved",
                label={"classes": list(ROI_CLASSES)},
                split={"kind": "official"},
                metrics={"bootstrap": bootstrap},
            )
        )

    # VQA and report generation: answers and reports that state the class.
    for task_type, name in (("vqa", "synthetic-vqa"), ("report_generation", "synthetic-report")):
        root = data / name
        labels, signals = _class_slides(rng, n_slides, tiles, latent)
        ids = [f"slide-{i:03d}" for i in range(n_slides)]
        _write_slides(root, coder, signals, ids)
        split = _splits(rng, n_slides, (0.6, 0.2, 0.2))
        if task_type == "vqa":
            rows = [
                {
                    "slide_id": s,
                    "patient_id": s,
                    "question": "Is the tumour invasive?",
                    "answer": "yes" if SLIDE_CLASSES[y] == "invasive" else "no",
                    "split": part,
                }
                for s, y, part in zip(ids, labels, split, strict=True)
            ]
        else:
            rows = [
                {
                    "slide_id": s,
                    "patient_id": s,
                    "report": f"Breast tissue; diagnosis: {SLIDE_CLASSES[y].replace('_', ' ')}.",
                    "split": part,
                }
                for s, y, part in zip(ids, labels, split, strict=True)
            ]
        _write_csv(root / "labels.csv", rows)
        specs.append(
            _spec(
                name,
                task_type,
                "answers state the slide's class",
                label={"column": "answer" if task_type == "vqa" else "report"},
                split={"kind": "official"},
                head={"name": "language", "options": dict(language or SYNTHETIC_LANGUAGE)},
                metrics={"bootstrap": bootstrap},
            )
        )

    tasks_dir = out / "tasks"
    written = tuple(load_task(write_spec(s, tasks_dir / f"{s['name']}.toml")) for s in specs)
    return SyntheticBenchmark(
        tasks_dir,
        written,
        {spec.name: data / spec.name for spec in written},
        dict(sorted(qualities.items(), key=lambda item: -item[1])),
    )


__all__ = [
    "DEFAULT_ENCODERS",
    "SYNTHETIC_LANGUAGE",
    "SyntheticBenchmark",
    "make_synthetic_benchmark",
]
