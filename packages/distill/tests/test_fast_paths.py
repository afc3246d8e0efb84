"""The training step's fast paths give the values of the plain ones they replace.

The plain step (gpfm-distill 0.2): the student backbone called once on the list of crops, the
DINO/iBOT head called twice per model (class tokens, then masked patch tokens), each expert
head twice (class tokens, then patch tokens), one AdamW group per parameter with the
per-parameter loop, and an EMA that pairs parameters by sorted name at every step. It is kept
here as a subclass, and both run side by side from the same weights.
"""

import copy
import importlib.util
from pathlib import Path

import pytest
import torch

from gpfm.distill import DistillationModel, apply_schedules, parameter_groups
from gpfm.distill.ema import TeacherEMA
from gpfm.distill.errors import DistillConfigError
from gpfm.distill.expert_loss import ExpertDistillationLoss
from gpfm.distill.optim import adamw, merge_parameter_groups
from gpfm.distill.performance import checkpoint_blocks, compile_blocks


def _sibling(name):  # tests are imported by path (importlib mode): load the helpers likewise
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tiny_model, tiny_batch = _sibling("test_model").tiny_model, _sibling("test_model").tiny_batch


class PlainStep(DistillationModel):
    """The step as gpfm-distill 0.2 ran it."""

    @torch.no_grad()
    def teacher_targets(self, batch, teacher_temp):
        teacher = self.teacher["backbone"](batch["global_crops"])
        cls_logits = self.teacher["dino_head"](teacher["cls"])
        patch_logits = self.teacher["dino_head"](teacher["patch"][batch["masks"]])
        cls, patch = self.loss.teacher_targets(cls_logits, patch_logits, teacher_temp)
        return {"cls": cls, "patch": patch}

    def student_outputs(self, batch):
        crops = [batch["global_crops"], batch["local_crops"]]
        outputs = self.student["backbone"](crops, masks=[batch["masks"], None])
        all_cls = torch.cat([out["cls"] for out in outputs])
        return {
            "global": outputs[0],
            "cls_logits": self.student["dino_head"](all_cls),
            "patch_logits": self.student["dino_head"](outputs[0]["patch"][batch["masks"]]),
        }

    @torch.no_grad()
    def update_teacher(self, momentum):
        teacher = [p for _, p in sorted(self.teacher.named_parameters())]
        student = [p.detach() for _, p in sorted(self.student.named_parameters())]
        torch._foreach_mul_(teacher, momentum)
        torch._foreach_add_(teacher, student, alpha=1 - momentum)

    def parameter_groups(self, layer_decay=0.9, patch_embed_lr_mult=0.2):
        return parameter_groups(
            self.trainable_named_parameters(), self.num_layers, backbone_prefix="student.backbone."
        )


def two_head_calls(head, cls_tokens, patch_tokens):
    return (
        None if cls_tokens is None else head(cls_tokens),
        None if patch_tokens is None else head(patch_tokens),
    )


def as_dtype(batch, dtype):
    return {
        k: v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v
        for k, v in batch.items()
    }


def pair(dtype):
    fast = tiny_model().to(dtype).train()
    plain = tiny_model().to(dtype).train()
    plain.__class__ = PlainStep
    plain.load_state_dict(fast.state_dict())
    return fast, plain


def steps(model, optimizer, batches, monkeypatch=None):
    history = []
    for index, batch in enumerate(batches):
        torch.manual_seed(100 + index)  # the same stochastic depth on both sides
        terms = model(batch, teacher_temp=0.04)
        terms["total"].backward()
        grads = {n: p.grad.clone() for n, p in model.trainable_named_parameters()}
        apply_schedules(optimizer, lr=1e-3, weight_decay=0.04, last_layer_lr=1e-3)
        for group in model.clipping_groups():
            torch.nn.utils.clip_grad_norm_(group, 3.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        model.update_teacher(0.9)
        history.append(({k: v.detach() for k, v in terms.items()}, grads))
    return history


# float64: two whole steps (losses, gradients, then the weights after AdamW and the EMA).
# float32: the first step's losses and gradients (rounding differs in the last bits, which
# AdamW's g / sqrt(v) can magnify on near-zero gradients in later steps).
@pytest.mark.parametrize(
    ("dtype", "n_steps", "tolerance"), [(torch.float64, 2, 1e-12), (torch.float32, 1, 1e-5)]
)
def test_the_fast_step_gives_the_plain_steps_losses_gradients_and_weights(
    dtype, n_steps, tolerance, monkeypatch
):
    fast, plain = pair(dtype)
    batches = [as_dtype(tiny_batch(seed), dtype) for seed in range(n_steps)]
    fast_history = steps(fast, adamw(fast.parameter_groups()), batches)
    with monkeypatch.context() as patch:
        patch.setattr(ExpertDistillationLoss, "_head_outputs", staticmethod(two_head_calls))
        plain_optimizer = torch.optim.AdamW(plain.parameter_groups(), foreach=False)
        plain_history = steps(plain, plain_optimizer, batches)
    for (fast_terms, fast_grads), (plain_terms, plain_grads) in zip(
        fast_history, plain_history, strict=True
    ):
        assert fast_terms.keys() == plain_terms.keys()
        for name, value in plain_terms.items():
            torch.testing.assert_close(fast_terms[name], value, rtol=tolerance, atol=0)
        for name, grad in plain_grads.items():
            torch.testing.assert_close(fast_grads[name], grad, rtol=tolerance, atol=tolerance)
    if dtype == torch.float64:
        for (name, a), b in zip(
            fast.state_dict().items(), plain.state_dict().values(), strict=True
        ):
            torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance, msg=name)


def test_parameter_groups_merge_equal_settings_and_keep_every_parameter():
    model = tiny_model()
    single = model.parameter_groups(merge=False)
    merged = model.parameter_groups()
    assert len(merged) < len(single) / 3
    assert sorted(n for g in merged for n in g["names"]) == sorted(g["name"] for g in single)
    settings = {(g["lr_multiplier"], g["wd_multiplier"], g["is_last_layer"]) for g in single}
    assert len(merged) == len(settings)
    assert merge_parameter_groups(merged) == merged  # merging twice changes nothing


def test_teacher_ema_pairs_once_and_refuses_different_models():
    model = tiny_model()
    with torch.no_grad():
        for p in model.student.parameters():
            p.add_(1.0)
    expected = {
        n: 0.75 * t + 0.25 * s
        for (n, t), s in zip(
            model.teacher.named_parameters(), model.student.parameters(), strict=True
        )
    }
    model.update_teacher(0.75)
    ema = model._ema
    model.update_teacher(1.0)  # the same pairing is reused
    assert model._ema is ema and ema.tracks(model.teacher)
    for name, parameter in model.teacher.named_parameters():
        torch.testing.assert_close(parameter, expected[name])
    with pytest.raises(DistillConfigError, match="different parameters"):
        TeacherEMA(model.teacher, model.student["backbone"])


def test_checkpointed_and_compiled_blocks_give_the_same_loss_and_gradients():
    fast, _ = pair(torch.float64)
    other = copy.deepcopy(fast)
    assert checkpoint_blocks(other.student["backbone"]) == 2
    for side in (other.student, other.teacher):  # compiled, checkpointed or not
        assert compile_blocks(side["backbone"], backend="eager") == 2
    batch = as_dtype(tiny_batch(), torch.float64)
    results = []
    for model in (fast, other):
        torch.manual_seed(3)  # stochastic depth (0.1) is on: the replay must draw the same
        terms = model(batch, teacher_temp=0.04)
        terms["total"].backward()
        after = torch.rand(1)  # stochastic depth's replay left the generator where it was
        results.append((terms["total"].detach(), dict(model.trainable_named_parameters()), after))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-12, atol=0)
    assert torch.equal(results[1][2], results[0][2])
    assert set(results[1][1]) == set(results[0][1])  # names unchanged
    for name, parameter in results[0][1].items():
        torch.testing.assert_close(results[1][1][name].grad, parameter.grad, msg=name)
    with pytest.raises(DistillConfigError, match="blocks"):
        checkpoint_blocks(torch.nn.Linear(2, 2))
    with pytest.raises(DistillConfigError, match="before compiling"):
        checkpoint_blocks(other.teacher["backbone"])
