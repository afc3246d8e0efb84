"""Slides to a curated store to pretraining: gpfm-curate's output is what gpfm-train reads."""

from __future__ import annotations

import csv

import pytest

pytest.importorskip("pyarrow")

from gpfm.apps.curate import CurateSettings, curate
from gpfm.apps.train.config import load_config
from gpfm.apps.train.trainer import train
from gpfm.slide import make_synthetic_slide


@pytest.mark.slow
def test_pretraining_runs_from_a_curated_store(tmp_path):
    with open(tmp_path / "slides.csv", "w", newline="") as handle:
        table = csv.writer(handle)
        table.writerow(["slide_path", "cohort", "tissue_type"])
        for number, kind in enumerate(["lung", "kidney"]):
            make_synthetic_slide(tmp_path / f"s{number}.tiff", 1024, 1024, mpp=0.5, seed=number)
            table.writerow([f"s{number}.tiff", "A", kind])
    settings = CurateSettings(patches_per_slide=8, patch_size=96, rows_per_shard=8)
    assert curate(tmp_path / "slides.csv", tmp_path / "store", settings).complete
    config = load_config(
        "tiny_cpu",
        [f"output_dir={tmp_path / 'run'}", "data.source=hf", f"data.path={tmp_path / 'store'}",
         "max_steps=2", "checkpoint_every=2"],
    )  # fmt: skip
    result = train(config)
    assert result["step"] == 2 and (tmp_path / "run" / "export" / "encoder.json").exists()
