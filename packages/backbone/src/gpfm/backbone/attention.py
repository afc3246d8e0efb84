"""Multi-head self-attention with three interchangeable kernels.

- ``xformers``: ``xformers.ops.memory_efficient_attention``; chosen by default on CUDA when the
  optional ``xformers`` package is installed.
- ``sdpa``: ``torch.nn.functional.scaled_dot_product_attention``; the default elsewhere.
- ``math``: softmax(q kᵀ / √d) v written out; the reference the others are tested against.

``GPFM_ATTENTION=xformers|sdpa|math`` in the environment overrides the choice for every model;
``Attention(..., backend=...)`` overrides it for one module. The parameters, and so the model,
are the same whichever kernel runs.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

Backend = Literal["xformers", "sdpa", "math"]
BACKENDS: tuple[Backend, ...] = ("xformers", "sdpa", "math")
ENV_VAR = "GPFM_ATTENTION"


@functools.cache
def xformers_available() -> bool:
    """True when the xformers package can be imported (it only runs on CUDA)."""
    return importlib.util.find_spec("xformers") is not None


def resolve_backend(requested: str | None, device: torch.device) -> Backend:
    """The kernel to run on ``device``: ``requested``, else ``$GPFM_ATTENTION``, else automatic.

    Raises:
        ValueError: an unknown name, or xformers asked for where it cannot run.
    """
    name = requested or os.environ.get(ENV_VAR) or None
    if name is None:
        return "xformers" if device.type == "cuda" and xformers_available() else "sdpa"
    if name not in BACKENDS:
        raise ValueError(f"attention backend must be one of {BACKENDS}, got {name!r} ({ENV_VAR})")
    if name == "xformers" and (device.type != "cuda" or not xformers_available()):
        raise ValueError(
            "xformers attention needs a CUDA device and the xformers package "
            "(pip install 'gpfm-backbone[xformers]'); use sdpa or math here"
        )
    return name


def attend(q: Tensor, k: Tensor, v: Tensor, backend: Backend) -> Tensor:
    """Attention of q, k, v shaped (B, N, H, head_dim); returns (B, N, H, head_dim)."""
    if backend == "xformers":
        import xformers.ops as xops

        return xops.memory_efficient_attention(q, k, v)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, N, head_dim)
    if backend == "sdpa":
        out = F.scaled_dot_product_attention(q, k, v)
    else:
        scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)
        out = scores.softmax(dim=-1) @ v
    return out.transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (timm / DINOv2 parameter names)."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        backend: Backend | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.backend = backend
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x: Tensor) -> Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.unbind(2)
        out = attend(q, k, v, resolve_backend(self.backend, x.device))
        return self.proj(out.reshape(batch, tokens, dim))
