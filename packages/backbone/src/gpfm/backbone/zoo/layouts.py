"""Small helpers that the per-family converters share: unwrap, take a prefix, fuse q/k/v."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch
from torch import Tensor

from gpfm.backbone.checkpoint import CheckpointError, unwrap


def unwrap_tensors(
    checkpoint: Mapping[str, Any], strip: Iterable[str] = ("module.",)
) -> dict[str, Tensor]:
    """The tensors of a checkpoint, out of ``{"state_dict"|"model": ...}`` and ``module.``.

    Raises:
        CheckpointError: no tensors at all.
    """
    tensors = unwrap(checkpoint)
    for prefix in strip:
        if all(k.startswith(prefix) for k in tensors):
            tensors = {k[len(prefix) :]: v for k, v in tensors.items()}
    return tensors


def take_prefix(state: Mapping[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """The entries under ``prefix``, with it removed.

    Raises:
        CheckpointError: none is under ``prefix``.
    """
    taken = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    if not taken:
        raise CheckpointError(f"no keys start with {prefix!r} (found e.g. {list(state)[:6]})")
    return taken


def drop(state: Mapping[str, Tensor], *prefixes: str) -> dict[str, Tensor]:
    """``state`` without the entries whose key starts with any of ``prefixes``."""
    return {k: v for k, v in state.items() if not k.startswith(prefixes)}


def fuse_qkv(state: dict[str, Tensor], query: str, key: str, value: str, target: str) -> None:
    """Replace separate ``{query,key,value}.{weight,bias}`` by one ``{target}.{weight,bias}``.

    Raises:
        CheckpointError: one of the three projections is missing.
    """
    for kind in ("weight", "bias"):
        names = [f"{part}.{kind}" for part in (query, key, value)]
        present = [n for n in names if n in state]
        if not present:
            continue
        if len(present) != 3:
            raise CheckpointError(f"incomplete attention projections: {present} without the rest")
        state[f"{target}.{kind}"] = torch.cat([state.pop(n) for n in names], dim=0)


def rename(state: Mapping[str, Tensor], table: Iterable[tuple[str, str]]) -> dict[str, Tensor]:
    """Apply ``(old, new)`` substring replacements, in order, to every key."""
    pairs = list(table)
    renamed = {}
    for key, value in state.items():
        for old, new in pairs:
            key = key.replace(old, new)
        renamed[key] = value
    return renamed
