"""The GPFM paper's MIL heads (``make_mil(..., protocol="gpfm")``), from birkhoffkiki/GPFM at
4f8be2b, ``mil_models/``.

Each has the reference's layers, initialisation and parameter order, so a reference state dict
loads by position (``load_reference_state_dict``), and computes what the reference computes:

- ``att_mil`` is ``ABMIL(hidden_dim=512, attention_dim=128, gated=False, attention_dropout=0)``
  (``gpfm.heads.mil``): the paper's slide head.
- ``InstanceMeanMIL`` / ``InstanceMaxMIL`` (``mean_max_mil.py``): classify every tile, then
  average / take the maximum of the tile logits (not of embeddings).
- ``NystromTransMIL`` (``trans_mil.py``): TransMIL with Nyström attention (8 heads of 64, 256
  landmarks, 6 pseudo-inverse iterations, a 33-tap depthwise convolution on the values), the
  square grid filled by repeating the first tiles and the sequence zero-padded in front to a
  multiple of 256, as the reference does.
- ``AveragedDSMIL`` (``ds_mil.py``): DSMIL with a one-layer query, a full-width value and the
  bag logits averaged with the max-instance logits (one loss, not two).

The reference runs one bag at a time; so do these (a padded batch is split into its bags).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpfm.heads.errors import InvalidInputError
from gpfm.heads.mil import MILOutput, as_batch


def _xavier_init(module: nn.Module) -> None:
    """The reference's ``initialize_weights``: Xavier-normal linear weights, zero biases,
    LayerNorm to identity (convolutions keep PyTorch's default).

    Like the reference, it walks every submodule and is itself passed to ``apply``, so a layer
    is re-drawn once per ancestor; only the last draw stays, but the random stream, and so
    the weights for a given seed, are the reference's.
    """
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.xavier_normal_(layer.weight)
            if layer.bias is not None:
                layer.bias.data.zero_()
        elif isinstance(layer, nn.LayerNorm):
            nn.init.constant_(layer.bias, 0)
            nn.init.constant_(layer.weight, 1.0)


class _OneBagAtATime(nn.Module, abc.ABC):
    """Runs ``forward_bag`` on the real tiles of each bag of a padded batch."""

    @abc.abstractmethod
    def forward_bag(self, tiles: Tensor) -> tuple[Tensor, Tensor]:
        """(N, D) tiles -> logits (C,), attention (N,)."""

    def forward(
        self, features: Tensor, mask: Tensor | None = None, target: Tensor | None = None
    ) -> MILOutput:
        """``features`` (B, N, D) or (N, D), ``mask`` (B, N) -> logits (B, C), attention (B, N).

        ``target`` is accepted for a common signature and not used.
        """
        features, mask = as_batch(features, mask)
        logits = []
        attention = torch.zeros(mask.shape, dtype=torch.float32, device=features.device)
        for row in range(features.shape[0]):
            bag_logits, bag_attention = self.forward_bag(features[row][mask[row]])
            logits.append(bag_logits)
            attention[row, mask[row]] = bag_attention.float()
        return MILOutput(torch.stack(logits), attention)


class InstanceMeanMIL(_OneBagAtATime):
    """Classify each tile (Linear-ReLU-Dropout-Linear), average the tile logits.

    ``attention`` is 1/N on every tile.
    """

    def __init__(
        self, in_dim: int, n_classes: int, hidden_dim: int = 512, dropout: float = 0.25
    ) -> None:
        super().__init__()
        self.in_dim, self.n_classes = in_dim, n_classes
        self.head = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_dim, n_classes),
        )
        self.apply(_xavier_init)

    def forward_bag(self, tiles: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.head(tiles)
        return logits.mean(dim=0), tiles.new_full((len(tiles),), 1.0 / len(tiles))


class InstanceMaxMIL(InstanceMeanMIL):
    """Classify each tile, take each class's largest tile logit.

    ``attention`` of a tile is the fraction of classes whose maximum it supplies.
    """

    def forward_bag(self, tiles: Tensor) -> tuple[Tensor, Tensor]:
        logits, winners = self.head(tiles).max(dim=0)
        counts = torch.bincount(winners, minlength=len(tiles)).float()
        return logits, counts / len(winners)


class AveragedDSMIL(_OneBagAtATime):
    """DSMIL as the GPFM benchmark builds it: (bag logits + max-instance logits) / 2.

    The critical tile of each class is the first of a descending sort of its instance scores;
    its query attends to all tiles (softmax over tiles of Q·q / sqrt(128)); the C pooled values
    (full ``in_dim`` wide) are classified by a 1-D convolution. ``attention`` is the class mean
    of those attention weights.

    Args:
        in_dim: D. n_classes: C.
        query_dim: width of the (single linear) query (128).
        dropout: dropout before the value projection (GPFM: 0.25).
    """

    def __init__(
        self, in_dim: int, n_classes: int, query_dim: int = 128, dropout: float = 0.25
    ) -> None:
        super().__init__()
        self.in_dim, self.n_classes = in_dim, n_classes
        self.instance_classifier = nn.Sequential(nn.Linear(in_dim, n_classes))
        self.query = nn.Linear(in_dim, query_dim)
        self.value = nn.Sequential(nn.Dropout(dropout), nn.Linear(in_dim, in_dim))
        self.bag_classifier = nn.Conv1d(n_classes, n_classes, kernel_size=in_dim)

    def forward_bag(self, tiles: Tensor) -> tuple[Tensor, Tensor]:
        instance_scores = self.instance_classifier(tiles)  # (N, C)
        values = self.value(tiles)
        queries = self.query(tiles)
        _, order = torch.sort(instance_scores, 0, descending=True)
        critical_queries = self.query(torch.index_select(tiles, 0, order[0]))  # (C, Q)
        scale = torch.sqrt(torch.tensor(queries.shape[1], dtype=torch.float32, device=tiles.device))
        attention = F.softmax(queries @ critical_queries.T / scale, 0)  # (N, C)
        pooled = (attention.T @ values).unsqueeze(0)  # (1, C, D)
        bag_logits = self.bag_classifier(pooled).view(-1)
        max_logits, _ = instance_scores.max(0)
        return 0.5 * (bag_logits + max_logits), attention.mean(dim=1)


def _pseudo_inverse(x: Tensor, iterations: int) -> Tensor:
    """Iterative Moore-Penrose pseudo-inverse of (..., m, m), as Nystromformer computes it."""
    absolute = x.abs()
    z = x.transpose(-1, -2) / (absolute.sum(dim=-1).max() * absolute.sum(dim=-2).max())
    identity = torch.eye(x.shape[-1], device=x.device).unsqueeze(0)
    for _ in range(iterations):
        xz = x @ z
        z = 0.25 * z @ (13 * identity - (xz @ (15 * identity - (xz @ (7 * identity - xz)))))
    return z


class NystromAttention(nn.Module):
    """Nyström self-attention without a mask (the reference calls it without one).

    Args:
        dim: token width. heads, head_dim: 8 x (dim / 8). landmarks: dim / 2.
        pinv_iterations: 6. conv_kernel: taps of the depthwise residual convolution on V (33).
        dropout: after the output projection.
    """

    def __init__(
        self,
        dim: int,
        heads: int = 8,
        head_dim: int = 64,
        landmarks: int = 256,
        pinv_iterations: int = 6,
        conv_kernel: int = 33,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        self.heads, self.landmarks, self.pinv_iterations = heads, landmarks, pinv_iterations
        self.scale = head_dim**-0.5
        self.to_qkv = nn.Linear(dim, heads * head_dim * 3, bias=False)
        self.to_out = nn.Sequential(nn.Linear(heads * head_dim, dim), nn.Dropout(dropout))
        self.res_conv = nn.Conv2d(
            heads, heads, (conv_kernel, 1), padding=(conv_kernel // 2, 0), groups=heads, bias=False
        )

    def forward(self, x: Tensor) -> Tensor:
        """(B, n, dim) -> (B, n, dim)."""
        batch, n, _ = x.shape
        if n % self.landmarks:
            x = F.pad(x, (0, 0, self.landmarks - n % self.landmarks, 0), value=0)
        q, k, v = (
            t.reshape(batch, t.shape[1], self.heads, -1).transpose(1, 2)
            for t in self.to_qkv(x).chunk(3, dim=-1)
        )  # each (B, h, n', d)
        q = q * self.scale
        group = math.ceil(n / self.landmarks)
        q_landmarks = q.reshape(*q.shape[:2], self.landmarks, group, -1).sum(dim=3) / group
        k_landmarks = k.reshape(*k.shape[:2], self.landmarks, group, -1).sum(dim=3) / group
        attention1 = (q @ k_landmarks.transpose(-1, -2)).softmax(dim=-1)
        attention2 = (q_landmarks @ k_landmarks.transpose(-1, -2)).softmax(dim=-1)
        attention3 = (q_landmarks @ k.transpose(-1, -2)).softmax(dim=-1)
        inverse = _pseudo_inverse(attention2, self.pinv_iterations)
        out = (attention1 @ inverse) @ (attention3 @ v) + self.res_conv(v)
        out = self.to_out(out.transpose(1, 2).reshape(batch, out.shape[2], -1))
        return out[:, -n:]


class _TransLayer(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = NystromAttention(dim, heads=8, head_dim=dim // 8, landmarks=dim // 2)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.attn(self.norm(x))


class _PPEG(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(dim, dim, 7, 1, 3, groups=dim)
        self.proj1 = nn.Conv2d(dim, dim, 5, 1, 2, groups=dim)
        self.proj2 = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: Tensor, side: int) -> Tensor:
        batch, _, dim = x.shape
        grid = x[:, 1:].transpose(1, 2).reshape(batch, dim, side, side)
        grid = self.proj(grid) + grid + self.proj1(grid) + self.proj2(grid)
        return torch.cat([x[:, :1], grid.flatten(2).transpose(1, 2)], dim=1)


class NystromTransMIL(_OneBagAtATime):
    """TransMIL as the GPFM benchmark runs it (Nyström attention; see the module docstring).

    ``attention`` is uniform over the tiles: the model has no per-tile weight to show.

    Args:
        in_dim: D. n_classes: C.
        hidden_dim: token width (512). dropout: after the input projection (GPFM: 0.25).
    """

    def __init__(
        self, in_dim: int, n_classes: int, hidden_dim: int = 512, dropout: float = 0.25
    ) -> None:
        super().__init__()
        self.in_dim, self.n_classes = in_dim, n_classes
        self.embed = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.position = _PPEG(hidden_dim)
        self.class_token = nn.Parameter(torch.randn(1, 1, hidden_dim))
        nn.init.normal_(self.class_token, std=1e-6)
        self.layer1 = _TransLayer(hidden_dim)
        self.layer2 = _TransLayer(hidden_dim)
        self.norm = nn.LayerNorm(hidden_dim)
        self.classifier = nn.Linear(hidden_dim, n_classes)
        self.apply(_xavier_init)

    def forward_bag(self, tiles: Tensor) -> tuple[Tensor, Tensor]:
        hidden = self.embed(tiles.float().unsqueeze(0))
        side = math.ceil(math.sqrt(hidden.shape[1]))
        filler = side * side - hidden.shape[1]
        hidden = torch.cat([hidden, hidden[:, :filler]], dim=1)  # repeat the first tiles
        hidden = torch.cat([self.class_token.expand(1, -1, -1), hidden], dim=1)
        hidden = self.position(self.layer1(hidden), side)
        logits = self.classifier(self.norm(self.layer2(hidden))[:, 0])
        return logits[0], tiles.new_full((len(tiles),), 1.0 / len(tiles))


def load_reference_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Load a GPFM reference model's state dict into ``model`` by position.

    The i-th tensor goes to the i-th entry of ``model.state_dict()``; names may differ, the
    number of tensors and every shape must agree.

    Raises:
        InvalidInputError: the counts or a shape differ (naming both entries).
    """
    ours = model.state_dict()
    theirs = list(state_dict.items())
    if len(theirs) != len(ours):
        raise InvalidInputError(
            f"the reference state dict has {len(theirs)} tensors, {type(model).__name__} has "
            f"{len(ours)}; build the model with the reference's settings"
        )
    mapped = {}
    for (name, tensor), (their_name, value) in zip(ours.items(), theirs, strict=True):
        if tuple(tensor.shape) != tuple(value.shape):
            raise InvalidInputError(
                f"reference {their_name} {tuple(value.shape)} does not fit {name} "
                f"{tuple(tensor.shape)}"
            )
        mapped[name] = value
    model.load_state_dict(mapped)


__all__ = [
    "AveragedDSMIL",
    "InstanceMaxMIL",
    "InstanceMeanMIL",
    "NystromAttention",
    "NystromTransMIL",
    "load_reference_state_dict",
]
