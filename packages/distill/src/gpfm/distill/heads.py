"""Projection heads: the DINO/iBOT prototype head and the per-expert distillation head."""

from __future__ import annotations

import itertools
from typing import overload

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm

from gpfm.distill.errors import DistillConfigError


def _weight_normed_linear(in_dim: int, out_dim: int) -> nn.Linear:
    layer = weight_norm(nn.Linear(in_dim, out_dim, bias=False))
    # weight = g · v / ‖v‖ with g initialised to 1 and trained, on the last-layer lr schedule
    # (DINOv2's and GPFM's ``layers/dino_head.py:27-28``; DINO v1 froze g, they do not).
    layer.parametrizations.weight.original0.data.fill_(1.0)
    return layer


class DINOHead(nn.Module):
    """MLP -> bottleneck -> L2 norm -> weight-normed prototypes (DINOv2's head).

    Parameter roles follow the reference: ``mlp`` and ``last_layer``; every parameter whose
    name contains ``last_layer`` gets the last-layer learning rate (0 during the first epoch).

    Args:
        in_dim: backbone width.
        out_dim: number of prototypes (65,536 in GPFM), or an expert's feature size.
        hidden_dim: MLP width (2048); unused with one layer.
        bottleneck_dim: width before the prototypes (256).
        n_layers: linear layers in the MLP (3; 1 for GPFM's expert heads).
    """

    def __init__(
        self,
        in_dim: int,
        out_dim: int = 65_536,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        n_layers: int = 3,
    ) -> None:
        super().__init__()
        if n_layers < 1:
            raise DistillConfigError(f"n_layers must be at least 1, got {n_layers}")
        dims = [in_dim] + [hidden_dim] * (n_layers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for index, (a, b) in enumerate(itertools.pairwise(dims)):
            layers.append(nn.Linear(a, b))
            if index < n_layers - 1:
                layers.append(nn.GELU())
        self.mlp: nn.Module = layers[0] if n_layers == 1 else nn.Sequential(*layers)
        for module in self.mlp.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.last_layer = _weight_normed_linear(bottleneck_dim, out_dim)

    @overload
    def forward(self, x: Tensor) -> Tensor: ...

    @overload
    def forward(self, x: Tensor, split: int) -> tuple[Tensor, Tensor]: ...

    def forward(self, x: Tensor, split: int | None = None) -> Tensor | tuple[Tensor, Tensor]:
        """Prototype logits of ``x`` (N, in_dim); with ``split``, those of rows ``:split`` and
        ``split:`` as two tensors.

        Split, the rows share the MLP and the prototype weights (computed once) but each part
        gets its own product: the gradients of the two parts then reach the prototypes without
        autograd making a zero-filled (N, out_dim) tensor per slice of one product.
        """
        hidden = self.mlp(x)
        eps = 1e-6 if hidden.dtype == torch.float16 else 1e-12  # fp16 underflows at 1e-12
        normalized = F.normalize(hidden, dim=-1, p=2, eps=eps)
        if split is None:
            return self.last_layer(normalized)
        weight = self.last_layer.weight  # weight norm: g · v / ‖v‖, computed here once
        return F.linear(normalized[:split], weight), F.linear(normalized[split:], weight)


class ExpertHead(DINOHead):
    """Student tokens into an expert's feature space: Linear -> L2 norm -> weight-normed Linear.

    GPFM builds it as ``DINOHead(nlayers=1, bottleneck_dim=256)`` (``train/ssl_meta_arch.py:
    94-103``), so its last layer is frozen during the first epoch like the prototypes.
    """

    def __init__(self, in_dim: int, expert_dim: int, bottleneck_dim: int = 256) -> None:
        super().__init__(in_dim, expert_dim, bottleneck_dim=bottleneck_dim, n_layers=1)
