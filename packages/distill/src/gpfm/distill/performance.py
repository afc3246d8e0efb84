"""Speed and memory switches that leave the objective as it is: activation checkpointing of the
student's transformer blocks and ``torch.compile`` of each block (regional compilation).

Both act on the blocks in place, so parameter names, state dicts, the EMA pairing and
checkpoints stay those of the plain model; both compose with FSDP2, which wraps the same blocks.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
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


_CHECKPOINTED = "_gpfm_checkpointed_forward"  # the function a checkpointed block recomputes


def _checkpointed(block: nn.Module, *args: Any, **kwargs: Any) -> Any:
    # Non-reentrant: works with parameters that need gradients and inputs that do not, and
    # with FSDP2; the RNG state is restored on recomputation, so stochastic depth draws the
    # same paths in the forward pass and its replay.
    inner = getattr(block, _CHECKPOINTED)
    return checkpoint(inner, block, *args, use_reentrant=False, **kwargs)


def checkpoint_blocks(backbone: nn.Module) -> int:
    """Recompute each transformer block's activations in the backward pass instead of keeping
    them (less memory, ~30 % more compute). Returns the number of blocks wrapped.

    Raises:
        DistillConfigError: the blocks are compiled already (checkpoint first, then compile).
    """
    blocks = _blocks(backbone)
    for block in blocks:
        if getattr(block, "_compiled_call_impl", None) is not None:
            raise DistillConfigError("checkpoint the blocks before compiling them")
        setattr(block, _CHECKPOINTED, type(block).forward)
        block.forward = functools.partial(_checkpointed, block)
    return len(blocks)


def compile_blocks(backbone: nn.Module, backend: str = "inductor", **options: Any) -> int:
    """``torch.compile`` each transformer block in place (``nn.Module.compile``).

    Compiling the repeated block rather than the whole model compiles once for all blocks,
    keeps parameter names unchanged and leaves Python control flow (crop sizes, masks) eager.
    In a checkpointed block the recomputed function is compiled and the checkpoint stays
    eager: traced by the compiler, it would not replay stochastic depth's random draws.
    Returns the number of blocks compiled.
    """
    blocks = _blocks(backbone)
    for block in blocks:
        inner = getattr(block, _CHECKPOINTED, None)
        if inner is not None:
            setattr(block, _CHECKPOINTED, torch.compile(inner, backend=backend, **options))
        else:
            block.compile(backend=backend, **options)
    return len(blocks)
