import random

import numpy as np
import pytest
import torch

from gpfm.backbone import create_vit
from gpfm.distill import (
    BlockMaskingGenerator,
    DINOHead,
    MultiCropAugmentation,
    MultiCropConfig,
    apply_schedules,
    collate_multicrop,
    cosine_schedule,
    linear_warmup_schedule,
    parameter_groups,
    update_ema,
)
from gpfm.distill.augment import HEDJitter, RandomRotate90


class ReferenceCosineScheduler:
    # birkhoffkiki/GPFM 4f8be2b, pretrain/dinov2/utils/utils.py, class CosineScheduler
    def __init__(
        self,
        base_value,
        final_value,
        total_iters,
        warmup_iters=0,
        start_warmup_value=0,
        freeze_iters=0,
    ):
        super().__init__()
        self.final_value = final_value
        self.total_iters = total_iters

        freeze_schedule = np.zeros(freeze_iters)

        warmup_schedule = np.linspace(start_warmup_value, base_value, warmup_iters)

        iters = np.arange(total_iters - warmup_iters - freeze_iters)
        schedule = final_value + 0.5 * (base_value - final_value) * (
            1 + np.cos(np.pi * iters / len(iters))
        )
        self.schedule = np.concatenate((freeze_schedule, warmup_schedule, schedule))

        assert len(self.schedule) == self.total_iters

    def __getitem__(self, it):
        if it >= self.total_iters:
            return self.final_value
        else:
            return self.schedule[it]


def test_cosine_schedule_equals_the_reference_scheduler():
    ours = cosine_schedule(1.0, 0.1, total_iters=100, warmup_iters=10, start_warmup=0.0)
    reference = ReferenceCosineScheduler(1.0, 0.1, total_iters=100, warmup_iters=10)
    np.testing.assert_allclose(ours, [reference[i] for i in range(100)], rtol=0, atol=1e-15)
    assert ours[9] == 1.0  # the warmup ends on the base value (np.linspace's endpoint)


def test_teacher_temperature_equals_the_reference_warmup():
    # train.py:85-91: CosineScheduler(0.07, 0.07, total=warmup, warmup=warmup, start=0.04)
    temps = linear_warmup_schedule(0.04, 0.07, warmup_iters=30, total_iters=40)
    reference = ReferenceCosineScheduler(0.07, 0.07, 30, warmup_iters=30, start_warmup_value=0.04)
    np.testing.assert_allclose(temps, [reference[i] for i in range(40)], rtol=0, atol=1e-15)


def test_teacher_momentum_goes_from_0992_to_1():
    momentum = cosine_schedule(0.992, 1.0, total_iters=50)
    assert momentum[0] == pytest.approx(0.992) and momentum[-1] == pytest.approx(1.0, abs=1e-4)


def test_ema_update_formula():
    student, teacher = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = teacher.weight.detach().clone()
    update_ema(teacher, student, momentum=0.9)
    torch.testing.assert_close(teacher.weight, 0.9 * before + 0.1 * student.weight.detach())


def test_layer_decay_patch_embed_multiplier_and_weight_decay_exclusions():
    model = torch.nn.ModuleDict(
        {
            "backbone": create_vit("vit_tiny_patch16", depth=3, img_size=32),
            "dino_head": DINOHead(192, 16, 32, 8),
        }
    )
    groups = {g["name"]: g for g in parameter_groups(model.named_parameters(), 3, 0.5, 0.2)}
    assert groups["backbone.blocks.2.attn.qkv.weight"]["lr_multiplier"] == pytest.approx(0.5)
    assert groups["backbone.blocks.0.attn.qkv.weight"]["lr_multiplier"] == pytest.approx(0.125)
    assert groups["backbone.patch_embed.proj.weight"]["lr_multiplier"] == pytest.approx(
        0.0625 * 0.2
    )
    assert groups["backbone.norm.weight"]["lr_multiplier"] == 1.0
    assert groups["dino_head.mlp.0.weight"]["lr_multiplier"] == 1.0
    for name in (
        "backbone.blocks.0.attn.qkv.bias",
        "backbone.blocks.1.norm1.weight",
        "backbone.blocks.1.ls1.gamma",
    ):
        assert groups[name]["wd_multiplier"] == 0.0
    assert groups["backbone.blocks.1.mlp.fc1.weight"]["wd_multiplier"] == 1.0
    assert groups["dino_head.last_layer.parametrizations.weight.original1"]["is_last_layer"]
    optimizer = torch.optim.AdamW(list(groups.values()))
    apply_schedules(optimizer, lr=1e-3, weight_decay=0.04, last_layer_lr=0.0)
    by_name = {g["name"]: g for g in optimizer.param_groups}
    assert by_name["backbone.blocks.2.attn.qkv.weight"]["lr"] == pytest.approx(5e-4)
    assert by_name["dino_head.last_layer.parametrizations.weight.original1"]["lr"] == 0.0
    assert by_name["backbone.blocks.0.attn.qkv.bias"]["weight_decay"] == 0.0


def test_block_masks_are_rectangles_of_the_requested_size():
    generator = BlockMaskingGenerator((16, 16))
    rng = random.Random(0)
    for target in (10, 40, 100):
        mask = generator(target, rng)
        assert mask.shape == (16, 16)
        assert 0.5 * target <= mask.sum() <= target


def _sample(n_local=2, size=28):
    return {
        "global_crops": [torch.randn(3, 56, 56), torch.randn(3, 56, 56)],
        "local_crops": [torch.randn(3, size, size) for _ in range(n_local)],
    }


def test_collate_masks_half_the_global_crops_with_weights():
    batch = collate_multicrop(
        [_sample() for _ in range(8)], BlockMaskingGenerator((4, 4)), rng=random.Random(1)
    )
    assert batch["global_crops"].shape == (16, 3, 56, 56)
    assert batch["local_crops"].shape == (16, 3, 28, 28)
    masked_images = batch["masks"].any(-1)
    assert masked_images.sum() <= 8
    per_image = batch["masks"].sum(-1)
    expected = torch.cat([torch.full((int(n),), 1.0 / int(n)) for n in per_image if n > 0])
    torch.testing.assert_close(batch["mask_weights"], expected)


def test_collate_is_deterministic_for_a_seeded_rng():
    samples = [_sample() for _ in range(6)]
    first = collate_multicrop(samples, BlockMaskingGenerator((4, 4)), rng=random.Random(7))
    second = collate_multicrop(samples, BlockMaskingGenerator((4, 4)), rng=random.Random(7))
    assert torch.equal(first["masks"], second["masks"])


def test_collate_orders_crops_by_view_then_sample():
    samples = [_sample() for _ in range(3)]
    batch = collate_multicrop(samples, BlockMaskingGenerator((4, 4)))
    torch.testing.assert_close(batch["global_crops"][1], samples[1]["global_crops"][0])
    torch.testing.assert_close(batch["global_crops"][4], samples[1]["global_crops"][1])


def test_multicrop_shapes_and_normalisation():
    config = MultiCropConfig(
        global_size=64, local_size=32, n_local=3, vertical_flip=True, rotate90=True, hed_sigma=0.05
    )
    crops = MultiCropAugmentation(config)(torch.randint(0, 256, (3, 100, 120), dtype=torch.uint8))
    assert [c.shape for c in crops["global_crops"]] == [(3, 64, 64)] * 2
    assert [c.shape for c in crops["local_crops"]] == [(3, 32, 32)] * 3
    assert crops["global_crops"][0].dtype == torch.float32


def test_blur_probabilities_as_written_or_dinov2s_inverted_ones():
    plain = MultiCropAugmentation(MultiCropConfig())
    quirk = MultiCropAugmentation(MultiCropConfig(dinov2_blur_quirk=True))

    def blur_p(compose):
        return next(
            t.p
            for t in compose.transforms
            if type(t).__name__ == "RandomApply" and "GaussianBlur" in repr(t)
        )

    assert (blur_p(plain.global_1), blur_p(plain.global_2), blur_p(plain.local)) == (1.0, 0.1, 0.5)
    assert blur_p(quirk.global_1) == 0.0 and blur_p(quirk.global_2) == pytest.approx(0.9)


def test_hed_jitter_with_no_perturbation_is_the_identity():
    image = torch.rand(3, 8, 8) * 0.9 + 0.05
    torch.testing.assert_close(HEDJitter(sigma=0.0, bias=0.0)(image), image, atol=1e-4, rtol=1e-4)
    changed = HEDJitter(sigma=0.3, bias=0.05)(image)
    assert changed.shape == image.shape and not torch.allclose(changed, image)


def test_rotate90_keeps_pixels():
    image = torch.arange(16.0).reshape(1, 4, 4)
    rotated = RandomRotate90()(image)
    assert sorted(rotated.flatten().tolist()) == list(range(16))
