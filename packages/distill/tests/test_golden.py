# ruff: noqa: N806, SIM118 - the reference is transcribed with its own names
"""Golden test: the whole objective against a transcription of GPFM's own training step.

The reference below is transcribed from birkhoffkiki/GPFM at commit 4f8be2b:
- ``pretrain/dinov2/train/ssl_meta_arch.py:183-455`` (``SSLMetaArch.forward_backward``) and
  ``:477-486`` (``update_teacher``);
- ``pretrain/dinov2/loss/dino_clstoken_loss.py`` (``DINOLoss``),
  ``pretrain/dinov2/loss/ibot_patch_loss.py`` (``iBOTPatchLoss``),
  ``pretrain/dinov2/loss/koleo_loss.py`` (``KoLeoLoss``);
- ``pretrain/dinov2/layers/dino_head.py`` (``DINOHead``, ``_build_mlp``);
- ``pretrain/dinov2/kl_loss.py`` (``Cosine``, ``FeatureLoss``); ``fms.py`` (expert outputs).

What is not transcribed, and why it does not change a value: FSDP wrapping and stream
synchronisation, ``.cuda()`` transfers, the fp16 grad scaler (fp32 here), and xFormers'
``BlockDiagonalMask`` used to run the student head once on concatenated inputs (a concatenation
and a split, done here with ``torch.cat``). The backbone and the experts are ours on both sides:
the backbone's parity with DINOv2/timm is tested in gpfm-backbone. The iBOT Sinkhorn-Knopp's
unconditional ``dist.all_reduce(B)`` is guarded for one process.

Both sides run in float64, so that the comparison is not drowned in float32 rounding (the
gradients behind LayerScale 1e-5 are five orders of magnitude below those they come from);
the reference's two ``.float()`` calls (Sinkhorn-Knopp's fp16 -> fp32 upcasts) keep float64.

Both sides start from the same weights and take the same plain gradient steps and EMA updates,
so every step compares values and gradients of the whole objective, with the centres evolving
on each side by its own code.
"""

from __future__ import annotations

import copy
import math
import random
from functools import partial

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.init import trunc_normal_

from gpfm.backbone import create_vit
from gpfm.distill import (
    BlockMaskingGenerator,
    DistillationModel,
    ExpertSpec,
    FrozenExpert,
    LossConfig,
    collate_multicrop,
)

# ---------------------------------------------------------------- reference: layers/dino_head.py


class RefDINOHead(nn.Module):
    def __init__(
        self,
        in_dim,
        out_dim,
        use_bn=False,
        nlayers=3,
        hidden_dim=2048,
        bottleneck_dim=256,
        mlp_bias=True,
    ):
        super().__init__()
        nlayers = max(nlayers, 1)
        self.mlp = _build_mlp(
            nlayers, in_dim, bottleneck_dim, hidden_dim=hidden_dim, use_bn=use_bn, bias=mlp_bias
        )
        self.apply(self._init_weights)
        self.last_layer = torch.nn.utils.weight_norm(nn.Linear(bottleneck_dim, out_dim, bias=False))
        self.last_layer.weight_g.data.fill_(1)

    def _init_weights(self, m):
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                nn.init.constant_(m.bias, 0)

    def forward(self, x):
        x = self.mlp(x)
        eps = 1e-6 if x.dtype == torch.float16 else 1e-12
        x = nn.functional.normalize(x, dim=-1, p=2, eps=eps)
        x = self.last_layer(x)
        return x


def _build_mlp(nlayers, in_dim, bottleneck_dim, hidden_dim=None, use_bn=False, bias=True):
    if nlayers == 1:
        return nn.Linear(in_dim, bottleneck_dim, bias=bias)
    else:
        layers = [nn.Linear(in_dim, hidden_dim, bias=bias)]
        if use_bn:
            layers.append(nn.BatchNorm1d(hidden_dim))
        layers.append(nn.GELU())
        for _ in range(nlayers - 2):
            layers.append(nn.Linear(hidden_dim, hidden_dim, bias=bias))
            if use_bn:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.GELU())
        layers.append(nn.Linear(hidden_dim, bottleneck_dim, bias=bias))
        return nn.Sequential(*layers)


# ------------------------------------------------------- reference: loss/dino_clstoken_loss.py


class RefDINOLoss(nn.Module):
    def __init__(self, out_dim, student_temp=0.1, center_momentum=0.9):
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))
        self.updated = True
        self.reduce_handle = None
        self.len_teacher_output = None
        self.async_batch_center = None

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_output, teacher_temp):
        self.apply_center_update()
        return F.softmax((teacher_output - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(self, teacher_output, teacher_temp, n_iterations=3):
        teacher_output = teacher_output.to(TEST_DTYPE)  # .float() in the reference, see below
        world_size = dist.get_world_size() if dist.is_initialized() else 1
        Q = torch.exp(teacher_output / teacher_temp).t()
        B = Q.shape[1] * world_size
        K = Q.shape[0]
        sum_Q = torch.sum(Q)
        if dist.is_initialized():
            dist.all_reduce(sum_Q)
        Q /= sum_Q
        for _it in range(n_iterations):
            sum_of_rows = torch.sum(Q, dim=1, keepdim=True)
            if dist.is_initialized():
                dist.all_reduce(sum_of_rows)
            Q /= sum_of_rows
            Q /= K
            Q /= torch.sum(Q, dim=0, keepdim=True)
            Q /= B
        Q *= B
        return Q.t()

    def forward(self, student_output_list, teacher_out_softmaxed_centered_list):
        total_loss = 0
        for s in student_output_list:
            lsm = F.log_softmax(s / self.student_temp, dim=-1)
            for t in teacher_out_softmaxed_centered_list:
                loss = torch.sum(t * lsm, dim=-1)
                total_loss -= loss.mean()
        return total_loss

    @torch.no_grad()
    def update_center(self, teacher_output):
        self.reduce_center_update(teacher_output)

    @torch.no_grad()
    def reduce_center_update(self, teacher_output):
        self.updated = False
        self.len_teacher_output = len(teacher_output)
        self.async_batch_center = torch.sum(teacher_output, dim=0, keepdim=True)
        if dist.is_initialized():
            self.reduce_handle = dist.all_reduce(self.async_batch_center, async_op=True)

    @torch.no_grad()
    def apply_center_update(self):
        if self.updated is False:
            world_size = dist.get_world_size() if dist.is_initialized() else 1
            if self.reduce_handle is not None:
                self.reduce_handle.wait()
            _t = self.async_batch_center / (self.len_teacher_output * world_size)
            self.center = self.center * self.center_momentum + _t * (1 - self.center_momentum)
            self.updated = True


# --------------------------------------------------------- reference: loss/ibot_patch_loss.py


def lossfunc(t, s, temp):  # the fallback without xFormers' fused cross-entropy
    return torch.sum(t * F.log_softmax(s / temp, dim=-1), dim=-1)


class RefiBOTPatchLoss(nn.Module):
    def __init__(self, patch_out_dim, student_temp=0.1, center_momentum=0.9):
        super().__init__()
        self.student_temp = student_temp
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, 1, patch_out_dim))
        self.updated = True
        self.reduce_handle = None
        self.len_teacher_patch_tokens = None
        self.async_batch_center = None

    @torch.no_grad()
    def softmax_center_teacher(self, teacher_patch_tokens, teacher_temp):
        self.apply_center_update()
        return F.softmax((teacher_patch_tokens - self.center) / teacher_temp, dim=-1)

    @torch.no_grad()
    def sinkhorn_knopp_teacher(
        self, teacher_output, teacher_temp, n_masked_patches_tensor, n_iterations=3
    ):
        teacher_output = teacher_output.to(TEST_DTYPE)  # .float() in the reference, see below
        Q = torch.exp(teacher_output / teacher_temp).t()
        B = n_masked_patches_tensor
        if dist.is_initialized():  # unguarded in the reference
            dist.all_reduce(B)
        K = Q.shape[0]
        sum_Q = torch.sum(Q)
        if dist.is_initialized():
            dist.all_reduce(sum_Q)
        Q /= sum_Q
        for _it in range(n_iterations):
            sum_of_rows = torch.sum(Q, dim=1, keepdim=True)
            if dist.is_initialized():
                dist.all_reduce(sum_of_rows)
            Q /= sum_of_rows
            Q /= K
            Q /= torch.sum(Q, dim=0, keepdim=True)
            Q /= B
        Q *= B
        return Q.t()

    def forward_masked(
        self,
        student_patch_tokens_masked,
        teacher_patch_tokens_masked,
        student_masks_flat,
        n_masked_patches=None,
        masks_weight=None,
    ):
        t = teacher_patch_tokens_masked
        s = student_patch_tokens_masked
        loss = lossfunc(t, s, self.student_temp)
        if masks_weight is None:
            masks_weight = (
                (1 / student_masks_flat.sum(-1).clamp(min=1.0))
                .unsqueeze(-1)
                .expand_as(student_masks_flat)[student_masks_flat]
            )
        if n_masked_patches is not None:
            loss = loss[:n_masked_patches]
        loss = loss * masks_weight
        return -loss.sum() / student_masks_flat.shape[0]

    @torch.no_grad()
    def update_center(self, teacher_patch_tokens):
        self.reduce_center_update(teacher_patch_tokens)

    @torch.no_grad()
    def reduce_center_update(self, teacher_patch_tokens):
        self.updated = False
        self.len_teacher_patch_tokens = len(teacher_patch_tokens)
        self.async_batch_center = torch.sum(teacher_patch_tokens.mean(1), dim=0, keepdim=True)
        if dist.is_initialized():
            self.reduce_handle = dist.all_reduce(self.async_batch_center, async_op=True)

    @torch.no_grad()
    def apply_center_update(self):
        if self.updated is False:
            world_size = dist.get_world_size() if dist.is_initialized() else 1
            if self.reduce_handle is not None:
                self.reduce_handle.wait()
            _t = self.async_batch_center / (self.len_teacher_patch_tokens * world_size)
            self.center = self.center * self.center_momentum + _t * (1 - self.center_momentum)
            self.updated = True


# -------------------------------------------------------------- reference: loss/koleo_loss.py


class RefKoLeoLoss(nn.Module):
    def __init__(self):
        super().__init__()
        self.pdist = nn.PairwiseDistance(2, eps=1e-8)

    def pairwise_NNs_inner(self, x):  # noqa: N802
        dots = torch.mm(x, x.t())
        n = x.shape[0]
        dots.view(-1)[:: (n + 1)].fill_(-1)
        _, I = torch.max(dots, dim=1)  # noqa: E741
        return I

    def forward(self, student_output, eps=1e-8):
        student_output = F.normalize(student_output, eps=eps, p=2, dim=-1)
        I = self.pairwise_NNs_inner(student_output)  # noqa: E741
        distances = self.pdist(student_output, student_output[I])
        loss = -torch.log(distances + eps).mean()
        return loss


# ------------------------------------------------------------------------ reference: kl_loss.py


class RefCosine(nn.Module):
    def __init__(self, dim=-1):
        super().__init__()
        self.cos = nn.CosineSimilarity(dim=dim)

    def forward(self, student_out, teacher_out):
        return 1 - self.cos(student_out, teacher_out).mean()


class RefFeatureLoss(nn.Module):
    def __init__(self, alpha=0.9, beta=0.1, dim=-1):
        super().__init__()
        self.alpha = alpha
        self.beta = beta
        self.cos_fn = RefCosine(dim=dim)
        self.smoothl1 = nn.SmoothL1Loss()

    def forward(self, student_out, teacher_out):
        N1 = student_out.shape[1]
        B, N2, C = teacher_out.shape
        l1 = int(math.sqrt(N1))
        l2 = int(math.sqrt(N2))
        teacher_out = teacher_out.permute(0, 2, 1).view(B, C, l2, l2)
        teacher_out = F.interpolate(teacher_out, size=(l1, l1), mode="bicubic")
        teacher_out = teacher_out.view(B, C, -1).permute(0, 2, 1)
        cos = self.cos_fn(student_out, teacher_out) * self.alpha
        smoothl1 = self.smoothl1(student_out, teacher_out) * self.beta
        return cos + smoothl1


# ---------------------------------------------------------------- reference: SSLMetaArch, fms.py


class BackboneAdapter(nn.Module):
    """Our ViT under DINOv2's output names (``x_norm_clstoken``, ``x_norm_patchtokens``)."""

    def __init__(self, vit):
        super().__init__()
        self.vit = vit

    def forward(self, x, masks=None, is_training=True):
        def rename(out):
            return {"x_norm_clstoken": out["cls"], "x_norm_patchtokens": out["patch"]}

        if isinstance(x, list):
            return [rename(o) for o in self.vit(x, masks=masks)]
        return rename(self.vit(x, masks=masks))


class RefViTExpert(nn.Module):
    """fms.py:24-38 (UNI): class token (B, 1, D) and patch tokens after the final norm."""

    def __init__(self, vit):
        super().__init__()
        self.model = vit
        self.dim = vit.embed_dim

    def forward(self, img):
        out = self.model(img)
        return {"cls_token": out["cls"][:, None, :], "patch_token": out["patch"]}


class RefEmbeddingExpert(nn.Module):
    """fms.py:41-58 (CONCH): the image embedding (B, 1, D), L2-normalised."""

    def __init__(self, model, dim):
        super().__init__()
        self.model = model
        self.dim = dim

    def forward(self, img):
        cls_token = self.model(img)[:, None, :]
        return {"cls_token": F.normalize(cls_token, dim=-1)}


class RefSSLMetaArch(nn.Module):
    """ssl_meta_arch.py:42-172 and 183-486, with our backbone and experts (see the header)."""

    def __init__(self, cfg, student_backbone, teacher_backbone, experts):
        super().__init__()
        self.cfg = cfg
        embed_dim = student_backbone.vit.embed_dim
        self.use_uni_flag = cfg["UNI_loss_ratio"] > 0
        self.use_conch_flag = cfg["CONCH_loss_ratio"] > 0
        self.distill_loss_fn = RefCosine()
        self.distill_feature_loss_fn = RefFeatureLoss(dim=-1)
        distill_heads = {}
        for name in ("conch", "uni"):
            distill_heads[name] = RefDINOHead(
                in_dim=embed_dim, out_dim=experts[name].dim, hidden_dim=2048, bottleneck_dim=256,
                nlayers=1,
            )  # fmt: skip
        self.distill_heads = nn.ModuleDict(distill_heads)
        self.do_dino = True
        self.do_koleo = True
        self.do_ibot = True
        self.ibot_separate_head = False
        self.dino_loss_weight = 1.0
        self.ibot_loss_weight = 1.0
        dino_head = partial(
            RefDINOHead,
            in_dim=embed_dim,
            out_dim=cfg["prototypes"],
            hidden_dim=cfg["hidden"],
            bottleneck_dim=cfg["bottleneck"],
            nlayers=3,
        )
        self.dino_loss = RefDINOLoss(cfg["prototypes"])
        self.koleo_loss = RefKoLeoLoss()
        self.ibot_patch_loss = RefiBOTPatchLoss(cfg["prototypes"])
        self.student = nn.ModuleDict({"backbone": student_backbone, "dino_head": dino_head()})
        self.teacher = nn.ModuleDict({"backbone": teacher_backbone, "dino_head": dino_head()})
        self.distillation = experts  # a plain dict: frozen, not trained
        for p in self.teacher.parameters():
            p.requires_grad = False

    def forward_backward(self, images, teacher_temp):
        n_global_crops = 2
        assert n_global_crops == 2
        n_local_crops = self.cfg["local_crops_number"]

        global_crops = images["collated_global_crops"]
        local_crops = images["collated_local_crops"]

        masks = images["collated_masks"]
        mask_indices_list = images["mask_indices_list"]
        n_masked_patches_tensor = images["n_masked_patches"]
        n_masked_patches = mask_indices_list.shape[0]
        upperbound = images["upperbound"]
        masks_weight = images["masks_weight"]

        n_local_crops_loss_terms = max(n_local_crops * n_global_crops, 1)
        n_global_crops_loss_terms = (n_global_crops - 1) * n_global_crops

        do_ibot = self.do_ibot

        ibot_loss_scale = 1.0 / n_global_crops

        @torch.no_grad()
        def get_distill_teacher_output():
            distill_output_dict = {}
            x = global_crops
            if self.use_uni_flag:
                distill_output_dict["uni"] = self.distillation["uni"](x)
            if self.use_conch_flag:
                distill_output_dict["conch"] = self.distillation["conch"](x)
            return distill_output_dict

        @torch.no_grad()
        def get_teacher_output():
            x, n_global_crops_teacher = global_crops, n_global_crops
            teacher_backbone_output_dict = self.teacher.backbone(x, is_training=True)
            teacher_cls_tokens = teacher_backbone_output_dict["x_norm_clstoken"]
            teacher_cls_tokens = teacher_cls_tokens.chunk(n_global_crops_teacher)
            teacher_cls_tokens = torch.cat((teacher_cls_tokens[1], teacher_cls_tokens[0]))
            ibot_teacher_patch_tokens = teacher_backbone_output_dict["x_norm_patchtokens"]
            _dim = ibot_teacher_patch_tokens.shape[-1]
            n_cls_tokens = teacher_cls_tokens.shape[0]

            buffer_tensor_teacher = ibot_teacher_patch_tokens.new_zeros(
                upperbound + n_cls_tokens, _dim
            )
            buffer_tensor_teacher[:n_cls_tokens].copy_(teacher_cls_tokens)
            torch.index_select(
                ibot_teacher_patch_tokens.flatten(0, 1),
                dim=0,
                index=mask_indices_list,
                out=buffer_tensor_teacher[n_cls_tokens : n_cls_tokens + n_masked_patches],
            )
            tokens_after_head = self.teacher.dino_head(buffer_tensor_teacher)
            teacher_cls_tokens_after_head = tokens_after_head[:n_cls_tokens]
            masked_teacher_patch_tokens_after_head = tokens_after_head[
                n_cls_tokens : n_cls_tokens + n_masked_patches
            ]

            if self.cfg["centering"] == "centering":
                teacher_dino_softmaxed_centered_list = self.dino_loss.softmax_center_teacher(
                    teacher_cls_tokens_after_head, teacher_temp=teacher_temp
                ).view(n_global_crops_teacher, -1, *teacher_cls_tokens_after_head.shape[1:])
                self.dino_loss.update_center(teacher_cls_tokens_after_head)
                masked_teacher_patch_tokens_after_head = (
                    masked_teacher_patch_tokens_after_head.unsqueeze(0)
                )
                masked_teacher_ibot_softmaxed_centered = (
                    self.ibot_patch_loss.softmax_center_teacher(
                        masked_teacher_patch_tokens_after_head[:, :n_masked_patches],
                        teacher_temp=teacher_temp,
                    )
                )
                masked_teacher_ibot_softmaxed_centered = (
                    masked_teacher_ibot_softmaxed_centered.squeeze(0)
                )
                self.ibot_patch_loss.update_center(
                    masked_teacher_patch_tokens_after_head[:n_masked_patches]
                )
            elif self.cfg["centering"] == "sinkhorn_knopp":
                teacher_dino_softmaxed_centered_list = self.dino_loss.sinkhorn_knopp_teacher(
                    teacher_cls_tokens_after_head, teacher_temp=teacher_temp
                ).view(n_global_crops_teacher, -1, *teacher_cls_tokens_after_head.shape[1:])
                masked_teacher_ibot_softmaxed_centered = (
                    self.ibot_patch_loss.sinkhorn_knopp_teacher(
                        masked_teacher_patch_tokens_after_head,
                        teacher_temp=teacher_temp,
                        n_masked_patches_tensor=n_masked_patches_tensor,
                    )
                )
            else:
                raise NotImplementedError
            return teacher_dino_softmaxed_centered_list, masked_teacher_ibot_softmaxed_centered

        teacher_dino_softmaxed_centered_list, masked_teacher_ibot_softmaxed_centered = (
            get_teacher_output()
        )

        loss_dict = {}
        loss_accumulator = 0
        student_global_backbone_output_dict, student_local_backbone_output_dict = (
            self.student.backbone([global_crops, local_crops], masks=[masks, None])
        )
        inputs_for_student_head_list = []
        student_local_cls_tokens = student_local_backbone_output_dict["x_norm_clstoken"]
        inputs_for_student_head_list.append(student_local_cls_tokens.unsqueeze(0))
        student_global_cls_tokens = student_global_backbone_output_dict["x_norm_clstoken"]
        inputs_for_student_head_list.append(student_global_cls_tokens.unsqueeze(0))

        distill_teachers_output_dict = get_distill_teacher_output()
        if self.cfg["UNI_loss_ratio"] > 0:
            uni_cls_token = self.distill_heads.uni(student_global_cls_tokens.unsqueeze(1))
            distill_uni_loss = (
                self.distill_loss_fn(
                    uni_cls_token, distill_teachers_output_dict["uni"]["cls_token"].detach().clone()
                )
                * self.cfg["UNI_loss_ratio"]
            )
            loss_dict["distill_uni_cls_loss"] = distill_uni_loss
            loss_accumulator += distill_uni_loss
        if self.cfg["UNI_patch_ratio"] > 0:
            uni_patch_token = self.distill_heads.uni(
                student_global_backbone_output_dict["x_norm_patchtokens"]
            )
            distill_uni_patch_loss = (
                self.distill_feature_loss_fn(
                    uni_patch_token,
                    distill_teachers_output_dict["uni"]["patch_token"].detach().clone(),
                )
                * self.cfg["UNI_patch_ratio"]
            )
            loss_dict["distill_uni_patch_loss"] = distill_uni_patch_loss
            loss_accumulator += distill_uni_patch_loss
        if self.cfg["CONCH_loss_ratio"] > 0:
            conch_cls_token = self.distill_heads.conch(student_global_cls_tokens.unsqueeze(1))
            distill_conch_loss = (
                self.distill_loss_fn(
                    conch_cls_token,
                    distill_teachers_output_dict["conch"]["cls_token"].detach().clone(),
                )
                * self.cfg["CONCH_loss_ratio"]
            )
            loss_dict["distill_conch_cls_loss"] = distill_conch_loss
            loss_accumulator += distill_conch_loss

        if do_ibot:
            _dim = student_global_backbone_output_dict["x_norm_clstoken"].shape[-1]
            ibot_student_patch_tokens = student_global_backbone_output_dict["x_norm_patchtokens"]
            buffer_tensor_patch_tokens = ibot_student_patch_tokens.new_zeros(upperbound, _dim)
            buffer_tensor_patch_tokens[:n_masked_patches].copy_(
                torch.index_select(
                    ibot_student_patch_tokens.flatten(0, 1), dim=0, index=mask_indices_list
                )
            )
            inputs_for_student_head_list.append(buffer_tensor_patch_tokens.unsqueeze(0))

        # fmha.BlockDiagonalMask.from_tensor_list + split: one head call on the concatenation
        sizes = [t.shape[1] for t in inputs_for_student_head_list]
        cat_inputs = torch.cat(inputs_for_student_head_list, dim=1)
        outputs_list = list(self.student.dino_head(cat_inputs).split(sizes, dim=1))

        student_local_cls_tokens_after_head = outputs_list.pop(0).squeeze(0)
        student_global_cls_tokens_after_head = outputs_list.pop(0).squeeze(0)
        student_global_masked_patch_tokens_after_head = outputs_list.pop(0).squeeze(0)[
            :n_masked_patches
        ]

        if n_local_crops > 0:
            dino_local_crops_loss = self.dino_loss(
                student_output_list=student_local_cls_tokens_after_head.chunk(n_local_crops),
                teacher_out_softmaxed_centered_list=teacher_dino_softmaxed_centered_list,
            ) / (n_global_crops_loss_terms + n_local_crops_loss_terms)
            loss_dict["dino_local_crops_loss"] = dino_local_crops_loss
            loss_accumulator += self.dino_loss_weight * dino_local_crops_loss

        loss_scales = 2
        dino_global_crops_loss = (
            self.dino_loss(
                student_output_list=[student_global_cls_tokens_after_head],
                teacher_out_softmaxed_centered_list=[
                    teacher_dino_softmaxed_centered_list.flatten(0, 1)
                ],
            )
            * loss_scales
            / (n_global_crops_loss_terms + n_local_crops_loss_terms)
        )
        loss_dict["dino_global_crops_loss"] = dino_global_crops_loss
        loss_accumulator += self.dino_loss_weight * dino_global_crops_loss
        student_cls_tokens = student_global_cls_tokens
        koleo_loss = self.cfg["koleo_loss_weight"] * sum(
            self.koleo_loss(p) for p in student_cls_tokens.chunk(2)
        )
        loss_accumulator += koleo_loss
        loss_dict["koleo_loss"] = koleo_loss / loss_scales

        ibot_patch_loss = (
            self.ibot_patch_loss.forward_masked(
                student_global_masked_patch_tokens_after_head,
                masked_teacher_ibot_softmaxed_centered,
                student_masks_flat=masks,
                n_masked_patches=n_masked_patches,
                masks_weight=masks_weight,
            )
            * loss_scales
            * ibot_loss_scale
        )
        loss_dict["ibot_loss"] = ibot_patch_loss / 2
        loss_accumulator += self.ibot_loss_weight * ibot_patch_loss

        loss_accumulator.backward()
        return loss_dict, loss_accumulator

    def update_teacher(self, m):
        student_param_list = []
        teacher_param_list = []
        with torch.no_grad():
            for k in self.student.keys():
                student_param_list += list(self.student[k].parameters())
                teacher_param_list += list(self.teacher[k].parameters())
            torch._foreach_mul_(teacher_param_list, m)
            torch._foreach_add_(teacher_param_list, student_param_list, alpha=1 - m)


# ----------------------------------------------------------------------------------- the test

PROTOTYPES, HIDDEN, BOTTLENECK, N_LOCAL = 96, 48, 24, 4
TEST_DTYPE = torch.float64


def _head_state_for_reference(state):
    """Our weight-norm parametrisation's names -> torch.nn.utils.weight_norm's."""
    renamed = {}
    for key, value in state.items():
        key = key.replace("parametrizations.weight.original0", "weight_g")
        key = key.replace("parametrizations.weight.original1", "weight_v")
        renamed[key] = value
    return renamed


def _reference_name(ours):
    name = ours.replace("parametrizations.weight.original0", "weight_g")
    name = name.replace("parametrizations.weight.original1", "weight_v")
    if name.startswith("student.backbone."):
        return name.replace("student.backbone.", "student.backbone.vit.", 1)
    if name.startswith("loss.experts.heads."):
        return name.replace("loss.experts.heads.", "distill_heads.", 1)
    return name


def _build(centering):
    torch.manual_seed(0)
    vit_expert = create_vit("vit_tiny_patch16", depth=1, img_size=32, embed_dim=64, num_heads=2)
    embedding_model = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(12, 20))
    experts = {
        "uni": FrozenExpert(vit_expert, 64),
        "conch": FrozenExpert(
            embedding_model,
            20,
            forward=lambda x: {"cls": F.normalize(embedding_model(x), dim=-1), "patch": None},
        ),
    }
    specs = (ExpertSpec("uni", 64, 1.0, 0.25), ExpertSpec("conch", 20, 1.0, 0.0))
    config = LossConfig(
        prototypes=PROTOTYPES,
        head_hidden_dim=HIDDEN,
        head_bottleneck_dim=BOTTLENECK,
        centering=centering,
        experts=specs,
    )
    backbone = create_vit(
        "vit_tiny_patch16", patch_size=8, img_size=32, depth=2, embed_dim=48, num_heads=3
    )
    ours = DistillationModel(backbone, config, experts).train()

    cfg = {
        "prototypes": PROTOTYPES,
        "hidden": HIDDEN,
        "bottleneck": BOTTLENECK,
        "local_crops_number": N_LOCAL,
        "centering": "centering" if centering == "softmax" else "sinkhorn_knopp",
        "UNI_loss_ratio": 1.0,
        "UNI_patch_ratio": 0.25,
        "CONCH_loss_ratio": 1.0,
        "koleo_loss_weight": 0.1,
    }
    reference_experts = {
        "uni": RefViTExpert(copy.deepcopy(vit_expert)).eval(),
        "conch": RefEmbeddingExpert(copy.deepcopy(embedding_model), 20).eval(),
    }
    reference = RefSSLMetaArch(
        cfg,
        BackboneAdapter(copy.deepcopy(ours.student["backbone"])),
        BackboneAdapter(copy.deepcopy(ours.teacher["backbone"])),
        reference_experts,
    )
    for side in ("student", "teacher"):
        state = getattr(ours, side)["dino_head"].state_dict()
        getattr(reference, side)["dino_head"].load_state_dict(_head_state_for_reference(state))
    for name in ("uni", "conch"):
        state = ours.loss.experts.heads[name].state_dict()
        reference.distill_heads[name].load_state_dict(_head_state_for_reference(state))
    reference.train()
    reference.teacher.eval()
    for expert in (*experts.values(), *reference_experts.values()):
        expert.to(TEST_DTYPE)
    return ours.to(TEST_DTYPE), reference.to(TEST_DTYPE)


def _batch(seed):
    generator = torch.Generator().manual_seed(seed)
    samples = [
        {
            "global_crops": [
                torch.randn(3, 32, 32, generator=generator, dtype=TEST_DTYPE) for _ in range(2)
            ],
            "local_crops": [
                torch.randn(3, 16, 16, generator=generator, dtype=TEST_DTYPE)
                for _ in range(N_LOCAL)
            ],
        }
        for _ in range(4)
    ]
    batch = collate_multicrop(samples, BlockMaskingGenerator((4, 4)), rng=random.Random(seed))
    masks = batch["masks"]
    mask_indices_list = masks.flatten().nonzero().flatten()
    images = {
        "collated_global_crops": batch["global_crops"],
        "collated_local_crops": batch["local_crops"],
        "collated_masks": masks,
        "mask_indices_list": mask_indices_list,
        # data/collate.py:37, at the test's precision (the reference's is fp32, like ours)
        "masks_weight": (1 / masks.sum(-1).clamp(min=1.0).to(TEST_DTYPE))
        .unsqueeze(-1)
        .expand_as(masks)[masks],
        "upperbound": int(mask_indices_list.shape[0]) + 5,  # padding rows, as collate adds
        "n_masked_patches": torch.full((1,), mask_indices_list.shape[0], dtype=torch.long),
    }
    return batch, images


def _relative_error(ours, reference):
    scale = reference.abs().max().clamp(min=1e-12)
    return float((ours - reference).abs().max() / scale)


def _trainable(ours):
    return [(n, p) for n, p in ours.named_parameters() if p.requires_grad]


@pytest.mark.filterwarnings("ignore:.*weight_norm.*is deprecated:FutureWarning")
@pytest.mark.parametrize("centering", ["softmax", "sinkhorn"])
def test_the_objective_equals_gpfms_training_step(centering):
    ours, reference = _build(centering)
    reference_parameters = dict(reference.named_parameters())
    worst = 0.0
    for step, teacher_temp in enumerate((0.04, 0.05, 0.06)):
        batch, images = _batch(seed=step)
        ours.zero_grad(set_to_none=True)
        reference.zero_grad(set_to_none=True)
        terms = ours(batch, teacher_temp=teacher_temp)
        terms["total"].backward()
        loss_dict, total = reference.forward_backward(images, teacher_temp)

        expected = {
            "total": total,
            "dino": loss_dict["dino_local_crops_loss"] + loss_dict["dino_global_crops_loss"],
            "ibot": loss_dict["ibot_loss"] * 2,  # displayed halved (ssl_meta_arch.py:443)
            "koleo": loss_dict["koleo_loss"] * 2,  # displayed halved (ssl_meta_arch.py:424-426)
            "uni_cls": loss_dict["distill_uni_cls_loss"],
            "uni_patch": loss_dict["distill_uni_patch_loss"],
            "conch_cls": loss_dict["distill_conch_cls_loss"],
        }
        assert set(terms) == set(expected)
        for name, value in expected.items():
            error = _relative_error(terms[name].detach(), value.detach())
            assert error < 1e-9, (step, name, error)
            worst = max(worst, error)

        for name, parameter in _trainable(ours):
            other = reference_parameters[_reference_name(name)]
            assert (parameter.grad is None) == (other.grad is None), name
            if parameter.grad is not None:
                error = _relative_error(parameter.grad, other.grad)
                assert error < 1e-9, (step, name, error)
                worst = max(worst, error)

        with torch.no_grad():  # the same plain step on both sides, then the EMA
            for name, parameter in _trainable(ours):
                other = reference_parameters[_reference_name(name)]
                if parameter.grad is not None:
                    parameter -= 0.5 * parameter.grad
                    other -= 0.5 * other.grad
        ours.update_teacher(0.9)
        reference.update_teacher(0.9)
    print(f"golden test ({centering}): worst relative error {worst:.2e}")
