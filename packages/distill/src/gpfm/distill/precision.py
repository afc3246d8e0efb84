"""Losses run in fp32 whatever the autocast dtype; fp64 inputs stay fp64 (exact comparisons)."""

from __future__ import annotations

import torch
from torch import Tensor


def fp32_or_wider(x: Tensor) -> Tensor:
    """``x`` as fp32 if it is a narrower float (fp16, bf16) or an integer; fp64 stays fp64."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()
