import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from gpfm.apps.evaluate import evaluate, read_records
from gpfm.apps.evaluate.__main__ import main
from gpfm.backbone import create_vit, export_encoder
from gpfm.bench import make_synthetic_benchmark

# Four fast tasks of gpfm-bench's synthetic benchmark (features given), and a missing one.
TASKS = "synthetic-slide-classification,synthetic-roi-classification,synthetic-roi-retrieval"
SMALL = {"n_slides": 24, "n_patients_survival": 20, "n_rois": 96, "epochs": 3, "bootstrap": 10}


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """The synthetic benchmark: data root ``data/<task>``, spec folder ``tasks``."""
    return make_synthetic_benchmark(
        tmp_path_factory.mktemp("bench"), encoders={"good": 1.0, "poor": 0.15}, **SMALL
    )


def _metrics(out):
    found = {}
    for path in sorted((out / "results").rglob("results.json")):
        data = json.loads(path.read_text())
        found[(data["encoder"], data["task"])] = {
            k: v["values"] for k, v in data["metrics"].items()
        }
    return found


def _args(bench, out, tasks=TASKS):
    return [
        "--encoders", "good,poor", "--tasks", tasks,
        "--data-root", str(bench.tasks_dir.parent / "data"), "--out", str(out),
        "--task-folder", str(bench.tasks_dir), "--no-progress",
    ]  # fmt: skip


def test_runs_every_job_writes_records_report_and_leaderboard(bench, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_args(bench, out, TASKS + ",PathVQA")) == 0  # PathVQA has no data here
    printed = capsys.readouterr().out
    assert "leaderboard (ours protocol, 3 tasks)" in printed and "report:" in printed
    records = {(r["encoder"], r["task"]): r for r in read_records(out)}
    assert len(records) == 8
    skipped = records[("good", "PathVQA")]
    assert skipped["status"] == "skipped" and "labels.csv: not found" in skipped["reason"]
    assert "skipped: good / PathVQA" in printed
    assert all(r["status"] == "done" for k, r in records.items() if k[1] != "PathVQA")
    scores = _metrics(out)
    good, poor = (
        scores[("good", "synthetic-roi-classification")],
        scores[("poor", "synthetic-roi-classification")],
    )
    assert good["balanced_accuracy"][0] > poor["balanced_accuracy"][0]
    assert (out / "report" / "report.html").exists()
    assert main(["report", str(out)]) == 0
    assert "leaderboard (ours protocol" in capsys.readouterr().out


def test_list_tasks_says_where_data_was_found(bench, capsys):
    root = bench.tasks_dir.parent / "data"
    assert (
        main(["list-tasks", "--data-root", str(root), "--task-folder", str(bench.tasks_dir)]) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    row = next(line for line in lines if line.startswith("synthetic-survival"))
    assert "survival" in row and "found (features" in row
    assert "missing" in next(line for line in lines if line.startswith("TCGA-BRCA"))
    assert lines[-1].startswith("78 tasks, data found for 6")


def test_a_failed_job_is_retried_and_the_exit_code_says_so(bench, tmp_path, monkeypatch):
    out = tmp_path / "out"
    from gpfm.apps.evaluate import run as run_module

    real = run_module.run_task

    def broken(spec, encoder, *args, **kwargs):
        if encoder == "poor" and spec.type == "roi_retrieval":
            raise RuntimeError("disk full")
        return real(spec, encoder, *args, **kwargs)

    monkeypatch.setattr(run_module, "run_task", broken)
    assert main(_args(bench, out)) == 1
    failed = [r for r in read_records(out) if r["status"] == "failed"]
    assert [(r["encoder"], r["task"]) for r in failed] == [("poor", "synthetic-roi-retrieval")]
    assert "disk full" in failed[0]["reason"]
    kept = out / "results" / "ours" / "good" / "synthetic-slide-classification" / "results.json"
    written = kept.stat().st_mtime_ns
    monkeypatch.setattr(run_module, "run_task", real)
    assert main(_args(bench, out)) == 0  # retried; the finished ones kept
    assert all(r["status"] == "done" for r in read_records(out))
    assert kept.stat().st_mtime_ns == written


def _cli(args, **kwargs):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    return subprocess.Popen(
        [sys.executable, "-m", "gpfm.apps.evaluate", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )


@pytest.mark.slow
def test_resumes_after_a_kill_with_the_results_of_an_uninterrupted_run(bench, tmp_path):
    reference, out = tmp_path / "reference", tmp_path / "out"
    assert _cli(_args(bench, reference)).wait(timeout=300) == 0
    process = _cli(_args(bench, out))
    deadline = time.monotonic() + 300
    while not list((out / "results").rglob("results.json")) and time.monotonic() < deadline:
        time.sleep(0.05)
    process.kill()
    process.wait()
    finished = len(list((out / "results").rglob("results.json")))
    assert 1 <= finished < 6 or pytest.skip("the run finished before the kill")
    for path in (out / "results").rglob("results.json"):  # atomic writes: no half file
        json.loads(path.read_text())
    assert _cli(_args(bench, out)).wait(timeout=300) == 0
    assert _metrics(out) == _metrics(reference)


@pytest.mark.slow
def test_two_processes_under_accelerate_give_the_results_of_one(bench, tmp_path):
    single, launched = tmp_path / "single", tmp_path / "launched"
    assert _cli(_args(bench, single)).wait(timeout=300) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    # accelerate's --cpu needs mpirun for several processes; its torchrun launcher
    # (--multi_gpu) starts them without it, here on the CPU (no GPU visible, gloo).
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
         "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         "-m", "gpfm.apps.evaluate", *_args(bench, launched)],
        env=env, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert _metrics(launched) == _metrics(single)
    assert sorted({r["process"] for r in read_records(launched)}) == [0, 1]  # both worked
    assert "leaderboard (ours protocol, 3 tasks)" in result.stdout


def test_roi_images_are_encoded_once_and_shared_between_tasks(tmp_path):
    torch.manual_seed(0)
    encoder = export_encoder(
        create_vit("vit_tiny_patch16", depth=1, img_size=32), tmp_path / "tiny", name="tiny"
    )
    rng = np.random.default_rng(0)
    images = tmp_path / "shared-images"
    images.mkdir()
    rows = ["roi_id,label,split"]
    for index in range(24):
        label = index % 2
        pixels = rng.integers(0, 60, (32, 32, 3)) + (180 if label else 0)
        Image.fromarray(pixels.astype(np.uint8)).save(images / f"roi-{index:02d}.png")
        rows.append(
            f"roi-{index:02d},{'bright' if label else 'dark'},{'test' if index >= 16 else 'train'}"
        )
    specs = tmp_path / "tasks"
    specs.mkdir()
    data = tmp_path / "data"
    for task_type in ("roi_classification", "roi_retrieval"):
        name = f"demo-{task_type}"
        (specs / f"{name}.toml").write_text(
            f'name = "{name}"\ntype = "{task_type}"\n[split]\nkind = "official"\n'
            "[metrics]\nbootstrap = 0\n"
        )
        (data / name).mkdir(parents=True)
        (data / name / "labels.csv").write_text("\n".join(rows) + "\n")
        (data / name / "images").symlink_to(images)
    records, boards = evaluate(
        [str(encoder)], "demo-roi_classification,demo-roi_retrieval", data, tmp_path / "out",
        task_folders=[specs], progress=False, report=False, echo=lambda line: None,
    )  # fmt: skip
    assert [r["status"] for r in records] == ["done", "done"], records
    cache = tmp_path / "out" / "features" / "images" / "tiny.h5"
    assert cache.exists() and boards["ours"].models == ["tiny"]
    import h5py

    with h5py.File(cache) as h5:
        assert h5["features"].shape == (24, 192)  # each image once, for both tasks
    scores = boards["ours"].scores["demo-roi_classification"]["tiny"]
    assert scores > 0.9  # bright vs dark: even a random ViT separates them
