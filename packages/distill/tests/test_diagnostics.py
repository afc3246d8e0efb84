import copy
import math
import random

import pytest
import torch

from gpfm.backbone import create_vit
from gpfm.distill import (
    BlockMaskingGenerator,
    DistillationModel,
    DistillConfigError,
    LossConfig,
    MultiCropAugmentation,
    MultiCropConfig,
    SyntheticPatchDataset,
    collate_multicrop,
)
from gpfm.distill.diagnostics import (
    CollapseDetector,
    CollapseStatistics,
    TeacherOutputs,
    collapse_statistics,
    effective_rank,
    mean_entropy,
    mean_pairwise_cosine,
)


def tiny_model():
    torch.manual_seed(0)
    loss = LossConfig(prototypes=64, head_hidden_dim=64, head_bottleneck_dim=16)
    return DistillationModel(create_vit("vit_tiny_patch14", depth=2, img_size=56), loss)


def tiny_batch(n=6):
    augment = MultiCropAugmentation(MultiCropConfig(global_size=56, local_size=28, n_local=2))
    data = SyntheticPatchDataset(n, size=72, seed=0, transform=augment)
    torch.manual_seed(0)
    samples = [data[i] for i in range(n)]
    return collate_multicrop(samples, BlockMaskingGenerator((4, 4)), rng=random.Random(0))


def test_entropy_is_ln_k_for_uniform_rows_and_zero_for_one_hot_rows():
    assert mean_entropy(torch.full((3, 8), 1 / 8)) == pytest.approx(math.log(8))
    assert mean_entropy(torch.eye(4)) == pytest.approx(0.0, abs=1e-6)


def test_pairwise_cosine_matches_the_brute_force_mean_over_distinct_pairs():
    x = torch.randn(7, 5, generator=torch.Generator().manual_seed(0))
    unit = torch.nn.functional.normalize(x, dim=-1)
    brute = [float(unit[i] @ unit[j]) for i in range(7) for j in range(7) if i != j]
    assert mean_pairwise_cosine(x) == pytest.approx(sum(brute) / len(brute), abs=1e-6)
    assert mean_pairwise_cosine(torch.ones(4, 3) * torch.arange(1, 5)[:, None]) == pytest.approx(1)
    assert mean_pairwise_cosine(torch.eye(3)) == pytest.approx(0.0, abs=1e-7)


def test_effective_rank_counts_equally_used_directions():
    assert effective_rank(torch.eye(6)) == pytest.approx(6)
    assert effective_rank(torch.randn(50, 1) @ torch.randn(1, 8)) == pytest.approx(1, abs=1e-3)
    tall = torch.cat([torch.eye(4)] * 5)  # (20, 4): the Gram matrix of the short side is used
    assert effective_rank(tall) == pytest.approx(4)


def stats(centred_ratio=0.5, head_cosine=0.5):
    return CollapseStatistics(1.0, 1.0, 0.5, centred_ratio, head_cosine, 0.5, 10.0, 16)


def test_detector_fires_once_after_the_collapse_lasts_its_patience():
    detector = CollapseDetector(start_step=20, patience=30)
    assert detector.update(10, stats(centred_ratio=1.0)) is None  # before the start: ignored
    assert detector.update(30, stats(centred_ratio=0.995)) is None  # collapsed since 30
    assert detector.update(50, stats(centred_ratio=0.999)) is None
    event = detector.update(60, stats(centred_ratio=0.999))
    assert event is not None and (event.since, event.step) == (30, 60)
    assert event.kind == "uniform_targets"
    assert "step 30" in event.describe() and "uniform over the 16 prototypes" in event.describe()
    assert detector.update(90, stats(centred_ratio=1.0)) is None  # once only


def test_detector_restarts_its_count_when_the_collapse_breaks_and_sees_constant_outputs():
    detector = CollapseDetector(patience=20)
    assert detector.update(0, stats(head_cosine=0.9999)) is None
    assert detector.update(10, stats()) is None  # healthy again: the count restarts
    assert detector.update(20, stats(head_cosine=0.9999)) is None
    event = detector.update(40, stats(centred_ratio=0.995, head_cosine=0.9999))
    assert event is not None and event.since == 20
    assert event.kind == "uniform_targets+constant_outputs"
    assert "same output for every image" in event.describe()
    with pytest.raises(DistillConfigError):
        CollapseDetector(uniform_tolerance=0)


def test_statistics_of_a_collapsed_and_of_a_diverse_teacher():
    k = 32
    same = torch.randn(1, k).repeat(6, 1)
    collapsed = TeacherOutputs(torch.ones(6, 4), same, torch.full((6, k), 1 / k), 0.04)
    s = collapse_statistics(collapsed, torch.randn(k, 8))
    assert s.centred_entropy_ratio == pytest.approx(1.0)
    assert s.head_cosine == pytest.approx(1.0) and s.cls_cosine == pytest.approx(1.0)
    assert CollapseDetector().kind(s) == "uniform_targets+constant_outputs"
    logits = torch.randn(6, k, generator=torch.Generator().manual_seed(1)) * 5
    targets = torch.softmax(logits / 0.04, dim=-1)
    diverse = TeacherOutputs(torch.randn(6, 4), logits, targets, 0.04)
    s = collapse_statistics(diverse, torch.eye(k)[:, :8])
    assert s.centred_entropy_ratio < 0.5 and s.head_cosine < 0.5
    assert s.prototype_rank == pytest.approx(8) and CollapseDetector().kind(s) == ""


def test_keeping_the_teacher_outputs_changes_no_loss_and_feeds_the_statistics():
    batch = tiny_batch()
    plain = tiny_model().train()
    watched = copy.deepcopy(plain)
    with pytest.raises(DistillConfigError, match="keep_teacher_outputs"):
        watched.collapse_statistics()
    watched.keep_teacher_outputs = True
    torch.manual_seed(0)
    expected = plain(batch, teacher_temp=0.04)
    torch.manual_seed(0)
    got = watched(batch, teacher_temp=0.04)
    for name, value in expected.items():
        assert torch.equal(got[name], value), name
    s = watched.collapse_statistics()
    kept = watched.last_teacher_outputs
    assert kept is not None and kept.cls_logits.shape == (12, 64)  # 2 global crops x 6 images
    assert 0 < s.centred_entropy_ratio <= 1 + 1e-6 and 1 <= s.prototype_rank <= 16
    assert set(s.as_dict()) >= {"collapse/centred_entropy_ratio", "collapse/head_cosine"}
