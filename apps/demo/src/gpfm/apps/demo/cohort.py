"""A synthetic cohort as pixels, with every label taken from the generator's ground truth.

``make_cohort`` writes slides (``gpfm.slide.make_synthetic_slide``, tumour fraction varied per
slide) and ROI images cut from them, then one task of each of the six types in gpfm-bench's
layout under ``<out>/data/<task>/`` (``labels.csv`` and a ``slides/`` or ``images/`` folder of
links to the shared files) with its spec file under ``<out>/tasks/``:

- slide classification: ``low`` / ``high`` tumour burden (share of the tissue that the
  generator painted as tumour, below or above the cohort's median);
- survival: log-hazard ``3 x`` the standardised burden, exponential times (months), a quarter
  censored;
- ROI classification and retrieval: 224-px crops whose window is at least 90 % tumour or 90 %
  non-tumour tissue in the ground-truth masks (``tumour`` / ``stroma``);
- VQA: on the same crops, "Is there tumour in this image?" -> ``yes`` / ``no``;
- report generation: a templated report of each slide stating its burden class.

It lives in the demo because it composes gpfm-slide (pixels) with gpfm-bench (the task layout):
under DESIGN.md's import rules only an app may import both.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from gpfm.bench.data import write_labels
from gpfm.bench.spec import write_spec
from gpfm.slide import SyntheticSlide, make_synthetic_slide, open_slide

ROI_SIZE = 224
REPORTS = {
    "low": "Tumour burden low. Mostly stroma.",
    "high": "Tumour burden high. Carcinoma present.",
}


@dataclass(frozen=True)
class CohortSize:
    """How big the cohort and its language tasks are."""

    slides: int = 12
    width: int = 3000
    rois_per_class: int = 3
    language_steps: int = 6
    report_tokens: int = 12


@dataclass
class Cohort:
    """What ``make_cohort`` wrote: the slides, the ROI images, the data root and spec folder."""

    slides: list[SyntheticSlide]
    burdens: list[float]
    images: list[Path]
    data_root: Path
    tasks_dir: Path
    task_names: list[str] = field(default_factory=list)


def tumour_burden(slide: SyntheticSlide) -> float:
    """The share of the tissue that is tumour, in the generator's masks."""
    tissue = int(slide.tissue_mask.sum())
    return float(slide.tumour_mask.sum() / tissue) if tissue else 0.0


def _windows(
    mask: np.ndarray, within: np.ndarray, cells: int, rng: np.random.Generator, n: int
) -> list[tuple[int, int]]:
    """Up to ``n`` top-left mask cells of ``cells``-wide windows >= 90 % ``mask`` (inside
    ``within``), spread at random."""
    height, width = mask.shape
    candidates = np.argwhere(mask[: height - cells, : width - cells])
    rng.shuffle(candidates)
    chosen: list[tuple[int, int]] = []
    for row, col in candidates[: 40 * n]:
        window = mask[row : row + cells, col : col + cells]
        inside = within[row : row + cells, col : col + cells].all()
        apart = all(abs(row - r) >= cells or abs(col - c) >= cells for r, c in chosen)
        if window.mean() >= 0.9 and inside and apart:
            chosen.append((int(row), int(col)))
        if len(chosen) == n:
            break
    return chosen


def cut_rois(
    slide: SyntheticSlide, folder: Path, per_class: int, seed: int
) -> list[tuple[Path, str]]:
    """Crops of ``ROI_SIZE`` px (level 0) from ``slide``: up to ``per_class`` tumour and
    ``per_class`` stroma windows, as PNG files. Returns (file, class) pairs."""
    rng = np.random.default_rng(seed)
    cells = max(1, int(np.ceil(ROI_SIZE / slide.mask_downsample)))
    stroma = slide.tissue_mask & ~slide.tumour_mask
    found = []
    with open_slide(slide.path) as reader:
        for name, mask in (("tumour", slide.tumour_mask), ("stroma", stroma)):
            for index, (row, col) in enumerate(
                _windows(mask, slide.tissue_mask, cells, rng, per_class)
            ):
                location = (col * slide.mask_downsample, row * slide.mask_downsample)
                pixels = reader.read_region(location, 0, (ROI_SIZE, ROI_SIZE))
                path = folder / f"{slide.path.stem}-{name}-{index}.png"
                Image.fromarray(pixels).save(path)
                found.append((path, name))
    return found


def _link_all(files: Sequence[Path], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for path in files:
        link = folder / path.name
        if not link.exists():
            os.symlink(path.resolve(), link)


def _split(n: int, rng: np.random.Generator, test: float = 0.34) -> list[str]:
    n_test = max(2, round(n * test))
    parts = ["test"] * n_test + ["train"] * (n - n_test)
    return list(rng.permutation(parts))


def _stratified_split(classes: Sequence[str], rng: np.random.Generator) -> list[str]:
    """train / val / test per class: a third (at least one) to test, one to validation, the
    rest to training, so that every part has every class even in a tiny cohort."""
    split = [""] * len(classes)
    for name in sorted(set(classes)):
        rows = [i for i, c in enumerate(classes) if c == name]
        rows = [rows[i] for i in rng.permutation(len(rows))]
        n_test = max(1, len(rows) // 3)
        for position, row in enumerate(rows):
            split[row] = "test" if position < n_test else "val" if position == n_test else "train"
    return split


def _spec(name: str, task_type: str, description: str, **sections: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": task_type,
        "panel": "demo",
        "description": description,
        "dataset": {"name": name, "public": True, "source": "generated by gpfm-demo"},
        **sections,
    }


def make_cohort(out: Path, size: CohortSize, seed: int = 0) -> Cohort:
    """Write the slides, ROI images, labels and specs (see the module docstring)."""
    rng = np.random.default_rng(seed)
    slides_dir, images_dir = out / "slides", out / "images"
    slides_dir.mkdir(parents=True, exist_ok=True)
    images_dir.mkdir(parents=True, exist_ok=True)
    fractions = np.linspace(0.08, 0.6, size.slides)[rng.permutation(size.slides)]
    slides = []
    for index, fraction in enumerate(fractions):
        slides.append(
            make_synthetic_slide(
                slides_dir / f"slide-{index:02d}.tiff",
                size.width,
                int(size.width * 0.75),
                0.5,
                seed=seed + index,
                tumour_fraction=float(fraction),
            )
        )
    burdens = [tumour_burden(s) for s in slides]
    threshold = float(np.median(burdens))
    classes = ["high" if b > threshold else "low" for b in burdens]
    ids = [s.path.stem for s in slides]
    data, specs = out / "data", []
    mil = {"options": {"hidden_dim": 32, "attention_dim": 16}}
    train = {"epochs": 20, "patience": 20, "lr": 1e-3, "mixed_precision": "no"}

    # Slide classification and survival, on the same slides (their features are shared).
    split = _stratified_split(classes, rng)
    name = "demo-slide-classification"
    rows = [
        {"slide_id": s, "patient_id": s, "label": c, "split": p}
        for s, c, p in zip(ids, classes, split, strict=True)
    ]
    write_labels(data / name / "labels.csv", rows)
    specs.append(
        _spec(
            name,
            "slide_classification",
            "tumour burden low / high (ground-truth masks)",
            label={"classes": ["low", "high"]},
            split={"kind": "official"},
            head={"name": "abmil", **mil, "train": train},
            metrics={"bootstrap": 200},
        )
    )
    z = (np.array(burdens) - np.mean(burdens)) / (np.std(burdens) + 1e-9)
    times = rng.exponential(24.0 * np.exp(-3.0 * z))
    events = (rng.random(len(ids)) > 0.25).astype(int)
    name = "demo-survival"
    survival_rows: list[dict[str, Any]] = [
        {"slide_id": s, "patient_id": s, "time": round(float(t), 2), "event": int(e)}
        for s, t, e in zip(ids, times, events, strict=True)
    ]
    write_labels(data / name / "labels.csv", survival_rows)
    specs.append(
        _spec(
            name,
            "survival",
            "log-hazard 3 x standardised tumour burden",
            split={"kind": "kfold", "folds": 3, "validation_fraction": 0.25},
            head={"name": "abmil", **mil, "train": {**train, "n_bins": 2}},
            metrics={"bootstrap": 0},
        )
    )
    name = "demo-report"
    rows = [
        {"slide_id": s, "patient_id": s, "report": REPORTS[c], "split": p}
        for s, c, p in zip(ids, classes, split, strict=True)
    ]
    write_labels(data / name / "labels.csv", rows)
    language = {
        "num_visual_tokens": 4,
        "lora_r": 4,
        "max_steps": size.language_steps,
        "batch_size": 4,
        "lr": 2e-3,
        "max_new_tokens": size.report_tokens,
        "system_prompt": "You are a pathologist.",
    }
    specs.append(
        _spec(
            name,
            "report_generation",
            "templated reports stating the tumour burden",
            label={"column": "report"},
            split={"kind": "official"},
            head={"name": "language", "options": language},
            metrics={
                # METEOR's JVM loads its paraphrase tables at every call (tens of seconds on
                # two cores): left out here to keep the demo in minutes; the paper's tasks keep it
                "names": ["bleu_1", "bleu_2", "bleu_3", "bleu_4", "rouge_l"],
                "primary": "bleu_1",
                "bootstrap": 0,
            },
        )
    )
    for name in ("demo-slide-classification", "demo-survival", "demo-report"):
        _link_all([s.path for s in slides], data / name / "slides")

    # ROI crops: classification, retrieval and VQA on the same images.
    crops: list[tuple[Path, str, str]] = []
    for index, slide in enumerate(slides):
        for path, label in cut_rois(slide, images_dir, size.rois_per_class, seed + 100 + index):
            crops.append((path, label, slide.path.stem))
    slide_split = dict(zip(ids, _split(len(ids), rng), strict=True))
    roi_rows = [
        {"roi_id": p.stem, "patient_id": s, "label": c, "split": slide_split[s]}
        for p, c, s in crops
    ]
    for name, task_type, head, metrics in (
        ("demo-roi-classification", "roi_classification", {"name": "linear"}, {"bootstrap": 200}),
        ("demo-roi-retrieval", "roi_retrieval", {"name": "retrieval"}, {"bootstrap": 0}),
    ):
        write_labels(data / name / "labels.csv", roi_rows)
        specs.append(
            _spec(
                name,
                task_type,
                "224-px crops, >= 90 % tumour or stroma in the ground-truth masks",
                label={"classes": ["stroma", "tumour"], "unit": "roi"},
                split={"kind": "official", "validation_fraction": 0.25},
                head=head,
                metrics=metrics,
            )
        )
        _link_all([p for p, _, _ in crops], data / name / "images")
    name = "demo-vqa"
    rows = [
        {
            "slide_id": p.stem,
            "patient_id": s,
            "question": "Is there tumour in this image?",
            "answer": "yes" if c == "tumour" else "no",
            "split": slide_split[s],
        }
        for p, c, s in crops
    ]
    write_labels(data / name / "labels.csv", rows)
    specs.append(
        _spec(
            name,
            "vqa",
            "is there tumour in the crop (ground-truth masks)",
            label={"column": "answer"},
            split={"kind": "official"},
            head={
                "name": "language",
                "options": {**language, "max_new_tokens": 2},
            },
            metrics={"bootstrap": 200},
        )
    )
    _link_all([p for p, _, _ in crops], data / name / "images")

    tasks_dir = out / "tasks"
    for spec in specs:
        write_spec(spec, tasks_dir / f"{spec['name']}.toml")
    return Cohort(
        slides,
        burdens,
        [p for p, _, _ in crops],
        data,
        tasks_dir,
        [spec["name"] for spec in specs],
    )


__all__ = [
    "REPORTS",
    "ROI_SIZE",
    "Cohort",
    "CohortSize",
    "cut_rois",
    "make_cohort",
    "tumour_burden",
]
