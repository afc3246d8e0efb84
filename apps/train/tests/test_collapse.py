import logging
import math
from pathlib import Path

import pytest
import torch

from gpfm.apps.train.__main__ import main
from gpfm.apps.train.config import load_config
from gpfm.apps.train.tracking import read_metrics
from gpfm.apps.train.trainer import CollapseError, export_initial_teacher, train
from gpfm.backbone import load_encoder

PCAM = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "roi" / "pcam-subset-1000"
# Settings that make any step look collapsed, to test the plumbing in a few steps.
ALWAYS = ["collapse.start_step=0", "collapse.patience_steps=1", "collapse.uniform_tolerance=0.99"]


def tiny(tmp_path, *overrides):
    return load_config("tiny_cpu", [f"output_dir={tmp_path}", *overrides])


def test_diagnostics_are_logged_and_a_collapse_is_reported_once_in_words(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="gpfm.apps.train"):
        result = train(tiny(tmp_path, "max_steps=3", "checkpoint_every=3", *ALWAYS))
    warnings = [r.getMessage() for r in caplog.records if "collapsed" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0] == result["collapse"]
    assert "collapsed at step 1 (still so at step 2)" in warnings[0]
    assert "student.init_values=1.0" in warnings[0]  # the run's own settings, named
    assert result["step"] == 3 and result["export"] is not None  # warned, not stopped
    rows = read_metrics(tmp_path / "logs" / "metrics.csv")
    for column in (
        "collapse/entropy_ratio",
        "collapse/centred_entropy_ratio",
        "collapse/head_cosine",
        "collapse/cls_cosine",
        "collapse/prototype_rank",
    ):
        assert column in rows[0], column
    assert 0 < rows[0]["collapse/centred_entropy_ratio"] <= 1 + 1e-6
    assert 1 <= rows[0]["collapse/prototype_rank"] <= 64  # tiny_cpu's bottleneck


def test_stop_on_collapse_stops_with_the_message_and_keeps_the_checkpoint(tmp_path, capsys):
    overrides = ["max_steps=6", "checkpoint_every=2", "stop_on_collapse=true", *ALWAYS]
    overrides[overrides.index("collapse.start_step=0")] = "collapse.start_step=3"
    with pytest.raises(CollapseError, match=r"collapsed at step 3 .*step_2, is kept"):
        train(tiny(tmp_path, *overrides))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_2"]
    assert not (tmp_path / "export").exists()
    assert main(["tiny_cpu", f"output_dir={tmp_path / 'cli'}", *overrides]) == 1
    assert "stop_on_collapse" in capsys.readouterr().err


def test_the_initial_teacher_is_the_one_training_starts_from(tmp_path):
    # The first step's learning rate is 0 (warm-up): one step leaves the weights as they were.
    config = tiny(tmp_path / "run", "max_steps=1", "checkpoint_every=1")
    trained = load_encoder(train(config)["export"]).model.state_dict()
    initial = load_encoder(export_initial_teacher(config, tmp_path / "initial")).model.state_dict()
    assert trained.keys() == initial.keys()
    for key in trained:  # equal up to the EMA's rounding (m·w + (1 − m)·w)
        torch.testing.assert_close(trained[key], initial[key], rtol=1e-6, atol=1e-7)


def test_the_paper_config_keeps_the_paper_settings():
    paper = load_config("gpfm_vitl14")
    assert paper.student.init_values == 1e-5
    assert (paper.optim.warmup_teacher_temp, paper.optim.teacher_temp) == (0.04, 0.07)
    assert paper.collapse.check and not paper.stop_on_collapse


@pytest.mark.slow
@pytest.mark.skipif(not PCAM.is_dir(), reason="the PCam patches of ../shared/data are absent")
def test_small_config_learns_on_real_patches_and_collapsing_settings_are_caught(tmp_path):
    steps = ["max_steps=80", "checkpoint_every=80", "data.batch_size_per_device=16"]
    base = [f"data.path={PCAM}", *steps]
    config = load_config("small_patches", [f"output_dir={tmp_path / 'good'}", *base])
    learned = train(config)
    ln_k = math.log(config.loss.prototypes)
    after_warmup = [
        row["loss/dino"] / ln_k
        for row in learned["history"]
        if row["step"] > config.optim.warmup_teacher_temp_steps
    ]
    assert max(after_warmup) < 0.9 and learned["collapse"] is None
    # The paper's LayerScale and teacher temperatures at this scale: caught, and stopped.
    collapsing = [
        f"output_dir={tmp_path / 'bad'}",
        *base,
        "student.init_values=1e-5",
        "optim.teacher_temp=0.07",
        "optim.warmup_teacher_temp=0.04",
        "collapse.patience_steps=20",
        "stop_on_collapse=true",
    ]
    with pytest.raises(CollapseError, match=r"collapsed at step \d+ \(still so at step \d+\)"):
        train(load_config("small_patches", collapsing))
