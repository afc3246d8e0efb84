import torch

from gpfm.backbone import create_vit
from gpfm.distill import (
    BlockMaskingGenerator,
    DistillationModel,
    DistillConfigError,
    ExpertSpec,
    FrozenExpert,
    LossConfig,
    MultiCropAugmentation,
    MultiCropConfig,
    SyntheticPatchDataset,
    apply_schedules,
    collate_multicrop,
)


def tiny_model(centering="softmax"):
    torch.manual_seed(0)
    experts = {
        "big": FrozenExpert(
            create_vit("vit_tiny_patch16", depth=1, img_size=64), 192, input_size=64
        ),
        # An expert with no patch tokens: a (B, 24) embedding only.
        "cls_only": FrozenExpert(
            torch.nn.Sequential(
                torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(48, 24)
            ),
            24,
        ),
    }
    specs = (ExpertSpec("big", 192, 1.0, 0.25), ExpertSpec("cls_only", 24, 1.0, 0.0))
    loss = LossConfig(
        prototypes=64,
        experts=specs,
        centering=centering,
        head_hidden_dim=64,
        head_bottleneck_dim=16,
    )
    backbone = create_vit("vit_tiny_patch14", depth=2, img_size=56, drop_path_rate=0.1)
    return DistillationModel(backbone, loss, experts)


def tiny_batch(seed=0, n=6):
    augment = MultiCropAugmentation(MultiCropConfig(global_size=56, local_size=28, n_local=2))
    data = SyntheticPatchDataset(n, size=72, seed=seed, transform=augment)
    torch.manual_seed(seed)
    import random

    return collate_multicrop(
        [data[i] for i in range(n)], BlockMaskingGenerator((4, 4)), rng=random.Random(seed)
    )


def test_terms_are_named_and_total_is_their_sum():
    model = tiny_model().train()
    terms = model(tiny_batch(), teacher_temp=0.04)
    assert set(terms) == {"dino", "ibot", "koleo", "big_cls", "big_patch", "cls_only_cls", "total"}
    parts = sum(v for k, v in terms.items() if k != "total")
    torch.testing.assert_close(terms["total"], parts)


def test_gradients_reach_only_the_student_and_heads():
    model = tiny_model().train()
    model(tiny_batch(), teacher_temp=0.04)["total"].backward()
    assert all(p.grad is None for p in model.teacher.parameters())
    assert all(p.grad is None for e in model.experts.values() for p in e.parameters())
    trainable = dict(model.trainable_named_parameters())
    assert trainable["student.backbone.blocks.0.attn.qkv.weight"].grad is not None
    assert trainable["loss.experts.heads.big.mlp.weight"].grad is not None
    assert trainable["student.dino_head.mlp.0.weight"].grad is not None
    assert not any(name.startswith(("teacher.", "experts.")) for name in trainable)


def test_experts_stay_frozen_in_eval_mode_and_out_of_checkpoints():
    model = tiny_model().train()
    assert not model.teacher.training
    assert all(not expert.model.training for expert in model.experts.values())
    assert not any(key.startswith("experts") for key in model.state_dict())
    model.to(torch.float64)  # experts move with the model
    assert next(model.experts["big"].parameters()).dtype == torch.float64


def test_teacher_is_updated_only_by_the_ema():
    model = tiny_model().train()
    before = model.teacher["backbone"].blocks[0].attn.qkv.weight.clone()
    optimizer = torch.optim.AdamW(model.parameter_groups())
    apply_schedules(optimizer, lr=1e-3, weight_decay=0.04, last_layer_lr=1e-3)
    model(tiny_batch(), teacher_temp=0.04)["total"].backward()
    optimizer.step()
    torch.testing.assert_close(model.teacher["backbone"].blocks[0].attn.qkv.weight, before)
    model.update_teacher(0.5)
    after = model.teacher["backbone"].blocks[0].attn.qkv.weight
    student = model.student["backbone"].blocks[0].attn.qkv.weight.detach()
    torch.testing.assert_close(after, 0.5 * before + 0.5 * student)


def test_twenty_steps_lower_the_total_loss():
    model = tiny_model().train()
    optimizer = torch.optim.AdamW(model.parameter_groups())
    apply_schedules(optimizer, lr=1e-3, weight_decay=0.0, last_layer_lr=1e-3)
    batch = tiny_batch(seed=3, n=8)
    history = []
    for _ in range(20):
        terms = model(batch, teacher_temp=0.04)
        optimizer.zero_grad()
        terms["total"].backward()
        optimizer.step()
        model.update_teacher(0.99)
        history.append({name: value.item() for name, value in terms.items()})
    first, last = history[0], history[-5:]
    assert sum(h["total"] for h in last) / 5 < 0.9 * first["total"]
    # The experts are fixed targets: matching them improves steadily.
    for term in ("big_cls", "big_patch", "cls_only_cls"):
        assert max(h[term] for h in last) < 0.5 * first[term], term


def test_sinkhorn_centering_runs():
    model = tiny_model(centering="sinkhorn").train()
    terms = model(tiny_batch(), teacher_temp=0.05)
    assert torch.isfinite(terms["total"])


def test_last_layers_of_every_head_are_frozen_by_their_schedule_and_their_norms_train():
    # GPFM: the expert heads' output layers are named last_layer too (ssl_meta_arch.py:94-103),
    # so the last-layer lr of 0 in the first epoch freezes them with the prototypes
    # (train.py:97-120); the weight-norm scale g trains (layers/dino_head.py:27-28).
    model = tiny_model().train()
    groups = model.parameter_groups()
    last = {n for g in groups if g["is_last_layer"] for n in g["names"]}
    assert any(n.startswith("student.dino_head.last_layer.") for n in last)
    for expert in ("big", "cls_only"):
        assert any(n.startswith(f"loss.experts.heads.{expert}.last_layer.") for n in last)
    norms = [
        p
        for n, p in model.named_parameters()
        if "last_layer" in n and "original0" in n and not n.startswith("teacher.")
    ]
    assert norms and all(p.requires_grad for p in norms)

    optimizer = torch.optim.AdamW(groups)
    apply_schedules(optimizer, lr=1e-2, weight_decay=0.04, last_layer_lr=0.0)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model(tiny_batch(), teacher_temp=0.04)["total"].backward()
    assert all(p.grad is not None for p in norms)
    optimizer.step()
    for name, parameter in model.named_parameters():
        if name not in before:
            continue
        moved = not torch.equal(parameter, before[name])
        assert moved != ("last_layer" in name), name


def test_mismatched_experts_are_refused():
    import pytest

    with pytest.raises(DistillConfigError, match="do not match"):
        DistillationModel(
            create_vit("vit_tiny_patch14", depth=1, img_size=56),
            LossConfig(prototypes=8, experts=(ExpertSpec("a", 10),)),
            {},
        )


def test_frozen_expert_renormalises_and_resizes():
    seen = {}

    def record(x):
        seen["x"] = x
        return x.mean(dim=(2, 3))

    expert = FrozenExpert(
        torch.nn.Identity(), 3, forward=record, input_size=32, mean=(0.5,) * 3, std=(0.5,) * 3
    )
    imagenet = torch.zeros(1, 3, 16, 16)  # the ImageNet mean, once normalised
    out = expert(imagenet)
    assert seen["x"].shape == (1, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406])
    torch.testing.assert_close(out["cls"][0], (mean - 0.5) / 0.5)
    assert out["patch"] is None
