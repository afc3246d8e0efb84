"""Speed and memory switches that leave the objective as it is: activation checkpointing of the
student's transformer blocks and ``torch.compile`` of each block (regional compilation).

Both act on the blocks in place, so parameter names, state dicts, the EMA pairing and
checkpoints stay those of the plain model; both compose with FSDP2, which wraps the same blocks.
"""

from __future__ import annotations

import functools
from typing import Any

from torch import nn
from torch.utils.checkpoint import checkpoint

from gpfm.distill.errors import DistillConfigError


def _blocks(backbone: nn.Module) -> nn.ModuleList:
    blocks = getattr(backbone, "blocks", None)
    if not isinstance(blocks, nn.ModuleList):
        raise DistillConfigError(
            f"{type(backbone).__name__} has no 'blocks' ModuleList to checkpoint or compile"
        )
    return blocks


def _checkpointed(block: nn.Module, *args: Any, **kwargs: Any) -> Any:
    # Non-reentrant: works with parameters that need gradients and inputs that do not, and
    # with FSDP2; the RNG state is restored on recomputation, so stochastic depth draws the
    # same paths in the forward pass and its replay.
    return checkpoint(type(block).forward, block, *args, use_reentrant=False, **kwargs)


def checkpoint_blocks(backbone: nn.Module) -> int:
    """Recompute each transformer block's activations in the backward pass instead of keeping
    them (less memory, ~30 % more compute). Returns the number of blocks wrapped."""
    blocks = _blocks(backbone)
    for block in blocks:
        block.forward = functools.partial(_checkpointed, block)
    return len(blocks)


def compile_blocks(backbone: nn.Module, backend: str = "inductor", **options: Any) -> int:
    """``torch.compile`` each transformer block in place (``nn.Module.compile``).

    Compiling the repeated block rather than the whole model compiles once for all blocks,
    keeps parameter names unchanged and leaves Python control flow (crop sizes, masks) eager.
    Returns the number of blocks compiled.
    """
    blocks = _blocks(backbone)
    for block in blocks:
        block.compile(backend=backend, **options)
    return len(blocks)
