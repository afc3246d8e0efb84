import numpy as np
import pytest
from PIL import Image

from gpfm.heads import InvalidInputError, attention_to_heatmap, write_heatmap_png
from gpfm.heads.heatmap import heatmap_to_rgba


def test_each_tile_paints_its_own_square_of_the_map():
    coords = np.array([[0, 0], [256, 0], [0, 256]])
    heatmap = attention_to_heatmap(
        np.array([0.1, 0.5, 0.9]),
        coords,
        patch_size_level0=256,
        slide_dimensions=(1024, 512),
        downsample=128,
        normalize="none",
    )
    assert heatmap.shape == (4, 8)
    assert np.allclose(heatmap[:2, :2], 0.1) and np.allclose(heatmap[:2, 2:4], 0.5)
    assert np.allclose(heatmap[2:4, :2], 0.9)
    assert np.isnan(heatmap[:, 4:]).all() and np.isnan(heatmap[2:, 2:]).all()


def test_overlapping_tiles_are_averaged():
    heatmap = attention_to_heatmap(
        np.array([0.0, 1.0]),
        np.array([[0, 0], [100, 0]]),
        patch_size_level0=200,
        slide_dimensions=(300, 200),
        downsample=100,
        normalize="none",
    )
    assert heatmap[0].tolist() == [0.0, 0.5, 1.0]


def test_rank_normalisation_spreads_scores_over_zero_to_one():
    coords = np.array([[0, 0], [10, 0], [20, 0], [30, 0]])
    scores = np.array([1e-4, 3e-4, 2e-4, 0.9])
    heatmap = attention_to_heatmap(
        scores, coords, patch_size_level0=10, slide_dimensions=(40, 10), downsample=10
    )
    assert heatmap[0].tolist() == pytest.approx([0, 2 / 3, 1 / 3, 1])
    minmax = attention_to_heatmap(
        scores,
        coords,
        patch_size_level0=10,
        slide_dimensions=(40, 10),
        downsample=10,
        normalize="minmax",
    )
    assert minmax[0, 3] == 1.0 and minmax[0, 0] == 0.0 and minmax[0, 1] < 0.01


def test_colours_run_from_blue_to_red_and_gaps_are_transparent():
    rgba = heatmap_to_rgba(np.array([[0.0, 1.0, np.nan]]), alpha=0.5)
    low, high, gap = rgba[0]
    assert low[2] > low[0] and high[0] > high[2]
    assert low[3] == high[3] == 128 and gap[3] == 0


def test_png_opens_with_pillow_and_shows_the_heatmap(tmp_path):
    heatmap = np.array([[0.0, 1.0], [np.nan, 0.5]])
    path = write_heatmap_png(tmp_path / "maps" / "slide.png", heatmap)
    image = np.asarray(Image.open(path))
    assert image.shape == (2, 2, 4) and np.array_equal(image, heatmap_to_rgba(heatmap))
    background = np.full((4, 6, 3), 255, np.uint8)
    overlay = np.asarray(
        Image.open(write_heatmap_png(tmp_path / "over.png", heatmap, background=background))
    )
    assert overlay.shape == (4, 6, 3)
    assert overlay[3, 0].tolist() == [255, 255, 255]  # no tile: the background shows
    assert overlay[0, 5, 0] > overlay[0, 5, 2]  # the high-score corner is red
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps", "over.png"]


def test_inputs_are_checked():
    with pytest.raises(InvalidInputError, match=r"coords must be \(N, 2\) with N = 2"):
        attention_to_heatmap(
            np.ones(2), np.zeros((3, 2)), patch_size_level0=1, slide_dimensions=(9, 9)
        )
    with pytest.raises(InvalidInputError, match="normalize must be"):
        attention_to_heatmap(
            np.ones(1),
            np.zeros((1, 2)),
            patch_size_level0=1,
            slide_dimensions=(9, 9),
            normalize="log",
        )
    with pytest.raises(InvalidInputError, match=r"background must be uint8 \(H, W, 3\)"):
        write_heatmap_png("unused.png", np.zeros((2, 2)), background=np.zeros((2, 2)))
