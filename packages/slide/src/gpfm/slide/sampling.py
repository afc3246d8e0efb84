"""Which tiles of a slide to take, and how many from each slide to meet a target mix.

``candidate_order`` ranks a slide's tiles, seeded: ``"uniform"`` is a random permutation (every
tissue tile equally likely); ``"stratified"`` splits the range of the tiles' tissue fractions
into ``bins`` equal-width bins and takes one tile from each non-empty bin in turn, so tiles at
the tissue's edge (partly glass) are as common as tiles in its middle. A curator walks the order
and keeps the first N tiles that pass its quality checks, so a rejected tile is replaced by the
next one, never by a re-draw.

``slide_quotas`` says how many patches each slide gives so that groups of slides (a tissue type,
a cohort, or a pair of them) reach a target mix of the total.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import replace
from typing import TypeVar

import numpy as np

from gpfm.slide.tiling import Tiles

SAMPLING_STRATEGIES = ("uniform", "stratified")

Group = TypeVar("Group", bound=Hashable)


def candidate_order(
    tiles: Tiles, seed: int, strategy: str = "uniform", bins: int = 4
) -> np.ndarray:
    """Indices of ``tiles`` in the order a sampler should try them (int64, a permutation).

    Args:
        tiles: one slide's tiles (their ``tissue_fraction`` is used by ``"stratified"``).
        seed: the same seed gives the same order.
        strategy: ``"uniform"`` or ``"stratified"`` (by tissue fraction; see the module).
        bins: tissue-fraction bins of ``"stratified"``.
    """
    if strategy not in SAMPLING_STRATEGIES:
        raise ValueError(f"strategy must be one of {SAMPLING_STRATEGIES}, got {strategy!r}")
    rng = np.random.default_rng(seed)
    count = len(tiles)
    if strategy == "uniform" or count == 0:
        return rng.permutation(count).astype(np.int64)
    # Equal-width bins over the fractions present, each shuffled, then dealt out in turn:
    # bin 0's first, bin 1's first, ..., bin 0's second, ...
    fractions = np.asarray(tiles.tissue_fraction, dtype=np.float64)
    low, high = float(fractions.min()), float(fractions.max())
    edges = np.linspace(low, high, max(1, bins) + 1)[1:-1]
    which = np.searchsorted(edges, fractions, side="right")
    groups = [rng.permutation(np.flatnonzero(which == b)) for b in range(max(1, bins))]
    groups = [g for g in groups if len(g)]
    rounds = max(len(g) for g in groups)
    dealt = [g[r] for r in range(rounds) for g in groups if r < len(g)]
    return np.asarray(dealt, dtype=np.int64)


def subset(tiles: Tiles, indices: np.ndarray) -> Tiles:
    """The tiles at ``indices`` (in that order), with everything needed to read them."""
    indices = np.asarray(indices, dtype=np.int64)
    return replace(
        tiles,
        coords=np.asarray(tiles.coords)[indices],
        tissue_fraction=np.asarray(tiles.tissue_fraction)[indices],
    )


def group_targets(
    groups: Sequence[Group], total: int, mix: Mapping[Group, float] | None = None
) -> dict[Group, int]:
    """Patches each group should give so that they make ``total`` in proportion to ``mix``.

    ``mix`` maps a group to its weight (default: equal weights for the groups present); groups
    without weight give none. Rounding is by largest remainder, so the targets sum to ``total``.
    """
    present = list(dict.fromkeys(groups))
    weights = {g: float(mix.get(g, 0.0)) if mix is not None else 1.0 for g in present}
    if mix is not None:
        unknown = sorted(map(str, set(mix) - set(present)))
        if unknown:
            raise ValueError(f"the mix names groups no slide belongs to: {unknown}")
    if any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise ValueError(f"mix weights must be >= 0 with a positive sum, got {weights}")
    norm = sum(weights.values())
    exact = {g: total * w / norm for g, w in weights.items()}
    targets = {g: int(v) for g, v in exact.items()}
    by_remainder = sorted(present, key=lambda g: (-(exact[g] - targets[g]), present.index(g)))
    for g in by_remainder[: total - sum(targets.values())]:
        targets[g] += 1
    return targets


def slide_quotas(
    groups: Sequence[Group],
    patches_per_slide: int,
    mix: Mapping[Group, float] | None = None,
    balance: bool = True,
) -> list[int]:
    """Patches to take from each slide, in the order of ``groups`` (one group per slide).

    Without ``balance`` every slide gives ``patches_per_slide``. With it the total
    (``patches_per_slide`` x slides) is split over the groups as ``group_targets`` says, and a
    group's share evenly over its slides (the first slides take the remainder), so a rare
    tissue type's slides each give more patches and a common one's fewer.
    """
    if patches_per_slide < 0:
        raise ValueError(f"patches_per_slide must be >= 0, got {patches_per_slide}")
    if not balance:
        return [patches_per_slide] * len(groups)
    targets = group_targets(groups, patches_per_slide * len(groups), mix)
    members: dict[Group, list[int]] = {}
    for index, group in enumerate(groups):
        members.setdefault(group, []).append(index)
    quotas = [0] * len(groups)
    for group, slides in members.items():
        share, extra = divmod(targets[group], len(slides))
        for rank, index in enumerate(slides):
            quotas[index] = share + (rank < extra)
    return quotas


__all__ = [
    "SAMPLING_STRATEGIES",
    "candidate_order",
    "group_targets",
    "slide_quotas",
    "subset",
]
