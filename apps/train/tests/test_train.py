import math
import os
import re
import socket
import subprocess
import sys

import pytest
import torch

from gpfm.apps.train.__main__ import main
from gpfm.apps.train.config import bundled_configs, load_config
from gpfm.apps.train.tracking import read_metrics
from gpfm.apps.train.trainer import TrainingError, build_model, train
from gpfm.backbone import load_checkpoint_strict, load_encoder


def tiny(tmp_path, *overrides):
    return load_config("tiny_cpu", [f"output_dir={tmp_path}", *overrides])


def test_bundled_configurations_load_with_overrides(tmp_path):
    assert {"tiny_cpu", "small_patches", "gpfm_vitl14"} <= set(bundled_configs())
    paper = load_config("gpfm_vitl14")
    assert paper.student.arch == "vit_large_patch14"
    assert [(e.name, e.cls_weight, e.patch_weight) for e in paper.experts] == [
        ("uni", 1.0, 0.25),
        ("phikon", 0.5, 0.125),
        ("conch", 1.0, 0.0),
    ]
    assert paper.loss.prototypes == 65_536 and paper.data.batch_size_per_device == 96
    config = tiny(tmp_path, "max_steps=3", "optim.base_lr=0.01")
    assert config.max_steps == 3 and config.optim.base_lr == 0.01


def test_unknown_keys_are_errors():
    with pytest.raises(Exception, match="no_such_key"):
        load_config("tiny_cpu", ["optim.no_such_key=1"])
    with pytest.raises(FileNotFoundError, match="bundled"):
        load_config("missing_config")


@pytest.mark.slow
def test_tiny_config_trains_logs_and_exports(tmp_path):
    result = train(tiny(tmp_path))
    history = result["history"]
    assert len(history) == 20
    first, last = history[0]["loss/total"], [h["loss/total"] for h in history[-5:]]
    assert sum(last) / 5 < first
    rows = read_metrics(tmp_path / "logs" / "metrics.csv")
    assert len(rows) == 20
    for column in (
        "loss/dino",
        "loss/ibot",
        "loss/koleo",
        "loss/expert_a_cls",
        "loss/expert_b_patch",
        "lr",
        "weight_decay",
        "momentum",
        "teacher_temp",
        "images_per_s",
    ):
        assert column in rows[0], column
    assert rows[0]["teacher_temp"] == pytest.approx(0.02)
    assert list((tmp_path / "logs").rglob("events.out.tfevents*"))
    assert "vit_tiny_patch16" in (tmp_path / "config.yaml").read_text()
    encoder = load_encoder(tmp_path / "export")
    assert encoder.embed_dim == 192 and encoder.input_size == 64
    teacher = build_model(tiny(tmp_path / "again"))
    load_checkpoint_strict(teacher.student["backbone"], encoder.model.state_dict())
    tiles = torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8)
    assert encoder(encoder.transform(tiles)).shape == (2, 192)


@pytest.mark.slow
def test_resuming_gives_the_same_losses_step_for_step(tmp_path):
    overrides = ["max_steps=6", "checkpoint_every=3", "data.synthetic_length=48"]
    straight = train(tiny(tmp_path / "a", *overrides))["history"]
    first_part = train(tiny(tmp_path / "b", *overrides), stop_after=3)
    assert first_part["step"] == 3 and first_part["export"] is None
    resumed = train(tiny(tmp_path / "b", *overrides))["history"]
    assert [h["step"] for h in resumed] == [4, 5, 6]
    for expected, got in zip(straight[3:], resumed, strict=True):
        for key in ("loss/total", "loss/dino", "loss/ibot", "loss/expert_a_cls"):
            assert got[key] == expected[key], (got["step"], key)


def test_a_non_finite_loss_stops_with_the_step_and_term(tmp_path, monkeypatch):
    from gpfm.distill import DistillationModel

    original = DistillationModel.forward
    calls = {"n": 0}

    def poisoned(self, batch, teacher_temp):
        terms = original(self, batch, teacher_temp)
        calls["n"] += 1
        if calls["n"] == 5:
            terms["ibot"] = terms["ibot"] * math.inf
        return terms

    monkeypatch.setattr(DistillationModel, "forward", poisoned)
    with pytest.raises(TrainingError, match=r"step 5: loss term 'ibot'"):
        train(tiny(tmp_path, "max_steps=8", "checkpoint_every=3"))
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert checkpoints == ["step_3"]
    assert (tmp_path / "checkpoints" / "step_3" / "COMPLETE").exists()


def test_zoo_encoders_serve_as_experts(tmp_path):
    config = tiny(tmp_path)
    config.experts[0].encoder, config.experts[0].overrides = "resnet50-imagenet", {}
    config.experts[1].encoder, config.experts[1].overrides = "vit_tiny_patch16", {}
    model = build_model(config)
    images = torch.randn(2, 3, 64, 64)
    resnet, vit = model.experts["expert_a"](images), model.experts["expert_b"](images)
    assert resnet["cls"].shape == (2, 1024) and resnet["patch"] is None  # a CNN: CLS only
    # GPFM's experts see the student's crops as they are: 64 px, a 4 x 4 grid
    assert vit["cls"].shape == (2, 192) and vit["patch"].shape == (2, 16, 192)
    config.experts[1].preprocessing = "own"  # the expert's own 224 px input: 14 x 14
    own = build_model(config).experts["expert_b"](images)
    assert own["patch"].shape == (2, 196, 192)


def test_gradients_never_reach_teacher_or_experts(tmp_path):
    model = build_model(tiny(tmp_path))
    assert not any(p.requires_grad for p in model.teacher.parameters())
    assert not any(p.requires_grad for e in model.experts.values() for p in e.parameters())


@pytest.mark.slow
def test_pretraining_on_slides_samples_tiles_per_slide(tmp_path):
    from gpfm.slide import make_synthetic_slide, open_slide, tile, write_coords

    coords = tmp_path / "coords"
    for index in range(2):
        synthetic = make_synthetic_slide(tmp_path / f"s{index}.tiff", 2000, 1500, 0.5, seed=index)
        with open_slide(synthetic.path) as slide:
            write_coords(
                coords / f"s{index}.h5", tile(slide, mpp=0.5, patch_size=96, min_tissue=0.5)
            )
    config = tiny(
        tmp_path / "run",
        "data.source=slides",
        f"data.path={coords}",
        "data.patches_per_slide=12",
        "max_steps=2",
    )
    result = train(config)
    assert result["step"] == 2 and result["export"] is not None


def test_command_line_reports_bad_configuration(tmp_path, capsys):
    assert main(["tiny_cpu", f"output_dir={tmp_path}", "data.source=folder"]) == 1
    assert "data.path" in capsys.readouterr().err


def _free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_two_processes_with_accelerate_launch(tmp_path):
    # accelerate's --cpu starts several processes only through mpirun; its torchrun launcher
    # (--multi_gpu) starts them without it, and ACCELERATE_USE_CPU joins them over gloo.
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "ACCELERATE_USE_CPU": "true",
    }
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", str(_free_port()),
        "-m", "gpfm.apps.train", "-v", "tiny_cpu", f"output_dir={tmp_path}", "max_steps=3",
        "checkpoint_every=3",
    ]  # fmt: skip
    done = subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for rank in (0, 1):
        assert re.search(rf"process {rank} of 2 on cpu\S* \(MULTI_CPU\)", done.stderr)
        assert (tmp_path / "checkpoints" / "step_3" / f"random_states_{rank}.pkl").exists()
    assert (tmp_path / "export" / "encoder.json").exists()
    assert len(read_metrics(tmp_path / "logs" / "metrics.csv")) == 3


def test_processes_that_did_not_join_are_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun says, while Accelerate sees one process
    with pytest.raises(TrainingError, match="ACCELERATE_USE_CPU"):
        train(tiny(tmp_path))


def test_centres_are_identical_across_processes_after_all_reduce():
    # One process: the all-reduce is the identity and the centre is the plain EMA of the mean.
    from gpfm.distill import DINOLoss

    loss = DINOLoss(4, center_momentum=0.5)
    loss.update_center(torch.ones(3, 4))
    torch.testing.assert_close(loss.center, torch.full((1, 4), 0.5))


@pytest.mark.slow
def test_accumulation_counts_optimizer_steps_and_resumes_exactly(tmp_path):
    overrides = [
        "max_steps=4",
        "checkpoint_every=2",
        "gradient_accumulation_steps=2",
        "data.synthetic_length=48",
        "optim.warmup_steps=2",
    ]
    straight = train(tiny(tmp_path / "a", *overrides))["history"]
    assert [h["step"] for h in straight] == [1, 2, 3, 4]  # optimizer steps, not micro-batches
    # the schedules advance once per update: the warmup ends on the base lr at step 2
    assert straight[0]["lr"] == 0.0 and straight[1]["lr"] == pytest.approx(
        0.004 * math.sqrt(16 / 1024)
    )
    train(tiny(tmp_path / "b", *overrides), stop_after=2)
    assert sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir()) == ["step_2"]
    resumed = train(tiny(tmp_path / "b", *overrides))["history"]
    assert [h["step"] for h in resumed] == [3, 4]
    for expected, got in zip(straight[2:], resumed, strict=True):
        for key in ("loss/total", "loss/dino", "loss/ibot", "loss/expert_b_patch"):
            assert got[key] == expected[key], (got["step"], key)


def test_a_checkpoint_is_marked_complete_only_after_every_process_wrote(tmp_path):
    from gpfm.apps.train.trainer import _save_checkpoint

    events = []

    class Recorder:
        is_main_process = True

        def save_state(self, folder):
            events.append("save")

        def wait_for_everyone(self):
            complete = (tmp_path / "step_7" / "COMPLETE").exists()
            events.append(f"barrier (COMPLETE {'written' if complete else 'absent'})")

    (tmp_path / "step_7").mkdir()
    _save_checkpoint(Recorder(), tmp_path, 7, keep=3)
    assert events[:2] == ["save", "barrier (COMPLETE absent)"]
    assert (tmp_path / "step_7" / "COMPLETE").read_text() == "7"


@pytest.mark.parametrize("name", ["tiny_cpu", "small_patches", "gpfm_vitl14"])
def test_dry_run_checks_and_counts_without_downloading(name, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert main([name, "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "student backbone" in printed and "resolved configuration:" in printed
    if name == "gpfm_vitl14":
        assert "Hugging Face Hub repository MahmoodLab/UNI" in printed
        assert "303,228,928" in printed  # ViT-L/14 at 224 px


def test_dry_run_names_a_weights_reference_that_cannot_be_used(capsys):
    assert main(["gpfm_vitl14", "--dry-run", "experts.0.weights=MahmoodLab/UNI"]) == 1
    assert "hf-hub:MahmoodLab/UNI" in capsys.readouterr().err


def test_every_loss_setting_is_settable_from_the_configuration(tmp_path):
    config = tiny(
        tmp_path, "loss.student_temp=0.2", "loss.center_momentum=0.5", "loss.sinkhorn_iters=7"
    )
    model = build_model(config)
    assert model.loss.dino.student_temp == 0.2 and model.loss.ibot.center_momentum == 0.5
    assert model.loss.config.sinkhorn_iters == 7
    assert [spec.name for spec in model.loss.config.experts] == ["expert_a", "expert_b"]
    with pytest.raises(ValueError, match="experts"):
        load_config("tiny_cpu", ["loss.experts=[{name: x, dim: 3}]"])


def test_the_docs_list_every_configuration_key():
    from pathlib import Path

    from gpfm.apps.train.config import config_reference

    docs = Path(__file__).resolve().parents[3] / "docs" / "train.md"
    if not docs.exists():
        pytest.skip("docs/ is not beside this checkout")
    text = docs.read_text()
    table = text.split("<!-- config-keys:start -->\n")[1].split("<!-- config-keys:end -->")[0]
    assert table == config_reference(), "regenerate the table with config_reference()"


def test_print_config_and_a_second_run_of_a_finished_job(tmp_path, capsys):
    assert main(["tiny_cpu", "--print-config", "max_steps=3"]) == 0
    assert "max_steps: 3" in capsys.readouterr().out
    args = ["tiny_cpu", f"output_dir={tmp_path}", "max_steps=2", "data.synthetic_length=16"]
    assert main(args) == 0
    first = capsys.readouterr().out
    assert "16 images; crops 2 x 64 px + 4 x 32 px" in first and "trained 2 steps" in first
    assert main(args) == 0
    assert "already complete (2 of 2 steps); nothing to do" in capsys.readouterr().out


def test_list_items_are_overridden_and_errors_name_the_key():
    config = load_config("gpfm_vitl14", ["experts.0.weights=/models/uni.bin"])
    assert config.experts[0].weights == "/models/uni.bin"
    assert config.experts[1].weights == "hf-hub:owkin/phikon"
    with pytest.raises(ValueError, match=r"^override max_steps: .*Integer") as error:
        load_config("tiny_cpu", ["max_steps=abc"])
    assert "\n" not in str(error.value)


@pytest.mark.slow
def test_activation_checkpointing_and_compiled_blocks_keep_the_losses(tmp_path):
    overrides = ["max_steps=2", "checkpoint_every=2", "data.synthetic_length=16"]
    plain = train(tiny(tmp_path / "plain", *overrides))["history"]
    switched = train(
        tiny(
            tmp_path / "switched",
            *overrides,
            "performance.activation_checkpointing=true",
            "performance.compile=true",
            "performance.compile_backend=eager",  # the wiring; inductor needs a C++ compiler
        )
    )["history"]
    for expected, got in zip(plain, switched, strict=True):
        for key in ("loss/total", "loss/dino", "loss/ibot", "loss/expert_a_patch"):
            assert got[key] == pytest.approx(expected[key], rel=1e-5), (got["step"], key)
