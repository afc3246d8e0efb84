import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpfm.slide import TissueMask, open_slide, segment_tissue, tile
from gpfm.slide.tiling import grid_coords, grid_step, tissue_fractions


@settings(deadline=None)
@given(
    width=st.integers(1, 5000),
    height=st.integers(1, 5000),
    patch=st.integers(16, 1024),
    overlap=st.floats(0.0, 0.9),
)
def test_grid_covers_the_slide_with_regular_steps(width, height, patch, overlap):
    step = grid_step(patch, overlap)
    coords = grid_coords(width, height, step)
    assert coords.dtype == np.int64
    assert (coords >= 0).all()
    assert (coords[:, 0] < width).all() and (coords[:, 1] < height).all()
    assert len(np.unique(coords, axis=0)) == len(coords)
    assert len(coords) == -(-width // step) * -(-height // step)
    assert set(np.unique(coords[:, 0]) % step) == {0}
    # Every pixel of the slide lies in some tile (overlap only makes tiles share pixels).
    assert coords[:, 0].max() + patch >= width and coords[:, 1].max() + patch >= height
    assert step <= patch


def _brute_force_fraction(mask: TissueMask, x: int, y: int, size: int) -> float:
    ds = mask.downsample
    x0, y0 = round(x / ds), round(y / ds)
    x1, y1 = max(round((x + size) / ds), x0 + 1), max(round((y + size) / ds), y0 + 1)
    window = np.zeros((y1 - y0, x1 - x0), bool)
    height, width = mask.mask.shape
    cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if cx1 > cx0 and cy1 > cy0:
        window[cy0 - y0 : cy1 - y0, cx0 - x0 : cx1 - x0] = mask.mask[cy0:cy1, cx0:cx1]
    return float(window.mean())


@settings(max_examples=50, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    downsample=st.sampled_from([4.0, 8.0, 16.0, 12.5]),
    size=st.integers(8, 600),
)
def test_integral_image_fractions_equal_counting_mask_pixels(seed, downsample, size):
    rng = np.random.default_rng(seed)
    mask = TissueMask(rng.random((40, 50)) > 0.6, downsample * 0.25, downsample, (0, 0))
    width, height = int(50 * downsample), int(40 * downsample)
    coords = grid_coords(width, height, max(1, size // 2))
    fractions = tissue_fractions(mask, coords, size)
    assert ((fractions >= 0) & (fractions <= 1)).all()
    for (x, y), fraction in zip(coords[::7], fractions[::7], strict=True):
        assert fraction == pytest.approx(_brute_force_fraction(mask, x, y, size), abs=1e-6)


def test_tiles_at_target_mpp_carry_how_to_read_them(synthetic):
    with open_slide(synthetic.path) as slide:
        tiles = tile(slide, mpp=2.0, patch_size=224, min_tissue=0.5)
        assert tiles.patch_size_level0 == 896
        assert tiles.level == 1 and tiles.read_size == 224
        assert tiles.slide_mpp == pytest.approx(0.5) and tiles.mpp == 2.0
        assert tiles.slide_dimensions == (4000, 3000)
        assert tiles.coords.shape[1] == 2 and tiles.coords.dtype == np.int64
        assert (tiles.tissue_fraction >= 0.5).all()


def test_min_tissue_filters_monotonically_and_zero_keeps_everything(synthetic):
    with open_slide(synthetic.path) as slide:
        tissue = segment_tissue(slide)
        counts = [len(tile(slide, 1.0, 128, min_tissue=m, tissue=tissue)) for m in (0, 0.1, 0.5, 1)]
        everything = tile(slide, 1.0, 128, min_tissue=0, tissue=tissue)
    assert counts == sorted(counts, reverse=True)
    assert counts[0] == len(grid_coords(4000, 3000, 256)) == len(everything)
    assert counts[2] > 0


def test_tiles_kept_lie_on_ground_truth_tissue(synthetic):
    with open_slide(synthetic.path) as slide:
        tiles = tile(slide, mpp=0.5, patch_size=256, min_tissue=0.9)
    ds = synthetic.mask_downsample
    centres = (tiles.coords + 128) // ds
    on_tissue = synthetic.tissue_mask[centres[:, 1], centres[:, 0]]
    assert len(tiles) > 20
    assert on_tissue.mean() > 0.97


def test_overlap_halves_the_step(synthetic):
    with open_slide(synthetic.path) as slide:
        tiles = tile(slide, mpp=0.5, patch_size=256, overlap=0.5, min_tissue=0)
    xs = np.unique(tiles.coords[:, 0])
    assert np.diff(xs).max() == 128 and tiles.step_level0 == 128


def test_mpp_override_is_carried_by_the_tiles(shared_slides):
    with open_slide(shared_slides / "kidney-48-5.tif", mpp=0.25) as slide:
        tiles = tile(slide, mpp=0.5, patch_size=112, min_tissue=0)
    assert tiles.slide_mpp == 0.25
    assert tiles.patch_size_level0 == 224
    assert len(tiles) == 7 * 5


def test_cmu_slide_tiles_hold_tissue_only(shared_slides):
    with open_slide(shared_slides / "CMU-1-Small-Region.svs") as slide:
        tiles = tile(slide, mpp=0.5, patch_size=224, min_tissue=0.5)
        assert len(tiles) > 10
        for x, y in tiles.coords:
            region = slide.read_region((int(x), int(y)), 0, (224, 224)).astype(int)
            saturation = region.max(-1) - region.min(-1)
            # Stained tissue is saturated; glass (about 10 here) is not.
            assert (saturation > 30).mean() > 0.25, (x, y)


@pytest.mark.parametrize(
    ("argument", "value"),
    [("mpp", 0), ("patch_size", 0), ("overlap", 1.0), ("overlap", -0.1), ("min_tissue", 1.5)],
)
def test_bad_tiling_arguments_are_rejected(synthetic, argument, value):
    with open_slide(synthetic.path) as slide, pytest.raises(ValueError, match=argument):
        tile(slide, **{argument: value})


def test_native_level_tiles_take_the_nearest_level_and_its_true_resolution(synthetic):
    # The synthetic slide: 0.5 µm/px, levels downsampled 1 and 4 (0.5 and 2.0 µm/px).
    with open_slide(synthetic.path) as slide:
        assert [round(d) for d in slide.level_downsamples] == [1, 4]
        coarse = tile(slide, mpp=1.5, patch_size=128, min_tissue=0, native_level=True)
        tie = tile(slide, mpp=1.0, patch_size=128, min_tissue=0, native_level=True)
    assert coarse.level == 1 and coarse.mpp == pytest.approx(2.0)
    assert coarse.patch_size_level0 == 512 and coarse.read_size == coarse.patch_size == 128
    assert tie.level == 0 and tie.mpp == 0.5 and tie.read_size == 128  # ties go to the finer


def test_tiles_have_a_short_repr():
    import numpy as np

    from gpfm.slide import Tiles

    tiles = Tiles(
        np.zeros((5000, 2), np.int64), np.ones(5000, np.float32), 0.5, 224, 448, 0, 1.0, 0.25,
        (100_000, 80_000), slide_path="slides/case-1.svs",
    )  # fmt: skip
    text = repr(tiles)
    assert text == (
        "Tiles(5000 tiles of 224 px at 0.5 µm/px, level 0 (448 px read), overlap 0, "
        "min_tissue 0, slide='case-1.svs')"
    )
