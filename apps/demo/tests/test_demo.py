import json

from gpfm.apps.demo.__main__ import main, run, tissue_iou


def test_demo_chain_runs_and_writes_its_summary(tmp_path):
    summary = run(tmp_path, num_slides=2, size=3000, seed=5, pretrain_steps=2)
    assert [r["slide"] for r in summary["slides"]] == ["synthetic-00.tiff", "synthetic-01.tiff"]
    for record in summary["slides"]:
        assert record["tiles"] > 0
        assert record["tissue_iou"] > 0.85
        assert record["batch_shape"][1:] == [3, 224, 224]
    assert json.loads((tmp_path / "summary.json").read_text()) == summary
    assert (tmp_path / "tiles" / "qc" / "synthetic-00.png").exists()
    pretraining = summary["pretraining"]
    assert pretraining["steps"] == 2 and 0 < pretraining["last_dino_over_ln_k"] <= 1.5
    assert pretraining["collapse"] is None
    assert (tmp_path / "pretraining" / "export" / "encoder.json").exists()
    probe = summary["tumour_probe"]
    assert sum(probe["tiles"].values()) == sum(r["tiles"] for r in summary["slides"])
    assert 0.0 <= probe["test_balanced_accuracy"] <= 1.0
    assert 0.0 <= probe["initial_weights_test_balanced_accuracy"] <= 1.0
    feature_files = sorted((tmp_path / "extracted" / "features").rglob("*.h5"))
    assert [p.stem for p in feature_files] == ["synthetic-00", "synthetic-01"]


def test_command_line_prints_one_line_per_slide(tmp_path, capsys):
    assert (
        main(["--out", str(tmp_path), "--slides", "1", "--size", "2500", "--pretrain-steps", "1"])
        == 0
    )
    printed = capsys.readouterr().out
    assert "synthetic-00.tiff" in printed and "tissue IoU" in printed
    assert "x ln K" in printed


def test_tissue_iou():
    import numpy as np

    a = np.zeros((4, 4), bool)
    b = a.copy()
    a[:2] = True
    b[1:3] = True
    assert tissue_iou(a, b) == 4 / 12
    assert tissue_iou(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 1.0
