import math

import pytest
import torch
import torch.nn.functional as F

from gpfm.distill import (
    DINOLoss,
    ExpertDistillationLoss,
    ExpertSpec,
    KoLeoLoss,
    iBOTPatchLoss,
    sinkhorn_knopp,
)
from gpfm.distill.expert_loss import resize_token_grid

torch.manual_seed(0)


def cross_entropy(target, logits, temp):
    return -(target * F.log_softmax(logits / temp, -1)).sum(-1).mean()


def test_dino_averages_over_pairs_of_different_views():
    loss = DINOLoss(out_dim=5, student_temp=0.1)
    students = [torch.randn(3, 5) for _ in range(3)]  # 2 global crops, then 1 local
    teachers = [F.softmax(torch.randn(3, 5), -1) for _ in range(2)]
    pairs = [(0, 1), (1, 0), (2, 0), (2, 1)]  # a global crop never predicts itself
    expected = sum(cross_entropy(teachers[t], students[s], 0.1) for s, t in pairs) / len(pairs)
    torch.testing.assert_close(loss(students, teachers), expected)


def test_eighteen_pairs_with_two_global_and_eight_local_crops():
    loss = DINOLoss(out_dim=4)
    students = [torch.zeros(2, 4) for _ in range(10)]
    teachers = [torch.full((2, 4), 0.25) for _ in range(2)]
    # Uniform everything: each pair's cross-entropy is log 4, whatever the number of pairs.
    torch.testing.assert_close(loss(students, teachers), torch.tensor(math.log(4)))


def test_softmax_centering_and_center_update():
    loss = DINOLoss(out_dim=3, center_momentum=0.9)
    logits = torch.tensor([[1.0, 2.0, 3.0], [3.0, 2.0, 1.0]])
    torch.testing.assert_close(
        loss.softmax_center_teacher(logits, 0.5), F.softmax(logits / 0.5, -1)
    )
    loss.update_center(logits)
    torch.testing.assert_close(loss.center, torch.full((1, 3), 0.2))  # 0.1 x mean 2.0
    expected = F.softmax((logits - 0.2) / 0.5, -1)
    torch.testing.assert_close(loss.softmax_center_teacher(logits, 0.5), expected)


def test_sinkhorn_knopp_balances_prototypes():
    logits = torch.randn(64, 8)
    targets = sinkhorn_knopp(logits, temp=1.0, n_iters=20)
    torch.testing.assert_close(targets.sum(-1), torch.ones(64))
    # After enough iterations every prototype gets the same share of the batch.
    torch.testing.assert_close(targets.sum(0), torch.full((8,), 8.0), atol=0.02, rtol=0)
    # Three iterations (the default) already move far from the plain softmax's imbalance.
    softmax_spread = torch.softmax(logits, -1).sum(0).std()
    assert sinkhorn_knopp(logits, temp=1.0).sum(0).std() < 0.5 * softmax_spread
    assert (targets >= 0).all()


def test_ibot_weights_each_masked_patch_by_its_images_mask_size():
    loss = iBOTPatchLoss(out_dim=4, student_temp=0.1)
    masks = torch.tensor([[True, True, False], [False, True, False], [False, False, False]])
    students = torch.randn(3, 4)  # masked patches in masks.nonzero() order
    teachers = F.softmax(torch.randn(3, 4), -1)
    ce = [cross_entropy(teachers[i : i + 1], students[i : i + 1], 0.1) for i in range(3)]
    expected = (ce[0] / 2 + ce[1] / 2 + ce[2] / 1) / 3  # three images, one unmasked
    torch.testing.assert_close(loss(students, teachers, masks), expected)


def test_koleo_on_hand_made_points():
    points = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    # Nearest neighbours: 0->1 (√2), 1->0 or 2 (√2), 2->1 (√2).
    expected = -math.log(math.sqrt(2))
    assert KoLeoLoss()(points).item() == pytest.approx(expected, abs=1e-6)
    # Scaling does not matter: features are L2-normalised first.
    assert KoLeoLoss()(points * 7).item() == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ValueError, match="two"):
        KoLeoLoss()(points[:1])


def test_koleo_runs_in_fp32_under_autocast():
    points = torch.randn(8, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = KoLeoLoss()(points)
    assert value.dtype == torch.float32


def test_expert_cls_term_is_one_minus_cosine_and_patch_term_mixes_smooth_l1():
    loss = ExpertDistillationLoss(8, [ExpertSpec("uni", 6, cls_weight=1.0, patch_weight=0.25)])
    head = loss.heads["uni"]
    student_cls, student_patch = torch.randn(2, 8), torch.randn(2, 16, 8)
    expert_cls, expert_patch = torch.randn(2, 6), torch.randn(2, 4, 6)  # 2x2 grid
    terms = loss(
        student_cls, student_patch, (4, 4), {"uni": {"cls": expert_cls, "patch": expert_patch}}
    )
    predicted = head(student_cls)
    expected_cls = (1 - F.cosine_similarity(predicted, expert_cls, dim=-1)).mean()
    torch.testing.assert_close(terms["uni_cls"], expected_cls)
    target = resize_token_grid(expert_patch, (4, 4))
    predicted_patch = head(student_patch)
    cosine = (1 - F.cosine_similarity(predicted_patch, target, dim=-1)).mean()
    expected_patch = 0.25 * (0.9 * cosine + 0.1 * F.smooth_l1_loss(predicted_patch, target))
    torch.testing.assert_close(terms["uni_patch"], expected_patch)


def test_experts_without_patch_tokens_give_cls_terms_only():
    loss = ExpertDistillationLoss(8, [ExpertSpec("conch", 5, cls_weight=1.0, patch_weight=0.5)])
    terms = loss(
        torch.randn(2, 8),
        torch.randn(2, 4, 8),
        (2, 2),
        {"conch": {"cls": torch.randn(2, 5), "patch": None}},
    )
    assert set(terms) == {"conch_cls"}


def test_kl_variant_of_the_cls_term():
    loss = ExpertDistillationLoss(8, [ExpertSpec("a", 6)], cls_loss="kl", kl_temperature=2.0)
    student, expert = torch.randn(3, 8), torch.randn(3, 6)
    value = loss(student, torch.randn(3, 4, 8), (2, 2), {"a": {"cls": expert}})["a_cls"]
    p = F.softmax(expert / 2, -1)
    q = F.log_softmax(loss.heads["a"](student) / 2, -1)
    expected = (p * (p.log() - q)).sum(-1).mean()
    torch.testing.assert_close(value, expected)
    with pytest.raises(ValueError, match="cls_loss"):
        ExpertDistillationLoss(8, [], cls_loss="mse")  # type: ignore[arg-type]


def test_resizing_an_expert_grid_keeps_a_constant_field_constant():
    tokens = torch.ones(1, 14 * 14, 3)
    resized = resize_token_grid(tokens, (16, 16))
    assert resized.shape == (1, 256, 3)
    torch.testing.assert_close(resized, torch.ones(1, 256, 3))
    with pytest.raises(ValueError, match="square"):
        resize_token_grid(torch.ones(1, 10, 3), (4, 4))


def test_koleo_term_is_the_sum_over_the_global_crops():
    # ssl_meta_arch.py:419-423: 0.1 * sum(koleo(p) for p in cls.chunk(2))
    from gpfm.distill import LossConfig, UnifiedDistillationLoss

    torch.manual_seed(0)
    loss = UnifiedDistillationLoss(8, LossConfig(prototypes=4, dino_weight=0, ibot_weight=0))
    crops = [torch.randn(5, 8), torch.randn(5, 8)]
    terms = loss(
        student_cls_logits=[],
        teacher_cls_targets=[],
        student_patch_logits=torch.zeros(0, 4),
        teacher_patch_targets=torch.zeros(0, 4),
        masks=torch.zeros(10, 4, dtype=torch.bool),
        student_global_cls=crops,
    )
    koleo = KoLeoLoss()
    torch.testing.assert_close(terms["koleo"], 0.1 * (koleo(crops[0]) + koleo(crops[1])))


def test_dino_without_local_crops_divides_by_the_references_three_terms():
    # ssl_meta_arch.py:198-199: max(n_local * n_global, 1) local terms even with no local crop
    torch.manual_seed(0)
    students = [torch.randn(3, 6), torch.randn(3, 6)]
    teachers = [torch.softmax(torch.randn(3, 6), -1), torch.softmax(torch.randn(3, 6), -1)]
    loss = DINOLoss(6)(students, teachers)
    pairs = sum(
        -(teachers[t] * torch.log_softmax(students[s] / 0.1, -1)).sum(-1).mean()
        for s, t in ((0, 1), (1, 0))
    )
    torch.testing.assert_close(loss, pairs / 3)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_row_blocks_give_the_plain_soft_cross_entropy_and_its_gradient(dtype, monkeypatch):
    from gpfm.distill import rowwise

    monkeypatch.setattr(rowwise, "_BLOCK_BYTES", 3 * 64 * 8)  # 3 rows of 64 per block
    logits = torch.randn(10, 64, dtype=dtype, requires_grad=True)
    targets = F.softmax(torch.randn(10, 64, dtype=dtype) / 0.04, -1) * 0.9  # rows sum to 0.9
    weights = torch.rand(10, dtype=dtype)
    plain_logits = logits.detach().clone().requires_grad_(True)
    expected = -(targets * F.log_softmax(plain_logits / 0.1, -1)).sum(-1)
    (expected * weights).sum().backward()
    rows = rowwise.soft_cross_entropy(logits, targets, 0.1)
    (rows * weights).sum().backward()
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(rows, expected, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(logits.grad, plain_logits.grad, rtol=tolerance, atol=tolerance)

    center = torch.randn(1, 64, dtype=torch.float32)
    expected = F.softmax((logits.detach() - center) / 0.04, -1)
    targets = rowwise.centered_softmax(logits.detach(), center, 0.04)
    torch.testing.assert_close(targets, expected, rtol=tolerance, atol=tolerance)
    overwritten = logits.detach().clone()  # block by block, in place
    assert rowwise.centered_softmax(overwritten, center, 0.04, out=overwritten) is overwritten
    torch.testing.assert_close(overwritten, expected, rtol=tolerance, atol=tolerance)


def test_soft_cross_entropy_of_bf16_logits_is_computed_in_fp32_and_refuses_target_gradients():
    from gpfm.distill.rowwise import soft_cross_entropy

    logits = torch.randn(4, 32).bfloat16().requires_grad_(True)
    targets = F.softmax(torch.randn(4, 32), -1)
    rows = soft_cross_entropy(logits, targets, 0.1)
    assert rows.dtype == torch.float32
    rows.sum().backward()
    assert logits.grad is not None and logits.grad.dtype == torch.bfloat16
    expected = -(targets * F.log_softmax(logits.detach().float() / 0.1, -1)).sum(-1)
    torch.testing.assert_close(rows, expected)
    with pytest.raises(ValueError, match="no gradient to its targets"):
        soft_cross_entropy(torch.randn(2, 4), torch.rand(2, 4, requires_grad=True), 0.1)
