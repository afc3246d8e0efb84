from __future__ import annotations

import numpy as np
import pytest

from gpfm.slide.sampling import candidate_order, group_targets, slide_quotas, subset
from gpfm.slide.tiling import Tiles


def make_tiles(fractions: list[float]) -> Tiles:
    count = len(fractions)
    return Tiles(
        coords=np.stack([np.arange(count) * 100, np.zeros(count)], axis=1).astype(np.int64),
        tissue_fraction=np.asarray(fractions, np.float32),
        mpp=0.5,
        patch_size=100,
        patch_size_level0=100,
        level=0,
        level_downsample=1.0,
        slide_mpp=0.5,
        slide_dimensions=(100 * count, 100),
    )


def test_orders_are_seeded_permutations():
    tiles = make_tiles(list(np.linspace(0.5, 1.0, 40)))
    for strategy in ("uniform", "stratified"):
        order = candidate_order(tiles, 3, strategy)
        assert sorted(order.tolist()) == list(range(40))
        assert np.array_equal(order, candidate_order(tiles, 3, strategy))
        assert not np.array_equal(order, candidate_order(tiles, 4, strategy))
    with pytest.raises(ValueError, match="strategy"):
        candidate_order(tiles, 0, "greedy")


def test_stratified_takes_every_tissue_fraction_bin_in_turn():
    # 36 tiles nearly full of tissue, 4 at the edge: uniform sampling would rarely start there.
    tiles = make_tiles([1.0] * 36 + [0.5, 0.55, 0.6, 0.65])
    # bins of 0.125: [0.5, 0.625) has three, [0.625, 0.75) one, [0.875, 1] the other 36
    first = candidate_order(tiles, 0, "stratified", bins=4)[:3]
    assert sorted(tiles.tissue_fraction[first] < 0.7) == [False, True, True]
    uniform = candidate_order(tiles, 0, "uniform")[:3]
    assert sum(tiles.tissue_fraction[uniform] < 0.7) < 2


def test_subset_keeps_rows_in_the_given_order():
    tiles = make_tiles([0.1, 0.2, 0.3])
    part = subset(tiles, np.array([2, 0]))
    assert part.coords[:, 0].tolist() == [
        200,
        0,
    ] and part.tissue_fraction.tolist() == pytest.approx([0.3, 0.1])
    assert part.patch_size == tiles.patch_size and len(part) == 2


def test_quotas_meet_the_mix():
    groups = ["lung"] * 6 + ["kidney"] * 2 + ["brain"]
    assert slide_quotas(groups, 10, balance=False) == [10] * 9
    quotas = slide_quotas(groups, 10)
    per_group = {
        g: sum(q for q, h in zip(quotas, groups, strict=True) if h == g) for g in set(groups)
    }
    assert per_group == {"lung": 30, "kidney": 30, "brain": 30}
    assert quotas[:6] == [5] * 6 and quotas[6:] == [15, 15, 30]
    weighted = slide_quotas(groups, 10, mix={"lung": 2, "kidney": 1, "brain": 0})
    assert sum(weighted[:6]) == 60 and sum(weighted[6:8]) == 30 and weighted[8] == 0
    targets = group_targets(["a", "b", "c"], 10)
    assert sum(targets.values()) == 10 and sorted(targets.values()) == [3, 3, 4]
    with pytest.raises(ValueError, match="no slide"):
        slide_quotas(groups, 10, mix={"liver": 1})
