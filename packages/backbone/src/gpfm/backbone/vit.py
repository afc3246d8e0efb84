"""The DINOv2-style Vision Transformer that GPFM uses, in every size, and its named configurations.

Blocks are pre-norm with LayerScale and stochastic depth; the MLP is GELU or SwiGLU; optional
register tokens sit between the class token and the patch tokens; a learnable mask token replaces
masked patch embeddings (iBOT). Position embeddings cover the class token and a square patch grid
and are interpolated (bicubic) for any other input size, e.g. 98 px local crops or 512 px tiles, by
DINOv2's own rule (``scale_factor = (g + 0.1) / M``, see ``resize_pos_grid``) so that DINOv2 and
GPFM weights give their reference outputs at every size. Parameter names follow timm's
``VisionTransformer``, so timm weights load as they are; ``gpfm.backbone.checkpoint`` converts the
DINOv2 and GPFM layouts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gpfm.backbone.attention import Attention, Backend
from gpfm.backbone.checkpoint import PosEmbedRule, resize_pos_grid

Features = dict[str, Tensor]

# name -> (embed_dim, depth, num_heads, ffn_layer)
_SIZES: dict[str, tuple[int, int, int, str]] = {
    "tiny": (192, 12, 3, "mlp"),
    "small": (384, 12, 6, "mlp"),
    "base": (768, 12, 12, "mlp"),
    "large": (1024, 24, 16, "mlp"),
    "giant": (1536, 40, 24, "swiglu"),  # DINOv2's ViT-g/14 ("vit_giant2")
}

VIT_ARCHITECTURES: dict[str, dict[str, Any]] = {
    f"vit_{size}_patch{patch}": {
        "patch_size": patch,
        "embed_dim": dim,
        "depth": depth,
        "num_heads": heads,
        "ffn_layer": ffn,
    }
    for size, (dim, depth, heads, ffn) in _SIZES.items()
    for patch in (14, 16)
}
"""Named architectures for ``create_vit``: ``vit_{tiny,small,base,large,giant}_patch{14,16}``."""


class LayerScale(nn.Module):
    """Per-channel learnable scale of a residual branch (CaiT / DINOv2)."""

    def __init__(self, dim: int, init_values: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_values)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class DropPath(nn.Module):
    """Stochastic depth: drop the whole residual branch of a sample with probability ``p``."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep


class Mlp(nn.Module):
    """Linear -> GELU -> Linear."""

    def __init__(self, dim: int, hidden_dim: int, bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_dim, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class SwiGLU(nn.Module):
    """Gated MLP: fc2(silu(a) * b) with (a, b) = fc1(x) split in halves (DINOv2's w12 / w3)."""

    def __init__(self, dim: int, hidden_dim: int, bias: bool = True) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, 2 * hidden_dim, bias=bias)
        self.fc2 = nn.Linear(hidden_dim, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        gate, value = self.fc1(x).chunk(2, dim=-1)
        return self.fc2(F.silu(gate) * value)


def default_hidden_dim(dim: int, mlp_ratio: float, ffn_layer: str) -> int:
    """Hidden width of the MLP; for SwiGLU, DINOv2's 2/3 of it rounded up to a multiple of 8."""
    hidden = int(dim * mlp_ratio)
    if ffn_layer == "swiglu":
        return (int(hidden * 2 / 3) + 7) // 8 * 8
    return hidden


class Block(nn.Module):
    """Pre-norm transformer block: x + ls1(attn(norm1(x))), then x + ls2(mlp(norm2(x)))."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        hidden_dim: int,
        ffn_layer: str = "mlp",
        init_values: float | None = None,
        drop_path: float = 0.0,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        norm_eps: float = 1e-6,
        attention: Backend | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias, proj_bias, backend=attention)
        self.ls1: nn.Module = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        mlp = SwiGLU if ffn_layer == "swiglu" else Mlp
        self.mlp = mlp(dim, hidden_dim, bias=ffn_bias)
        self.ls2: nn.Module = LayerScale(dim, init_values) if init_values else nn.Identity()
        self.drop_path = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.ls1(self.attn(self.norm1(x))))
        return x + self.drop_path(self.ls2(self.mlp(self.norm2(x))))


class PatchEmbed(nn.Module):
    """Non-overlapping patches -> tokens with one strided convolution.

    An input side that is not a multiple of the patch size is cropped to one (the last
    ``side % patch_size`` pixels are not seen), e.g. 512 px at patch 14 gives a 36 x 36 grid.
    """

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # (B, N, D)


class VisionTransformer(nn.Module):
    """A ViT with class token, optional registers, LayerScale and a mask token.

    ``forward(x, masks=None)`` and ``forward_features`` return, after the final norm,
    ``{"cls": (B, D), "patch": (B, N, D), "registers": (B, R, D)}``. ``x`` may also be a list
    of batches of different sizes (multi-crop): same-size batches run together and a list of
    dicts comes back in the input's order.
    """

    def __init__(
        self,
        img_size: int = 224,
        patch_size: int = 16,
        in_chans: int = 3,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        ffn_layer: Literal["mlp", "swiglu"] = "mlp",
        ffn_hidden_dim: int | None = None,
        init_values: float | None = 1e-5,
        num_register_tokens: int = 0,
        drop_path_rate: float = 0.0,
        drop_path_uniform: bool = False,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        ffn_bias: bool = True,
        norm_eps: float = 1e-6,
        dynamic_img_size: bool = True,
        attention: Backend | None = None,
        pos_embed_rule: PosEmbedRule = "dinov2",
    ) -> None:
        super().__init__()
        if ffn_layer not in ("mlp", "swiglu"):
            raise ValueError(f"ffn_layer must be 'mlp' or 'swiglu', got {ffn_layer!r}")
        self.img_size = img_size
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.depth = depth
        self.num_heads = num_heads
        self.num_register_tokens = num_register_tokens
        self.dynamic_img_size = dynamic_img_size
        self.pos_embed_rule: PosEmbedRule = pos_embed_rule
        self.grid_size = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.reg_token = (
            nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
            if num_register_tokens
            else None
        )
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid_size**2, embed_dim))
        self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        hidden = ffn_hidden_dim or default_hidden_dim(embed_dim, mlp_ratio, ffn_layer)
        rates = [
            drop_path_rate if drop_path_uniform else drop_path_rate * i / max(1, depth - 1)
            for i in range(depth)
        ]
        self.blocks = nn.ModuleList(
            Block(
                embed_dim,
                num_heads,
                hidden,
                ffn_layer=ffn_layer,
                init_values=init_values,
                drop_path=rate,
                qkv_bias=qkv_bias,
                proj_bias=proj_bias,
                ffn_bias=ffn_bias,
                norm_eps=norm_eps,
                attention=attention,
            )
            for rate in rates
        )
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.init_weights()

    @property
    def num_prefix_tokens(self) -> int:
        return 1 + self.num_register_tokens

    def init_weights(self) -> None:
        """Truncated-normal (std 0.02) linear weights and position embeddings (DINOv2's init)."""
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.normal_(self.cls_token, std=1e-6)
        if self.reg_token is not None:
            nn.init.normal_(self.reg_token, std=1e-6)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def interpolate_pos_embed(self, grid_h: int, grid_w: int) -> Tensor:
        """Position embeddings (1, 1 + grid_h * grid_w, D) for a patch grid of another size."""
        if grid_h == grid_w == self.grid_size:
            return self.pos_embed
        if not self.dynamic_img_size:
            raise ValueError(
                f"input gives a {grid_h}x{grid_w} patch grid but the model is fixed at "
                f"{self.grid_size}x{self.grid_size}; build it with dynamic_img_size=True"
            )
        cls_pos, patch_pos = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        side = self.grid_size
        patch_pos = patch_pos.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        patch_pos = resize_pos_grid(patch_pos, grid_h, grid_w, self.pos_embed_rule)
        patch_pos = patch_pos.to(self.pos_embed.dtype)
        patch_pos = patch_pos.permute(0, 2, 3, 1).reshape(1, grid_h * grid_w, -1)
        return torch.cat([cls_pos, patch_pos], dim=1)

    def prepare_tokens(self, x: Tensor, masks: Tensor | None = None) -> Tensor:
        """Images (B, C, H, W) -> tokens (B, 1 + R + N, D): class, registers, patches."""
        batch, _, height, width = x.shape
        grid_h, grid_w = height // self.patch_size, width // self.patch_size
        tokens = self.patch_embed(x)
        if masks is not None:
            masks = masks.reshape(batch, -1)
            if masks.shape[1] != tokens.shape[1]:
                raise ValueError(
                    f"masks cover {masks.shape[1]} patches; the input has {tokens.shape[1]}"
                )
            tokens = torch.where(masks.unsqueeze(-1), self.mask_token.to(tokens.dtype), tokens)
        tokens = torch.cat([self.cls_token.expand(batch, -1, -1), tokens], dim=1)
        tokens = tokens + self.interpolate_pos_embed(grid_h, grid_w)
        if self.reg_token is not None:
            registers = self.reg_token.expand(batch, -1, -1)
            tokens = torch.cat([tokens[:, :1], registers, tokens[:, 1:]], dim=1)
        return tokens

    def _features(self, x: Tensor, masks: Tensor | None) -> Features:
        tokens = self.prepare_tokens(x, masks)
        for block in self.blocks:
            tokens = block(tokens)
        tokens = self.norm(tokens)
        return {
            "cls": tokens[:, 0],
            "registers": tokens[:, 1 : self.num_prefix_tokens],
            "patch": tokens[:, self.num_prefix_tokens :],
        }

    def forward_features(
        self,
        x: Tensor | Sequence[Tensor],
        masks: Tensor | Sequence[Tensor | None] | None = None,
    ) -> Features | list[Features]:
        """Normed class, patch and register tokens; a list of dicts for a list of batches."""
        if isinstance(x, Tensor):
            if masks is not None and not isinstance(masks, Tensor):
                raise TypeError("masks for a single batch must be one tensor")
            return self._features(x, masks)
        return self._features_grouped(list(x), masks)

    def _features_grouped(
        self, crops: list[Tensor], masks: Tensor | Sequence[Tensor | None] | None
    ) -> list[Features]:
        """One pass per distinct image size (e.g. global and local crops), in input order."""
        if isinstance(masks, Tensor):
            raise TypeError("masks for a list of batches must be a list (None where unmasked)")
        mask_list = list(masks) if masks is not None else [None] * len(crops)
        if len(mask_list) != len(crops):
            raise ValueError(f"{len(mask_list)} masks for {len(crops)} batches of crops")
        groups: dict[tuple[int, ...], list[int]] = {}
        for index, crop in enumerate(crops):
            groups.setdefault(tuple(crop.shape[1:]), []).append(index)
        results: dict[int, Features] = {}
        for indices in groups.values():
            batch = torch.cat([crops[i] for i in indices])
            merged = None
            if any(mask_list[i] is not None for i in indices):
                merged = torch.cat([self._mask_or_none(crops[i], mask_list[i]) for i in indices])
            features = self._features(batch, merged)
            start = 0
            for i in indices:
                stop = start + crops[i].shape[0]
                results[i] = {name: value[start:stop] for name, value in features.items()}
                start = stop
        return [results[i] for i in range(len(crops))]

    def _mask_or_none(self, crop: Tensor, mask: Tensor | None) -> Tensor:
        """``mask`` as (B, N) bool, or all-False where a batch of a masked group has none."""
        if mask is not None:
            return mask.reshape(crop.shape[0], -1)
        patches = (crop.shape[-2] // self.patch_size) * (crop.shape[-1] // self.patch_size)
        return torch.zeros(crop.shape[0], patches, dtype=torch.bool, device=crop.device)

    def forward(
        self,
        x: Tensor | Sequence[Tensor],
        masks: Tensor | Sequence[Tensor | None] | None = None,
    ) -> Features | list[Features]:
        return self.forward_features(x, masks)


def create_vit(name: str, **overrides: Any) -> VisionTransformer:
    """Build a named architecture, e.g. ``create_vit("vit_large_patch14")`` (GPFM's backbone).

    Names: ``vit_{tiny,small,base,large,giant}_patch{14,16}``. Keyword arguments override any
    ``VisionTransformer`` argument (``img_size`` 224, ``init_values`` 1e-5 — None turns
    LayerScale off —, ``num_register_tokens``, ``ffn_layer``, ``drop_path_rate``, ...).
    """
    if name not in VIT_ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose from {sorted(VIT_ARCHITECTURES)}")
    return VisionTransformer(**{**VIT_ARCHITECTURES[name], **overrides})


def count_parameters(model: nn.Module) -> int:
    """Number of parameters (works on the meta device)."""
    return sum(math.prod(p.shape) for p in model.parameters())
