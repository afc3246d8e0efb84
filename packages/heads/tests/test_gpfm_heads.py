"""protocol="gpfm" MIL heads and survival loss equal transcriptions of the GPFM paper's code.

Reference: birkhoffkiki/GPFM at commit 4f8be2b. Each ``Reference*`` class below is written from
the cited lines (einops calls spelled out as reshapes; ``.cuda()`` calls dropped); weights are
copied into ours by position and outputs compared on fixed inputs.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gpfm.heads import ABMIL, InvalidInputError, make_mil
from gpfm.heads.mil_gpfm import (
    AveragedDSMIL,
    InstanceMaxMIL,
    InstanceMeanMIL,
    NystromTransMIL,
    load_reference_state_dict,
)
from gpfm.heads.survival import nll_survival_loss, risk_score


def subtyping_adapter(logits):
    """mil_models/toolkit.py:34-45."""
    return logits, F.softmax(logits, dim=1), torch.topk(logits, 1, dim=1)[1]


class ReferenceDAttention(nn.Module):
    """mil_models/att_mil.py:9-59 (dropout=True, act='relu', as mil_models/__init__.py:34-36)."""

    def __init__(self, in_dim, n_classes):
        super().__init__()
        self.feature = nn.Sequential(nn.Linear(in_dim, 512), nn.ReLU(), nn.Dropout(0.25))
        self.attention = nn.Sequential(nn.Linear(512, 128), nn.Tanh(), nn.Linear(128, 1))
        self.classifier = nn.Sequential(nn.Linear(512, n_classes))

    def forward(self, x):
        feature = self.feature(x).squeeze()
        a = torch.transpose(self.attention(feature), -1, -2)
        a = F.softmax(a, dim=-1)
        return subtyping_adapter(self.classifier(torch.mm(a, feature)))[0], a


def reference_initialize_weights(module):
    """mil_models/mean_max_mil.py:7-19 and trans_mil.py:212-220 (the Linear/LayerNorm parts)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                m.bias.data.zero_()
        if isinstance(m, nn.LayerNorm):
            nn.init.constant_(m.bias, 0)
            nn.init.constant_(m.weight, 1.0)


class ReferenceMeanMIL(nn.Module):
    """mil_models/mean_max_mil.py:22-56."""

    def __init__(self, in_dim, n_classes, pool="mean"):
        super().__init__()
        self.head = nn.Sequential(
            nn.Linear(in_dim, 512), nn.ReLU(), nn.Dropout(0.25), nn.Linear(512, n_classes)
        )
        self.pool = pool
        self.apply(reference_initialize_weights)

    def forward(self, x):
        logits = self.head(x)
        if self.pool == "mean":  # :47
            return torch.mean(logits, dim=0, keepdim=True)
        return torch.max(logits, dim=0, keepdim=True)[0]  # mean_max_mil.py:88


class ReferenceDSMIL(nn.Module):
    """mil_models/ds_mil.py:8-82 with FCLayer, BClassifier(dropout_v=0.25), MILNet."""

    def __init__(self, in_dim, n_classes):
        super().__init__()
        self.i_fc = nn.Sequential(nn.Linear(in_dim, n_classes))  # :11
        self.q = nn.Linear(in_dim, 128)  # :33
        self.v = nn.Sequential(nn.Dropout(0.25), nn.Linear(in_dim, in_dim))  # :34-37
        self.fcc = nn.Conv1d(n_classes, n_classes, kernel_size=in_dim)  # :40

    def forward(self, x):
        feats, classes = x, self.i_fc(x)  # :12-14
        v = self.v(feats)  # :44
        q = self.q(feats).view(feats.shape[0], -1)  # :45
        _, m_indices = torch.sort(classes, 0, descending=True)  # :48
        m_feats = torch.index_select(feats, dim=0, index=m_indices[0, :])  # :49
        q_max = self.q(m_feats)  # :50
        a = torch.mm(q, q_max.transpose(0, 1))  # :51
        a = F.softmax(a / torch.sqrt(torch.tensor(q.shape[1], dtype=torch.float32)), 0)  # :52
        b = torch.mm(a.transpose(0, 1), v).view(1, classes.shape[1], -1)  # :53-55
        prediction_bag = self.fcc(b).view(1, -1)  # :56-57
        max_prediction, _ = torch.max(classes, 0)  # :71
        return 0.5 * (prediction_bag + max_prediction)  # :73


def reference_pinv(x, iters=6):
    """mil_models/trans_mil.py:16-31."""
    abs_x = torch.abs(x)
    col = abs_x.sum(dim=-1)
    row = abs_x.sum(dim=-2)
    z = x.transpose(-1, -2) / (torch.max(col) * torch.max(row))
    eye = torch.eye(x.shape[-1]).unsqueeze(0)
    for _ in range(iters):
        xz = x @ z
        z = 0.25 * z @ (13 * eye - (xz @ (15 * eye - (xz @ (7 * eye - xz)))))
    return z


class ReferenceNystromAttention(nn.Module):
    """mil_models/trans_mil.py:34-152, called without a mask (TransLayer, :223-239)."""

    def __init__(self, dim, dim_head, heads, num_landmarks, dropout):
        super().__init__()
        self.eps, self.num_landmarks, self.heads = 1e-8, num_landmarks, heads
        self.scale = dim_head**-0.5
        self.to_qkv = nn.Linear(dim, heads * dim_head * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * dim_head, dim), nn.Dropout(dropout))
        self.res_conv = nn.Conv2d(heads, heads, (33, 1), padding=(16, 0), groups=heads, bias=False)

    def forward(self, x):
        b, n, _ = x.shape
        h, m = self.heads, self.num_landmarks
        remainder = n % m  # :74-77
        if remainder > 0:
            x = F.pad(x, (0, 0, m - (n % m), 0), value=0)
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)  # :84-85, 'b n (h d) -> b h n d'
        q, k, v = (t.reshape(b, t.shape[1], h, -1).transpose(1, 2) for t in (q, k, v))
        q = q * self.scale
        length = math.ceil(n / m)  # :97-100, reduce '... (n l) d -> ... n d' with sum
        q_landmarks = q.reshape(b, h, -1, length, q.shape[-1]).sum(dim=3)
        k_landmarks = k.reshape(b, h, -1, length, k.shape[-1]).sum(dim=3)
        q_landmarks /= length  # :104, :112-113
        k_landmarks /= length
        sim1 = torch.einsum("...id,...jd->...ij", q, k_landmarks)
        sim2 = torch.einsum("...id,...jd->...ij", q_landmarks, k_landmarks)
        sim3 = torch.einsum("...id,...jd->...ij", q_landmarks, k)
        attn1, attn2, attn3 = (t.softmax(dim=-1) for t in (sim1, sim2, sim3))
        out = (attn1 @ reference_pinv(attn2, 6)) @ (attn3 @ v)  # :133-135
        out += self.res_conv(v)  # :140
        out = out.transpose(1, 2).reshape(b, out.shape[2], -1)  # 'b h n d -> b n (h d)'
        return self.to_out(out)[:, -n:]


class ReferenceTransLayer(nn.Module):
    def __init__(self, dim=512):  # trans_mil.py:223-239
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = ReferenceNystromAttention(dim, dim // 8, 8, dim // 2, 0.1)

    def forward(self, x):
        return x + self.attn(self.norm(x))


class ReferencePPEG(nn.Module):
    def __init__(self, dim=512):  # trans_mil.py:242-256
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 7, 1, 7 // 2, groups=dim)
        self.proj1 = nn.Conv2d(dim, dim, 5, 1, 5 // 2, groups=dim)
        self.proj2 = nn.Conv2d(dim, dim, 3, 1, 3 // 2, groups=dim)

    def forward(self, x, height, width):
        batch, _, channels = x.shape
        cls_token, feat_token = x[:, 0], x[:, 1:]
        cnn_feat = feat_token.transpose(1, 2).view(batch, channels, height, width)
        x = self.proj(cnn_feat) + cnn_feat + self.proj1(cnn_feat) + self.proj2(cnn_feat)
        return torch.cat((cls_token.unsqueeze(1), x.flatten(2).transpose(1, 2)), dim=1)


class ReferenceTransMIL(nn.Module):
    """mil_models/trans_mil.py:259-323 (dropout=True, act='relu')."""

    def __init__(self, in_dim, n_classes):
        super().__init__()
        self._fc1 = nn.Sequential(nn.Linear(in_dim, 512), nn.ReLU(), nn.Dropout(0.25))
        self.pos_layer = ReferencePPEG(dim=512)
        self.cls_token = nn.Parameter(torch.randn(1, 1, 512))
        nn.init.normal_(self.cls_token, std=1e-6)
        self.layer1 = ReferenceTransLayer(dim=512)
        self.layer2 = ReferenceTransLayer(dim=512)
        self.norm = nn.LayerNorm(512)
        self.classifier = nn.Linear(512, n_classes)
        self.apply(reference_initialize_weights)

    def forward(self, x):
        h = self._fc1(x.expand(1, -1, -1).float())
        big_h = h.shape[1]
        side = int(np.ceil(np.sqrt(big_h)))
        h = torch.cat([h, h[:, : side * side - big_h, :]], dim=1)  # :296
        h = torch.cat((self.cls_token.expand(1, -1, -1), h), dim=1)
        h = self.pos_layer(self.layer1(h), side, side)
        h = self.norm(self.layer2(h))[:, 0]
        return self.classifier(h)


def assert_same_weights(ours: nn.Module, reference: nn.Module) -> None:
    """The same tensors, position by position (names differ)."""
    pairs = zip(ours.state_dict().values(), reference.state_dict().values(), strict=True)
    for mine, theirs in pairs:
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)


def _bag(n: int, dim: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32))


def test_att_mil_equals_reference_and_loads_its_weights_by_position():
    torch.manual_seed(0)
    reference = ReferenceDAttention(24, 3).eval()
    torch.manual_seed(0)  # the same draws in the same order: the same initial weights
    ours = make_mil("att_mil", 24, 3, protocol="gpfm").eval()
    assert isinstance(ours, ABMIL)
    assert_same_weights(ours, reference)
    torch.manual_seed(1)
    reference = ReferenceDAttention(24, 3).eval()
    load_reference_state_dict(ours, reference.state_dict())
    bag = _bag(37, 24, 0)
    with torch.no_grad():
        expected_logits, expected_attention = reference(bag)
        output = ours(bag)
    torch.testing.assert_close(output.logits, expected_logits, rtol=0, atol=1e-6)
    torch.testing.assert_close(output.attention, expected_attention, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "pool", "model_class"),
    [("mean", "mean", InstanceMeanMIL), ("max", "max", InstanceMaxMIL)],
)
def test_mean_and_max_pool_tile_logits_as_the_reference(name, pool, model_class):
    torch.manual_seed(0)
    reference = ReferenceMeanMIL(16, 4, pool).eval()
    torch.manual_seed(0)
    ours = make_mil(f"{name}_mil", 16, 4, protocol="gpfm").eval()
    assert isinstance(ours, model_class)
    assert_same_weights(ours, reference)
    bags = [_bag(n, 16, n) for n in (5, 29)]
    padded = torch.zeros(2, 29, 16)
    mask = torch.zeros(2, 29, dtype=torch.bool)
    for row, bag in enumerate(bags):
        padded[row, : len(bag)], mask[row, : len(bag)] = bag, True
    with torch.no_grad():
        output = ours(padded, mask)
        expected = torch.cat([reference(bag) for bag in bags])
    torch.testing.assert_close(output.logits, expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(output.attention.sum(dim=1), torch.ones(2))


def test_ds_mil_equals_reference():
    torch.manual_seed(0)
    reference = ReferenceDSMIL(32, 3).eval()
    torch.manual_seed(0)
    ours = make_mil("ds_mil", 32, 3, protocol="gpfm").eval()
    assert isinstance(ours, AveragedDSMIL)
    assert_same_weights(ours, reference)
    bag = _bag(41, 32, 3)
    with torch.no_grad():
        torch.testing.assert_close(ours(bag).logits, reference(bag), rtol=0, atol=1e-6)


@pytest.mark.parametrize("n_tiles", [1, 7, 70, 300])
def test_trans_mil_equals_reference_with_nystrom_attention(n_tiles):
    torch.manual_seed(0)
    reference = ReferenceTransMIL(20, 2).eval()
    torch.manual_seed(0)
    ours = make_mil("trans_mil", 20, 2, protocol="gpfm").eval()
    assert isinstance(ours, NystromTransMIL)
    assert_same_weights(ours, reference)
    bag = _bag(n_tiles, 20, n_tiles)
    with torch.no_grad():
        torch.testing.assert_close(ours(bag).logits, reference(bag), rtol=1e-5, atol=1e-5)


def test_clam_has_no_gpfm_variant_and_a_bad_state_dict_is_refused():
    with pytest.raises(InvalidInputError, match="topk"):
        make_mil("clam_sb", 8, 2, protocol="gpfm")
    with pytest.raises(InvalidInputError, match="protocol"):
        make_mil("abmil", 8, 2, protocol="paper")  # type: ignore[arg-type]
    ours = make_mil("abmil", 8, 2, protocol="gpfm")
    with pytest.raises(InvalidInputError, match="does not fit"):
        load_reference_state_dict(ours, ReferenceDAttention(9, 2).state_dict())


def reference_nll_loss(hazards, s, y, c, alpha=0.4, eps=1e-7):
    """utils/survival_utils.py:266-282."""
    batch_size = len(y)
    y = y.view(batch_size, 1)
    c = c.view(batch_size, 1).float()
    if s is None:
        s = torch.cumprod(1 - hazards, dim=1)
    s_padded = torch.cat([torch.ones_like(c), s], 1)
    uncensored_loss = -(1 - c) * (
        torch.log(torch.gather(s_padded, 1, y).clamp(min=eps))
        + torch.log(torch.gather(hazards, 1, y).clamp(min=eps))
    )
    censored_loss = -c * torch.log(torch.gather(s_padded, 1, y + 1).clamp(min=eps))
    neg_l = censored_loss + uncensored_loss
    loss = (1 - alpha) * neg_l + alpha * uncensored_loss
    return loss.mean()


def test_survival_nll_and_risk_equal_reference_including_clamped_extremes():
    rng = np.random.default_rng(0)
    logits = torch.from_numpy(rng.normal(scale=3.0, size=(64, 4)))
    logits[:4] = torch.tensor([[30.0, -30.0, 30.0, 25.0]])  # probabilities below the clamp
    bins = torch.from_numpy(rng.integers(0, 4, 64))
    censorship = torch.from_numpy(rng.integers(0, 2, 64))
    hazards = torch.sigmoid(logits)  # toolkit.py:19-31, the survival adapter
    survival = torch.cumprod(1 - hazards, dim=1)
    expected = reference_nll_loss(hazards, survival, bins, censorship, alpha=0.0)
    ours = nll_survival_loss(logits, bins, 1 - censorship, 0.0, eps=1e-7)
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(risk_score(logits), -torch.sum(survival, dim=1))  # core_trainer:580
