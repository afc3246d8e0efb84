import json

import numpy as np

from gpfm.apps.demo.__main__ import main, tissue_iou
from gpfm.bench.protocols import unavailable
from gpfm.bench.spec import load_task


def test_the_fast_demo_runs_from_pixels_to_a_leaderboard(tmp_path, capsys):
    status = main(["--out", str(tmp_path), "--fast"])
    printed = capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    specs = {p.stem: load_task(p) for p in (tmp_path / "cohort" / "tasks").glob("*.toml")}
    assert sorted(spec.type for spec in specs.values()) == sorted(
        ["slide_classification", "survival", "roi_classification", "roi_retrieval", "vqa",
         "report_generation"]
    )  # fmt: skip
    assert all(record["tissue_iou"] > 0.85 for record in summary["tiling"])
    assert summary["pretraining"]["collapse"] is None
    jobs = summary["jobs"]
    assert len(jobs) == 3 * 6 and {j["encoder"] for j in jobs} == {
        "gpfm_tiny",
        "expert_a",
        "expert_b",
    }
    for job in jobs:  # every job done, except language tasks where the LLM is not installed
        expected = "not_available" if unavailable(specs[job["task"]]) else "done"
        assert job["status"] == expected, job
    assert status == (0 if all(j["status"] == "done" for j in jobs) else 1)
    assert "leaderboard (ours protocol" in printed and "report:" in printed
    assert (tmp_path / "evaluation" / "report" / "report.html").exists()
    # the slides were extracted once per encoder, shared by the three slide tasks
    features = tmp_path / "evaluation" / "features" / "slides" / "features" / "expert_a"
    assert len(list(features.glob("*.h5"))) == summary["cohort"]["slides"]
    assert set(summary["seconds"]) >= {"cohort", "tiling", "pretraining", "evaluation", "total"}


def test_tissue_iou():
    a = np.zeros((4, 4), bool)
    b = a.copy()
    a[:2] = True
    b[1:3] = True
    assert tissue_iou(a, b) == 4 / 12
    assert tissue_iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 1.0
