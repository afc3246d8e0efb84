"""Regenerate the spec files of the GPFM paper's 72 tasks (``src/gpfm/bench/tasks/*.toml``).

Reads the task list (name, type, panel, public, notes) from ``../shared/data/gpfm_tasks.csv``
(relative to the repository root; or ``--tasks``) and writes one TOML spec per task, numbered in
the list's order. What the list does not say comes from the tables below: where a dataset is
obtained, its classes where the list names them, and each type's protocol, which follows the
paper's code (birkhoffkiki/GPFM at 4f8be2b):

- slide classification: one 7:1:2 train/val/test split of patients (its ``splits712/``);
- survival: 5 folds of patients, 4 time bins, c-index (its ``splits82/`` are 8:2 with the test
  fold doubling as validation; here validation is carved out of each training part instead);
- ROI classification and retrieval: the dataset's official train/test split (a ``split``
  column), validation carved out of training where a dataset has none;
- VQA and report generation: the dataset's official split.

    python packages/bench/scripts/make_paper_specs.py [--tasks PATH] [--out FOLDER]
"""

from __future__ import annotations

import argparse
import csv
import re
from pathlib import Path
from typing import Any

from gpfm.bench.spec import parse_spec, write_spec

ROOT = Path(__file__).resolve().parents[3]
DEFAULT_TASKS = ROOT.parent / "shared" / "data" / "gpfm_tasks.csv"
DEFAULT_OUT = ROOT / "packages" / "bench" / "src" / "gpfm" / "bench" / "tasks"

PRIVATE = "private cohort of the GPFM paper's authors; not distributed (ask them)"
GDC = "https://portal.gdc.cancer.gov (TCGA diagnostic slides; clinical data from the GDC)"
SOURCES = {
    "CPTAC-NSCLC": "https://www.cancerimagingarchive.net (CPTAC-LUAD and CPTAC-LSCC)",
    "CPTAC-LUAD": "https://www.cancerimagingarchive.net (CPTAC-LUAD)",
    "CAMELYON": "https://camelyon17.grand-challenge.org",
    "BRACS-3": "https://www.bracs.icar.cnr.it",
    "BRACS-7": "https://www.bracs.icar.cnr.it",
    "PANDA": "https://www.kaggle.com/c/prostate-cancer-grade-assessment",
    "UBC-OCEAN": "https://www.kaggle.com/competitions/UBC-OCEAN",
    "IMP-CRS": "IMP Diagnostics colorectal dataset (CRS), https://rdm.inesctec.pt",
    "EBRAINS-IDH1": "https://search.kg.ebrains.eu (Digital Brain Tumour Atlas)",
    "EBRAINS-Subtyping": "https://search.kg.ebrains.eu (Digital Brain Tumour Atlas)",
    "HANCOCK": "https://hancock.research.fau.eu",
    "CRC100K": "https://zenodo.org/record/1214456 (NCT-CRC-HE-100K-NONORM, CRC-VAL-HE-7K)",
    "BACH": "https://iciar2018-challenge.grand-challenge.org",
    "BreakHis": "https://web.inf.ufpr.br/vri/databases/breast-cancer-histopathological-database-breakhis/",
    "UniToPatho": "https://ieee-dataport.org/open-access/unitopatho",
    "PCAM": "https://github.com/basveeling/pcam",
    "WSSS4LUAD": "https://wsss4luad.grand-challenge.org",
    "Chaoyang": "https://bupt-ai-cz.github.io/HSA-NRL/",
    "PathVQA": "https://github.com/UCSD-AI4H/PathVQA",
    "WSI-VQA": "https://github.com/cpystan/WSI-VQA",
    "TCGA-Report": "https://github.com/dddavid4real/HistGen (TCGA WSI-report pairs)",
    "PatchGastricADC22": "https://zenodo.org/record/6550925",
}
SOURCES["CRC Tissue Retrieval"] = SOURCES["CRC100K"]
SEE_PAPER = "public; see the data availability section of the GPFM paper"
CLASSES = {
    "TCGA-NSCLC": ["LUAD", "LUSC"],
    "CPTAC-NSCLC": ["LUAD", "LSCC"],
    "TCGA-RCC": ["KICH", "KIRC", "KIRP"],
    "CAMELYON": ["normal", "tumour"],
    "TCGA-BRCA_IDC_ILC": ["IDC", "ILC"],
    "TCGA-GBMLGG": ["GBM", "LGG"],
    "PANDA": ["0", "1", "2", "3", "4", "5"],
    "TCGA-LUAD-TP53": ["wildtype", "mutant"],
    "TCGA-GBMLGG-IDH1": ["wildtype", "mutant"],
    "EBRAINS-IDH1": ["wildtype", "mutant"],
    "CRC100K": ["ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM"],
    "CRC Tissue Retrieval": ["ADI", "BACK", "DEB", "LYM", "MUC", "MUS", "NORM", "STR", "TUM"],
    "PCAM": ["normal", "tumour"],
}
SPLITS: dict[str, dict[str, Any]] = {
    "slide_classification": {"kind": "ratio", "ratios": [0.7, 0.1, 0.2], "seeds": [0]},
    "survival": {"kind": "kfold", "folds": 5, "seeds": [0]},
    "roi_classification": {"kind": "official"},
    "roi_retrieval": {"kind": "official"},
    "vqa": {"kind": "official"},
    "report_generation": {"kind": "official"},
}
LABEL_COLUMNS = {"vqa": "answer", "report_generation": "report"}


def source_of(name: str, public: bool) -> str:
    """Where a user obtains the task's data."""
    if not public:
        return PRIVATE
    if name in SOURCES:
        return SOURCES[name]
    if name.startswith("TCGA-"):
        return GDC
    return SEE_PAPER


def spec_for(row: dict[str, str]) -> dict[str, Any]:
    """The spec of one row of the task list."""
    name, task_type = row["name"].strip(), row["type"].strip()
    public = row["public"].strip().lower() == "yes"
    label: dict[str, Any] = {"column": LABEL_COLUMNS.get(task_type, "label")}
    if name in CLASSES:
        label["classes"] = CLASSES[name]
    description = row["notes"].strip()
    if row["panel"].strip() == "external":
        description = (description + "; " if description else "") + (
            "train and validate on the internal cohort (split = train/val), test on this one"
        )
    return {
        "name": name,
        "type": task_type,
        "panel": row["panel"].strip(),
        "description": description,
        "dataset": {"name": name, "public": public, "source": source_of(name, public)},
        "label": label,
        "split": SPLITS[task_type]
        if row["panel"].strip() != "external"
        else {"kind": "official", "seeds": [0]},
    }


def file_name(index: int, name: str) -> str:
    """``NN-<name>.toml`` with the name made file-safe."""
    return f"{index:02d}-{re.sub(r'[^A-Za-z0-9._-]+', '_', name)}.toml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=Path, default=DEFAULT_TASKS)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    if not args.tasks.exists():
        raise SystemExit(f"{args.tasks}: task list not found; pass --tasks")
    with open(args.tasks, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    args.out.mkdir(parents=True, exist_ok=True)
    for old in args.out.glob("*.toml"):
        old.unlink()
    for index, row in enumerate(rows, start=1):
        # Every field written out, defaults included, so that a file says all it means.
        full = parse_spec(spec_for(row), source=f"{args.tasks} row {index}").to_dict()
        write_spec(full, args.out / file_name(index, row["name"]))
    print(f"wrote {len(rows)} specs to {args.out}")


if __name__ == "__main__":
    main()
