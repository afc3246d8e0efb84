"""Multiple-instance learning (MIL) aggregators: a bag of tile features in, slide logits out.

Every model takes ``features`` (B, N, D) — or one bag (N, D) — and an optional padding ``mask``
(B, N) bool (True = a real tile), and returns a ``MILOutput`` with ``logits`` (B, C) and
``attention`` (B, N): a per-tile score that sums to 1 over the tiles of a bag and is 0 at
padding. A padded batch gives the same outputs as its bags one at a time.

- ``ABMIL``: gated attention pooling (Ilse et al. 2018, with CLAM's layer sizes).
- ``TransMIL``: two transformer layers around a convolutional position encoding on a square
  grid (Shao et al. 2021), with exact attention (PyTorch SDPA).
- ``CLAM_SB``: ABMIL plus CLAM's instance-clustering loss (Lu et al. 2021).
- ``DSMIL``: dual-stream max-instance + critical-instance attention (Li et al. 2021).
- ``MeanMIL`` / ``MaxMIL``: pooling baselines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpfm.heads.errors import InvalidInputError
from gpfm.heads.protocol import EvalProtocol, check_protocol


@dataclass
class MILOutput:
    """What a MIL model returns.

    Attributes:
        logits: (B, C) bag logits (class logits, or hazard logits per time bin for survival).
        attention: (B, N) per-tile scores, summing to 1 over each bag's tiles, 0 at padding.
        instance_logits: (B, C) logits of a second stream trained with the same loss as
            ``logits`` (DSMIL's max-instance stream), or None.
        aux_loss: a weighted scalar loss to add to the bag loss (CLAM's instance clustering),
            or None.
    """

    logits: Tensor
    attention: Tensor
    instance_logits: Tensor | None = None
    aux_loss: Tensor | None = None


def as_batch(features: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor]:
    """Return ``features`` as (B, N, D) and ``mask`` as (B, N) bool (all True when None)."""
    if features.ndim == 2:
        features = features.unsqueeze(0)
        mask = mask.unsqueeze(0) if mask is not None and mask.ndim == 1 else mask
    if features.ndim != 3:
        raise InvalidInputError(
            f"features must be (N, D) or (B, N, D), got shape {tuple(features.shape)}"
        )
    if mask is None:
        mask = torch.ones(features.shape[:2], dtype=torch.bool, device=features.device)
    if mask.shape != features.shape[:2]:
        raise InvalidInputError(
            f"mask shape {tuple(mask.shape)} does not match features {tuple(features.shape)}"
        )
    mask = mask.to(torch.bool)
    if not bool(mask.any(dim=1).all()):
        raise InvalidInputError("every bag needs at least one tile; a mask row is all False")
    return features, mask


def masked_softmax(scores: Tensor, mask: Tensor, dim: int = 1) -> Tensor:
    """Softmax of ``scores`` over ``dim`` counting only positions where ``mask`` is True.

    Computed in float32; masked positions are exactly 0.
    """
    scores = scores.float().masked_fill(~mask, float("-inf"))
    return torch.softmax(scores, dim=dim).masked_fill(~mask, 0.0)


def masked_mean(values: Tensor, mask: Tensor) -> Tensor:
    """Mean over the N axis of (B, N, H) ``values`` at the True positions of (B, N) ``mask``."""
    weights = mask.to(values.dtype).unsqueeze(-1)
    return (values * weights).sum(dim=1) / weights.sum(dim=1)


class GatedAttention(nn.Module):
    """Attention scores of tiles: w · (tanh(V h) ⊙ sigmoid(U h)) (or without the gate).

    Maps (B, N, in_dim) to raw scores (B, N); pool with ``masked_softmax``.
    """

    def __init__(
        self, in_dim: int, attention_dim: int, dropout: float = 0.0, gated: bool = True
    ) -> None:
        super().__init__()
        self.value = nn.Sequential(nn.Linear(in_dim, attention_dim), nn.Tanh(), nn.Dropout(dropout))
        self.gate = (
            nn.Sequential(nn.Linear(in_dim, attention_dim), nn.Sigmoid(), nn.Dropout(dropout))
            if gated
            else None
        )
        self.score = nn.Linear(attention_dim, 1)

    def forward(self, hidden: Tensor) -> Tensor:
        projected = self.value(hidden)
        if self.gate is not None:
            projected = projected * self.gate(hidden)
        return self.score(projected).squeeze(-1)


def _embedding(in_dim: int, hidden_dim: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))


class ABMIL(nn.Module):
    """Attention-based MIL: embed tiles, weight them by gated attention, classify the sum.

    Args:
        in_dim: D, the tile feature dimension.
        n_classes: C, the number of outputs (classes, or time bins for survival).
        hidden_dim: tile embedding size (CLAM: 512).
        attention_dim: attention network width (CLAM: 256).
        dropout: dropout after the embedding and inside the attention network.
        gated: gated attention (True) or plain tanh attention.
        attention_dropout: dropout inside the attention network (default: ``dropout``; the
            GPFM paper's ``att_mil`` has none).

    ``make_mil("abmil", ..., protocol="gpfm")`` is GPFM's ``att_mil``: hidden_dim 512,
    attention_dim 128, not gated, attention_dropout 0; its parameters are in the reference's
    order, so a reference state dict loads by position.
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        hidden_dim: int = 512,
        attention_dim: int = 256,
        dropout: float = 0.25,
        gated: bool = True,
        attention_dropout: float | None = None,
    ) -> None:
        super().__init__()
        self.in_dim, self.n_classes = in_dim, n_classes
        self.embed = _embedding(in_dim, hidden_dim, dropout)
        self.attention = GatedAttention(
            hidden_dim,
            attention_dim,
            dropout if attention_dropout is None else attention_dropout,
            gated,
        )
        self.classifier = nn.Linear(hidden_dim, n_classes)

    def forward(
        self, features: Tensor, mask: Tensor | None = None, target: Tensor | None = None
    ) -> MILOutput:
        """``features`` (B, N, D) or (N, D), ``mask`` (B, N) -> logits (B, C), attention (B, N).

        ``target`` is accepted for a common signature and not used.
        """
        features, mask = as_batch(features, mask)
        hidden = self.embed(features)
        attention = masked_softmax(self.attention(hidden), mask)
        pooled = torch.bmm(attention.unsqueeze(1).to(hidden.dtype), hidden).squeeze(1)
        return MILOutput(self.classifier(pooled), attention)


class CLAM_SB(nn.Module):  # noqa: N801 - the name the literature uses
    """CLAM single-branch: gated-attention MIL plus an instance-clustering loss.

    With ``target`` (B,) class labels given, the tiles with the k highest attention scores are
    taught to be "positive" and the k lowest "negative" by the true class's instance classifier;
    with ``subtyping=True`` the k highest are also taught "negative" by every other class's
    classifier. The loss, averaged over bags (and over classifiers when subtyping), times
    ``instance_weight``, is returned as ``aux_loss``; CLAM's 0.7 · bag + 0.3 · instance is
    ``instance_weight = 3/7`` up to an overall scale. Bags with fewer than 2 tiles add nothing.

    Args:
        in_dim, n_classes, hidden_dim, attention_dim, dropout, gated: as for ``ABMIL``.
        k_sample: tiles taken from each end of the attention ranking (CLAM: 8), fewer in small
            bags (at most half the bag).
        instance_weight: weight of the instance loss relative to the bag loss.
        subtyping: also apply out-of-class instance losses (mutually exclusive subtypes).
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        hidden_dim: int = 512,
        attention_dim: int = 256,
        dropout: float = 0.25,
        gated: bool = True,
        k_sample: int = 8,
        instance_weight: float = 3 / 7,
        subtyping: bool = False,
    ) -> None:
        super().__init__()
        self.in_dim, self.n_classes = in_dim, n_classes
        self.k_sample, self.instance_weight, self.subtyping = k_sample, instance_weight, subtyping
        self.embed = _embedding(in_dim, hidden_dim, dropout)
        self.attention = GatedAttention(hidden_dim, attention_dim, dropout, gated)
        self.classifier = nn.Linear(hidden_dim, n_classes)
        self.instance_classifiers = nn.ModuleList(
            nn.Linear(hidden_dim, 2) for _ in range(n_classes)
        )

    def forward(
        self, features: Tensor, mask: Tensor | None = None, target: Tensor | None = None
    ) -> MILOutput:
        """As ``ABMIL``; with ``target`` (B,) int64 class labels, also the instance loss."""
        features, mask = as_batch(features, mask)
        hidden = self.embed(features)
        scores = self.attention(hidden)
        attention = masked_softmax(scores, mask)
        pooled = torch.bmm(attention.unsqueeze(1).to(hidden.dtype), hidden).squeeze(1)
        output = MILOutput(self.classifier(pooled), attention)
        if target is not None:
            output.aux_loss = self.instance_weight * self._instance_loss(
                hidden, scores, mask, target
            )
        return output

    def _instance_loss(
        self, hidden: Tensor, scores: Tensor, mask: Tensor, target: Tensor
    ) -> Tensor:
        losses = []
        for row in range(hidden.shape[0]):
            valid = mask[row]
            bag_hidden, bag_scores = hidden[row][valid], scores[row][valid].float()
            k = min(self.k_sample, bag_hidden.shape[0] // 2)
            if k == 0:
                continue
            top = torch.topk(bag_scores, k).indices
            bottom = torch.topk(-bag_scores, k).indices
            label = int(target[row])
            terms = []
            for cls, instance_classifier in enumerate(self.instance_classifiers):
                if cls == label:
                    chosen = torch.cat([bag_hidden[top], bag_hidden[bottom]])
                    wanted = torch.cat([hidden.new_ones(k), hidden.new_zeros(k)]).long()
                elif self.subtyping:
                    chosen, wanted = bag_hidden[top], hidden.new_zeros(k).long()
                else:
                    continue
                terms.append(F.cross_entropy(instance_classifier(chosen).float(), wanted))
            bag_loss = torch.stack(terms).sum()
            losses.append(bag_loss / len(self.instance_classifiers) if self.subtyping else bag_loss)
        if not losses:
            return hidden.new_zeros((), dtype=torch.float32)
        return torch.stack(losses).mean()


class DSMIL(nn.Module):
    """Dual-stream MIL: a max-instance stream and attention to each class's critical instance.

    Stream 1 scores every tile per class and keeps the maximum: ``instance_logits`` (B, C).
    Stream 2 finds each class's highest-scoring ("critical") tile, attends from it to all tiles
    by query similarity, and classifies the C attention-pooled embeddings with a 1-D convolution:
    ``logits`` (B, C). Train both with the same loss, averaged (as the training loop does).
    ``attention`` is the class-averaged attention (B, N).

    Args:
        in_dim: D. n_classes: C.
        hidden_dim: width of the value projection (pooled embeddings).
        query_dim: width of the query projection (DSMIL: 128).
        dropout: dropout on the values.
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        hidden_dim: int = 512,
        query_dim: int = 128,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.in_dim, self.n_classes = in_dim, n_classes
        self.instance_classifier = nn.Linear(in_dim, n_classes)
        self.query = nn.Sequential(
            nn.Linear(in_dim, query_dim), nn.ReLU(), nn.Linear(query_dim, query_dim), nn.Tanh()
        )
        self.value = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, hidden_dim))
        self.bag_classifier = nn.Conv1d(n_classes, n_classes, kernel_size=hidden_dim)

    def forward(
        self, features: Tensor, mask: Tensor | None = None, target: Tensor | None = None
    ) -> MILOutput:
        """``features`` (B, N, D) -> logits (B, C), instance_logits (B, C), attention (B, N)."""
        features, mask = as_batch(features, mask)
        instance_scores = self.instance_classifier(features).float()  # (B, N, C)
        instance_scores = instance_scores.masked_fill(~mask.unsqueeze(-1), float("-inf"))
        instance_logits, critical = instance_scores.max(dim=1)  # (B, C)
        queries = self.query(features)  # (B, N, Q)
        critical_queries = torch.gather(
            queries, 1, critical.unsqueeze(-1).expand(-1, -1, queries.shape[-1])
        )  # (B, C, Q)
        similarity = torch.bmm(queries, critical_queries.transpose(1, 2)) / math.sqrt(
            queries.shape[-1]
        )  # (B, N, C)
        attention = masked_softmax(similarity, mask.unsqueeze(-1).expand_as(similarity))
        values = self.value(features)  # (B, N, V)
        pooled = torch.bmm(attention.transpose(1, 2).to(values.dtype), values)  # (B, C, V)
        logits = self.bag_classifier(pooled).squeeze(-1)
        return MILOutput(logits, attention.mean(dim=-1), instance_logits=instance_logits)


class MeanMIL(nn.Module):
    """Baseline: embed tiles, average them, classify. ``attention`` is 1/N on every tile."""

    def __init__(
        self, in_dim: int, n_classes: int, hidden_dim: int = 512, dropout: float = 0.25
    ) -> None:
        super().__init__()
        self.in_dim, self.n_classes = in_dim, n_classes
        self.embed = _embedding(in_dim, hidden_dim, dropout)
        self.classifier = nn.Linear(hidden_dim, n_classes)

    def forward(
        self, features: Tensor, mask: Tensor | None = None, target: Tensor | None = None
    ) -> MILOutput:
        """``features`` (B, N, D) -> logits (B, C), attention (B, N) uniform over tiles."""
        features, mask = as_batch(features, mask)
        pooled = masked_mean(self.embed(features), mask)
        attention = mask.float() / mask.sum(dim=1, keepdim=True)
        return MILOutput(self.classifier(pooled), attention)


class MaxMIL(MeanMIL):
    """Baseline: embed tiles, take the maximum of each embedding dimension, classify.

    ``attention`` of a tile is the fraction of embedding dimensions whose maximum it supplies.
    """

    def forward(
        self, features: Tensor, mask: Tensor | None = None, target: Tensor | None = None
    ) -> MILOutput:
        """``features`` (B, N, D) -> logits (B, C), attention (B, N)."""
        features, mask = as_batch(features, mask)
        hidden = self.embed(features).masked_fill(~mask.unsqueeze(-1), float("-inf"))
        pooled, winners = hidden.max(dim=1)  # (B, H)
        counts = torch.zeros(mask.shape, device=hidden.device, dtype=torch.float32)
        counts.scatter_add_(1, winners, torch.ones_like(winners, dtype=torch.float32))
        return MILOutput(self.classifier(pooled), counts / winners.shape[1])


class _SelfAttention(nn.Module):
    """Pre-norm multi-head self-attention with a residual, over padded sequences."""

    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        if dim % n_heads:
            raise InvalidInputError(f"hidden_dim {dim} must be divisible by n_heads {n_heads}")
        self.n_heads, self.dropout = n_heads, dropout
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, tokens: Tensor, key_mask: Tensor) -> tuple[Tensor, Tensor]:
        """tokens (B, L, H), key_mask (B, L) -> (tokens, attention of token 0 to all (B, L))."""
        batch, length, dim = tokens.shape
        qkv = self.qkv(self.norm(tokens)).view(batch, length, 3, self.n_heads, -1)
        query, key, value = qkv.permute(2, 0, 3, 1, 4)  # each (B, heads, L, H/heads)
        attend = key_mask[:, None, None, :]
        mixed = F.scaled_dot_product_attention(
            query, key, value, attn_mask=attend, dropout_p=self.dropout if self.training else 0.0
        )
        mixed = mixed.transpose(1, 2).reshape(batch, length, dim)
        # The first token's attention weights, computed explicitly: one query row is cheap.
        first = query[:, :, :1].float() @ key.float().transpose(-1, -2) / math.sqrt(key.shape[-1])
        first_attention = masked_softmax(first.squeeze(2), key_mask[:, None, :], dim=-1)
        return tokens + self.proj(mixed), first_attention.mean(dim=1)


class _PPEG(nn.Module):
    """TransMIL's position encoding: depthwise 7/5/3 convolutions on the tiles' square grid.

    Each bag is laid out row by row on its own ceil(sqrt(N)) wide grid, placed in the corner of
    the batch's largest grid; the zeros around it equal the convolutions' own zero padding, so a
    bag's encoding does not depend on the other bags of its batch.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            nn.Conv2d(dim, dim, size, padding=size // 2, groups=dim) for size in (7, 5, 3)
        )

    def forward(self, tokens: Tensor, mask: Tensor) -> Tensor:
        batch, _, dim = tokens.shape
        counts = mask.sum(dim=1)
        sides = torch.ceil(torch.sqrt(counts.double())).long()  # (B,)
        side = int(sides.max())
        rank = mask.long().cumsum(dim=1) - 1  # position of each tile among its bag's tiles
        cell = (rank // sides[:, None]) * side + rank % sides[:, None]
        cell = torch.where(mask, cell, torch.full_like(cell, side * side))  # padding -> spare cell
        grid = tokens.new_zeros(batch, side * side + 1, dim)
        grid.scatter_(1, cell.unsqueeze(-1).expand(-1, -1, dim), tokens)
        image = grid[:, : side * side].transpose(1, 2).reshape(batch, dim, side, side)
        encoded = image
        for conv in self.convs:
            encoded = encoded + conv(image)
        flat = encoded.reshape(batch, dim, side * side).transpose(1, 2)
        flat = torch.cat([flat, flat.new_zeros(batch, 1, dim)], dim=1)
        return torch.gather(flat, 1, cell.unsqueeze(-1).expand(-1, -1, dim))


class TransMIL(nn.Module):
    """TransMIL: a class token and the tiles through attention, position encoding, attention.

    Exact multi-head attention (PyTorch ``scaled_dot_product_attention``, memory-efficient
    kernels on GPU); cost grows with N², so sample ``max_instances`` tiles for very large bags
    when memory is short. ``attention`` is the class token's head-averaged attention to the
    tiles in the last layer, renormalised over the tiles.

    Args:
        in_dim: D. n_classes: C.
        hidden_dim: token width (TransMIL: 512).
        n_heads: attention heads (TransMIL: 8).
        dropout: attention dropout.
    """

    def __init__(
        self,
        in_dim: int,
        n_classes: int,
        hidden_dim: int = 512,
        n_heads: int = 8,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.in_dim, self.n_classes = in_dim, n_classes
        self.embed = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU())
        self.class_token = nn.Parameter(torch.zeros(1, 1, hidden_dim))
        nn.init.normal_(self.class_token, std=1e-6)
        self.layer1 = _SelfAttention(hidden_dim, n_heads, dropout)
        self.position = _PPEG(hidden_dim)
        self.layer2 = _SelfAttention(hidden_dim, n_heads, dropout)
        self.norm = nn.LayerNorm(hidden_dim)
        self.classifier = nn.Linear(hidden_dim, n_classes)

    def forward(
        self, features: Tensor, mask: Tensor | None = None, target: Tensor | None = None
    ) -> MILOutput:
        """``features`` (B, N, D) or (N, D), ``mask`` (B, N) -> logits (B, C), attention (B, N)."""
        features, mask = as_batch(features, mask)
        hidden = self.embed(features)
        batch = hidden.shape[0]
        tokens = torch.cat([self.class_token.expand(batch, -1, -1).to(hidden.dtype), hidden], 1)
        key_mask = torch.cat([mask.new_ones(batch, 1), mask], dim=1)
        tokens, _ = self.layer1(tokens, key_mask)
        tiles = self.position(tokens[:, 1:], mask)
        tokens = torch.cat([tokens[:, :1], tiles], dim=1)
        tokens, class_attention = self.layer2(tokens, key_mask)
        logits = self.classifier(self.norm(tokens[:, 0]))
        tile_attention = class_attention[:, 1:] * mask
        tile_attention = tile_attention / tile_attention.sum(dim=1, keepdim=True).clamp_min(1e-12)
        return MILOutput(logits, tile_attention)


MIL_MODELS: dict[str, type[nn.Module]] = {
    "abmil": ABMIL,
    "transmil": TransMIL,
    "clam_sb": CLAM_SB,
    "dsmil": DSMIL,
    "mean": MeanMIL,
    "max": MaxMIL,
}
_ALIASES = {"att_mil": "abmil", "trans_mil": "transmil", "ds_mil": "dsmil"}
_ALIASES |= {"mean_mil": "mean", "max_mil": "max"}


def _gpfm_model(name: str, in_dim: int, n_classes: int, options: dict[str, Any]) -> nn.Module:
    from gpfm.heads import mil_gpfm  # imports this module

    if name == "abmil":
        settings: dict[str, Any] = {"hidden_dim": 512, "attention_dim": 128, "gated": False}
        settings |= {"attention_dropout": 0.0, "dropout": 0.25}
        return ABMIL(in_dim, n_classes, **(settings | options))
    gpfm_models: dict[str, type[nn.Module]] = {
        "transmil": mil_gpfm.NystromTransMIL,
        "dsmil": mil_gpfm.AveragedDSMIL,
        "mean": mil_gpfm.InstanceMeanMIL,
        "max": mil_gpfm.InstanceMaxMIL,
    }
    if name not in gpfm_models:
        raise InvalidInputError(
            f"{name!r} has no exact GPFM variant (GPFM's CLAM_SB trains its instance loss with "
            "the smooth top-1 SVM of the `topk` package); use protocol='ours'"
        )
    return gpfm_models[name](in_dim, n_classes, **options)


def make_mil(
    name: str,
    in_dim: int,
    n_classes: int,
    *,
    protocol: EvalProtocol = "ours",
    **options: Any,
) -> nn.Module:
    """Build a MIL model by name for (N, in_dim) bags and ``n_classes`` outputs.

    Names: ``abmil``, ``transmil``, ``clam_sb``, ``dsmil``, ``mean``, ``max`` (GPFM's
    ``att_mil``, ``trans_mil``, ``ds_mil``, ``mean_mil``, ``max_mil`` too). ``protocol="gpfm"``
    builds the GPFM paper's variant (``gpfm.heads.mil_gpfm``: its layers, initialisation and
    parameter order); ``options`` go to the constructor.
    """
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in MIL_MODELS:
        raise InvalidInputError(
            f"unknown MIL model {name!r}; choose one of {sorted([*MIL_MODELS, *_ALIASES])}"
        )
    if check_protocol(protocol) == "gpfm":
        return _gpfm_model(key, in_dim, n_classes, options)
    return MIL_MODELS[key](in_dim, n_classes, **options)


__all__ = [
    "ABMIL",
    "CLAM_SB",
    "DSMIL",
    "MIL_MODELS",
    "GatedAttention",
    "MILOutput",
    "MaxMIL",
    "MeanMIL",
    "TransMIL",
    "as_batch",
    "make_mil",
    "masked_mean",
    "masked_softmax",
]
