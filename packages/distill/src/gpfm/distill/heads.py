"""Projection heads: the DINO/iBOT prototype head and the per-expert distillation head."""

from __future__ import annotations

import itertools

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm


def _weight_normed_linear(in_dim: int, out_dim: int, fix_norm: bool) -> nn.Linear:
    layer = weight_norm(nn.Linear(in_dim, out_dim, bias=False))
    # weight = g · v / ‖v‖; DINO fixes g = 1 so the prototypes stay on the unit sphere.
    original0 = layer.parametrizations.weight.original0
    original0.data.fill_(1.0)
    if fix_norm:
        original0.requires_grad_(False)
    return layer


class DINOHead(nn.Module):
    """MLP -> bottleneck -> L2 norm -> weight-normed prototypes (DINOv2's head).

    Args:
        in_dim: backbone width.
        out_dim: number of prototypes (65,536 in GPFM).
        hidden_dim: MLP width (2048).
        bottleneck_dim: width before the prototypes (256).
        n_layers: linear layers in the MLP (3).
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
        dims = [in_dim] + [hidden_dim] * (n_layers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for index, (a, b) in enumerate(itertools.pairwise(dims)):
            layers.append(nn.Linear(a, b))
            if index < n_layers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.last_layer = _weight_normed_linear(bottleneck_dim, out_dim, fix_norm=True)

    def forward(self, x: Tensor) -> Tensor:
        hidden = self.mlp(x)
        eps = 1e-6 if hidden.dtype == torch.float16 else 1e-12  # fp16 underflows at 1e-12
        return self.last_layer(F.normalize(hidden, dim=-1, p=2, eps=eps))


class ExpertHead(nn.Module):
    """Linear -> L2 norm -> weight-normed Linear: student tokens into an expert's feature space."""

    def __init__(self, in_dim: int, expert_dim: int, bottleneck_dim: int = 256) -> None:
        super().__init__()
        self.proj = nn.Linear(in_dim, bottleneck_dim)
        nn.init.trunc_normal_(self.proj.weight, std=0.02)
        nn.init.zeros_(self.proj.bias)
        self.out = _weight_normed_linear(bottleneck_dim, expert_dim, fix_norm=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(F.normalize(self.proj(x), dim=-1))
