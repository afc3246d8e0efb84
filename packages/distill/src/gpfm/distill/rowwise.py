"""Softmax targets and soft cross-entropy over prototype logits, a few rows at a time.

At GPFM's 65,536 prototypes the masked patch tokens of a batch give logits of about 700 x 65,536
values (190 MB in fp32). Autograd's chain for the iBOT loss (divide, log-softmax, multiply,
sum) keeps three tensors of that size in the forward pass and makes three more in the backward
pass, and the teacher's centred softmax makes three: on a CPU, fresh memory of that size costs
as much as the arithmetic on it (page faults), and on any device each is a pass over memory.
Here the work runs over blocks of rows small enough to be reused by the allocator, and only the
result (targets, or the gradient) is a new tensor of full size. Values are those of the plain
expressions up to rounding (the golden and fast-path tests hold them to 1e-9 and 1e-12 in
float64).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from gpfm.distill.precision import fp32_or_wider

_BLOCK_BYTES = 4 * 2**20  # per block of rows: the allocator reuses blocks this small


def row_blocks(rows: int, width: int, itemsize: int = 4) -> Iterator[slice]:
    """Consecutive slices of ``rows`` rows, each block about ``_BLOCK_BYTES`` at ``width``."""
    step = max(1, _BLOCK_BYTES // max(1, width * itemsize))
    for start in range(0, rows, step):
        yield slice(start, min(rows, start + step))


@torch.no_grad()
def centered_softmax(
    logits: Tensor, center: Tensor, temp: float, out: Tensor | None = None
) -> Tensor:
    """``softmax((logits − center) / temp)`` over the last dim, in fp32 (fp64 stays fp64).

    Args:
        logits: (N, K) teacher logits, any float dtype.
        center: (1, K) centre.
        temp: the teacher temperature.
        out: where to write the result, ``logits`` itself included (each block of rows is read
            before it is written); ignored unless it has the result's shape and dtype.
    """
    dtype = torch.promote_types(fp32_or_wider(logits[:0]).dtype, center.dtype)
    if out is None or out.shape != logits.shape or out.dtype != dtype:
        out = torch.empty(logits.shape, dtype=dtype, device=logits.device)
    for rows in row_blocks(logits.shape[0], logits.shape[-1], out.element_size()):
        out[rows] = F.softmax((fp32_or_wider(logits[rows]) - center) / temp, dim=-1)
    return out


class _SoftCrossEntropy(torch.autograd.Function):
    """Per row: −Σ_k t_k log_softmax(s / temp)_k = lse(s / temp) Σ_k t_k − Σ_k t_k s_k / temp.

    The forward pass keeps per row only the log-sum-exp and Σ t; the backward pass writes
    (softmax(s / temp) Σ t − t) · grad / temp straight into the gradient.
    """

    @staticmethod
    def forward(ctx: Any, logits: Tensor, targets: Tensor, temp: float) -> Tensor:
        if ctx.needs_input_grad[1]:
            raise ValueError("soft_cross_entropy gives no gradient to its targets")
        dtype = torch.promote_types(fp32_or_wider(logits[:0]).dtype, targets.dtype)
        rows, width = logits.shape
        lse = torch.empty(rows, dtype=dtype, device=logits.device)
        mass = torch.empty_like(lse)
        dot = torch.empty_like(lse)
        for block in row_blocks(rows, width, lse.element_size()):
            scaled = logits[block].to(dtype) / temp
            lse[block] = torch.logsumexp(scaled, dim=-1)
            mass[block] = targets[block].to(dtype).sum(dim=-1)
            dot[block] = (targets[block] * scaled).sum(dim=-1)
        ctx.save_for_backward(logits, targets, lse, mass)
        ctx.temp = temp
        return lse * mass - dot

    @staticmethod
    def backward(ctx: Any, grad_rows: Tensor) -> tuple[Tensor, None, None]:
        logits, targets, lse, mass = ctx.saved_tensors
        temp = ctx.temp
        grad = torch.empty(logits.shape, dtype=lse.dtype, device=logits.device)
        scale = grad_rows.to(lse.dtype) / temp
        for block in row_blocks(logits.shape[0], logits.shape[1], grad.element_size()):
            part = grad[block]
            torch.div(logits[block].to(lse.dtype), temp, out=part)
            part.sub_(lse[block, None]).exp_().mul_(mass[block, None])
            part.sub_(targets[block]).mul_(scale[block, None])
        return grad.to(logits.dtype), None, None


def soft_cross_entropy(logits: Tensor, targets: Tensor, temp: float) -> Tensor:
    """``−(targets · log_softmax(logits / temp)).sum(-1)`` per row, computed in fp32 or wider.

    Args:
        logits: (N, K) student logits (gradients flow to them).
        targets: (N, K) target distributions (no gradient).
        temp: the student temperature.

    Returns:
        (N,) cross-entropy of each row.
    """
    result: Tensor = _SoftCrossEntropy.apply(logits, targets, temp)
    return result


__all__ = ["centered_softmax", "row_blocks", "soft_cross_entropy"]
