"""Blank, blurred and near-duplicate patches are rejected exactly where the thresholds say."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from gpfm.slide import open_slide, read_tiles, tile
from gpfm.slide.quality import (
    BLANK,
    BLURRED,
    DUPLICATE,
    QualityFilter,
    QualityThresholds,
    hamming_distances,
    measure,
    perceptual_hash,
    sharpness,
    tissue_fraction,
)


def stained(seed: int, size: int = 128) -> np.ndarray:
    """A pink-purple textured patch, sharp (per-pixel noise plus nuclei)."""
    rng = np.random.default_rng(seed)
    patch = np.empty((size, size, 3), np.uint8)
    patch[...] = (200, 110, 160)
    patch = np.clip(patch + rng.normal(0, 18, patch.shape), 0, 255).astype(np.uint8)
    for _ in range(40):
        x, y = rng.integers(0, size, 2)
        cv2.circle(patch, (int(x), int(y)), int(rng.integers(2, 6)), (80, 40, 130), -1)
    return patch


def test_measures_of_made_up_patches():
    glass = np.full((64, 64, 3), 240, np.uint8)
    assert tissue_fraction(glass) == 0.0 and sharpness(glass) == 0.0
    half = glass.copy()
    half[:, :32] = (200, 110, 160)
    assert tissue_fraction(half) == pytest.approx(0.5)
    black = np.zeros((64, 64, 3), np.uint8)
    black[..., 0] = 20  # saturated, but too dark to be tissue
    assert tissue_fraction(black) == 0.0
    sharp = stained(0)
    assert sharpness(cv2.GaussianBlur(sharp, (0, 0), 3)) < sharpness(sharp) / 10


def test_measures_equal_plain_numpy_and_do_not_mix_between_threads():
    from concurrent.futures import ThreadPoolExecutor

    patches = [stained(seed, size) for seed in range(6) for size in (96, 128)]

    def plain(rgb):
        wide = rgb.astype(np.int64)
        value, low = wide.max(axis=2), wide.min(axis=2)
        tissue = (value >= 30) & (255 * (value - low) >= 20 * value) & (value > 0)
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.int64)
        padded = np.pad(grey, 1, mode="reflect")  # OpenCV's default border, BORDER_REFLECT_101
        laplacian = (
            padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:]
            - 4 * grey
        )  # fmt: skip
        return tissue.mean(), laplacian.astype(np.float64).var()

    thresholds = QualityThresholds()
    with ThreadPoolExecutor(4) as pool:  # each thread has its own scratch arrays
        measured = list(pool.map(lambda rgb: measure(rgb, thresholds), patches * 3))
    for rgb, measures in zip(patches * 3, measured, strict=True):
        tissue, variance = plain(rgb)
        assert measures.tissue_fraction == pytest.approx(tissue, abs=1e-12)
        assert measures.sharpness == pytest.approx(variance, rel=1e-12)
        assert measures.phash == perceptual_hash(rgb)


def test_perceptual_hash_survives_recompression_and_tells_patches_apart():
    patch = stained(1)
    _, jpeg = cv2.imencode(".jpg", patch, [cv2.IMWRITE_JPEG_QUALITY, 60])
    recompressed = cv2.imdecode(jpeg, cv2.IMREAD_UNCHANGED)
    hashes = np.array([perceptual_hash(stained(s)) for s in range(2, 12)], dtype=np.uint64)
    assert (
        hamming_distances(
            np.array([perceptual_hash(recompressed)], np.uint64), perceptual_hash(patch)
        )[0]
        <= 4
    )
    assert hamming_distances(hashes, perceptual_hash(patch)).min() > 12
    assert 0 <= perceptual_hash(patch) < 2**64


def test_each_reason_is_its_threshold():
    patches = [stained(s) for s in range(30)]
    patches += [np.full((128, 128, 3), 238, np.uint8)] * 2  # glass
    patches += [
        cv2.GaussianBlur(p, (0, 0), sigma) for p, sigma in zip(patches, (1, 2, 4, 8), strict=False)
    ]
    patches += [patches[0], np.ascontiguousarray(patches[1][:, ::-1])]  # a copy, a mirror
    patches += [patches[5][:, :64].repeat(2, axis=1)]
    for thresholds in (
        QualityThresholds(),
        QualityThresholds(min_tissue=0.9, min_sharpness=400.0, max_hash_distance=10),
        QualityThresholds(min_tissue=0.0, min_sharpness=0.0, max_hash_distance=-1),
    ):
        checker = QualityFilter(thresholds)
        kept: list[int] = []
        for patch in patches:
            reason, m = checker.check(patch)
            # The expected decision, from the measures and the thresholds alone.
            if m.tissue_fraction < thresholds.min_tissue:
                expected = BLANK
            elif m.sharpness < thresholds.min_sharpness:
                expected = BLURRED
            elif (
                kept
                and thresholds.max_hash_distance >= 0
                and min(bin(m.phash ^ h).count("1") for h in kept) <= thresholds.max_hash_distance
            ):
                expected = DUPLICATE
            else:
                expected = None
                kept.append(m.phash)
            assert reason == expected
        assert sum(checker.rejected.values()) == len(patches) - len(kept)
    default = QualityFilter()
    reasons = [default.check(p)[0] for p in patches]
    assert reasons[30:32] == [BLANK, BLANK]  # glass
    assert reasons[34:36] == [BLURRED, BLURRED]  # sigma 4 and 8
    assert reasons[36] == DUPLICATE  # the exact copy
    assert reasons[:30] == [None] * 30


def test_thresholds_are_checked():
    with pytest.raises(ValueError, match="min_tissue"):
        QualityThresholds(min_tissue=1.5)
    with pytest.raises(ValueError, match="max_hash_distance"):
        QualityThresholds(max_hash_distance=65)


def test_real_slide_blank_tiles_are_blank(shared_slides):
    with open_slide(shared_slides / "CMU-1-Small-Region.svs") as slide:
        tiles = tile(slide, mpp=1.0, patch_size=128, min_tissue=0.0)
        thresholds = QualityThresholds()
        found = {BLANK: 0, None: 0}
        for index, rgb in read_tiles(slide, tiles):
            m = measure(rgb, thresholds)
            reason = QualityFilter(thresholds).reason(m)
            if tiles.tissue_fraction[index] == 0 and rgb.min() > 200:
                assert reason == BLANK  # glass far from the tissue
            found[BLANK if reason == BLANK else None] += 1
        assert found[BLANK] > 0 and found[None] > 0


def test_curation_keeps_the_first_tiles_in_candidate_order_that_pass(synthetic):
    from gpfm.slide import read_tile
    from gpfm.slide.curation import curate_patches
    from gpfm.slide.sampling import candidate_order

    thresholds = QualityThresholds(min_tissue=0.6, min_sharpness=30.0, max_hash_distance=8)
    with open_slide(synthetic.path) as slide:
        tiles = tile(slide, mpp=0.5, patch_size=256, min_tissue=0)
        result = curate_patches(slide, tiles, 12, seed=3, thresholds=thresholds, num_workers=3)
        # The reference: one tile at a time, in candidate order, until 12 are kept.
        reference = QualityFilter(thresholds)
        kept, tried = [], 0
        for index in candidate_order(tiles, 3):
            tried += 1
            reason, _ = reference.check(read_tile(slide, tiles, int(index)))
            if reason is None:
                kept.append(int(index))
                if len(kept) == 12:
                    break
    assert [patch.index for patch in result.patches] == kept
    assert result.tried == tried and result.rejected == reference.rejected
    assert sum(reference.rejected.values()) > 0  # the thresholds did reject some
