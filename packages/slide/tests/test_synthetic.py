"""Tests of the synthetic slide generator (gpfm.slide.synthetic)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import openslide
import pytest

from gpfm.slide import synthetic
from gpfm.slide.synthetic import SyntheticSlide, make_synthetic_slide

WIDTH, HEIGHT, MPP, SEED = 3000, 2000, 0.5, 11


@pytest.fixture(scope="module")
def slide(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSlide:
    folder = tmp_path_factory.mktemp("synthetic")
    return make_synthetic_slide(folder / "slide.tiff", WIDTH, HEIGHT, mpp=MPP, seed=SEED)


def _rgb(osr: openslide.OpenSlide, xy: tuple[int, int], level: int, size: int) -> np.ndarray:
    return np.asarray(osr.read_region(xy, level, (size, size)).convert("RGB"), dtype=np.float64)


def _deepest_point(mask: np.ndarray) -> tuple[int, int, int]:
    """(row, col, depth) of a mask pixel that survives the most 3 x 3 erosions."""
    current, depth = mask.copy(), 0
    while True:
        padded = np.pad(current, 1, constant_values=False)
        eroded = current.copy()
        for dr in (0, 1, 2):
            for dc in (0, 1, 2):
                eroded &= padded[dr : dr + mask.shape[0], dc : dc + mask.shape[1]]
        if not eroded.any():
            rows, cols = np.nonzero(current)
            middle = len(rows) // 2
            return int(rows[middle]), int(cols[middle]), depth
        current, depth = eroded, depth + 1


def _region_around(slide: SyntheticSlide, mask: np.ndarray, size: int) -> tuple[int, int]:
    """Level-0 top-left of a ``size`` px square lying well inside ``mask``."""
    r, c, depth = _deepest_point(mask)
    ds = slide.mask_downsample
    assert depth * ds >= size // 2 + ds, "mask has no region large enough"
    return int((c + 0.5) * ds) - size // 2, int((r + 0.5) * ds) - size // 2


def _saturation(rgb: np.ndarray) -> np.ndarray:
    high, low = rgb.max(axis=-1), rgb.min(axis=-1)
    return (high - low) / np.maximum(high, 1.0)


def test_openslide_opens_it_as_generic_tiff_with_mpp_and_levels(slide: SyntheticSlide) -> None:
    with openslide.OpenSlide(slide.path) as osr:
        props = osr.properties
        assert props[openslide.PROPERTY_NAME_VENDOR] == "generic-tiff"
        assert float(props[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(MPP, rel=1e-6)
        assert float(props[openslide.PROPERTY_NAME_MPP_Y]) == pytest.approx(MPP, rel=1e-6)
        assert "synthetic" in props[openslide.PROPERTY_NAME_COMMENT]
        assert osr.level_count == 2
        assert osr.level_dimensions == ((WIDTH, HEIGHT), (750, 500))
        assert osr.level_downsamples == pytest.approx((1.0, 4.0))
        assert props["openslide.level[0].tile-width"] == "256"
    assert slide.level_dimensions == ((WIDTH, HEIGHT), (750, 500))
    assert (slide.width, slide.height, slide.mpp, slide.seed) == (WIDTH, HEIGHT, MPP, SEED)


def test_non_round_mpp_and_deeper_pyramid(tmp_path: Path) -> None:
    s = make_synthetic_slide(tmp_path / "s.tif", 9000, 700, mpp=0.2527, seed=1)
    with openslide.OpenSlide(s.path) as osr:
        assert float(osr.properties["openslide.mpp-x"]) == pytest.approx(0.2527, rel=1e-6)
        assert osr.level_dimensions == ((9000, 700), (2250, 175), (563, 44))
        assert osr.level_downsamples[1] == pytest.approx(4.0, rel=0.01)
        assert osr.level_downsamples[2] == pytest.approx(16.0, rel=0.02)


def test_masks_have_the_documented_grid(slide: SyntheticSlide) -> None:
    ds = slide.mask_downsample
    assert ds == 16  # power of two nearest to 8 µm/px at 0.5 µm/px
    assert slide.mask_mpp == pytest.approx(MPP * ds)
    expected = (math.ceil(HEIGHT / ds), math.ceil(WIDTH / ds))
    assert slide.tissue_mask.shape == slide.tumour_mask.shape == expected
    assert slide.tissue_mask.dtype == slide.tumour_mask.dtype == np.bool_
    assert not slide.tissue_mask.flags.writeable


def test_tumour_is_inside_tissue_and_fractions_are_sensible(slide: SyntheticSlide) -> None:
    tissue, tumour = slide.tissue_mask, slide.tumour_mask
    assert not (tumour & ~tissue).any()
    assert 0.1 < tissue.mean() < 0.7
    assert 0.1 < tumour.sum() / tissue.sum() < 0.6


def test_requested_fractions_are_met(tmp_path: Path) -> None:
    s = make_synthetic_slide(
        tmp_path / "s.tif", 2000, 1500, tissue_fraction=0.5, tumour_fraction=0.2, mask_downsample=4
    )
    assert s.tissue_mask.mean() == pytest.approx(0.5, abs=0.02)
    assert s.tumour_mask.sum() / s.tissue_mask.sum() == pytest.approx(0.2, abs=0.02)
    none = make_synthetic_slide(tmp_path / "n.tif", 1000, 800, tumour_fraction=0.0)
    assert none.tissue_mask.any() and not none.tumour_mask.any()


def _erode(mask: np.ndarray) -> np.ndarray:
    padded = np.pad(mask, 1, constant_values=False)
    out = mask.copy()
    for dr in (0, 1, 2):
        for dc in (0, 1, 2):
            out &= padded[dr : dr + mask.shape[0], dc : dc + mask.shape[1]]
    return out


def _read_level(slide: SyntheticSlide, level: int) -> tuple[np.ndarray, float]:
    with openslide.OpenSlide(slide.path) as osr:
        w, h = osr.level_dimensions[level]
        rgb = np.asarray(osr.read_region((0, 0), level, (w, h)).convert("RGB"), np.float64)
        return rgb, osr.level_downsamples[level]


def _mask_at_level(
    mask: np.ndarray, ds: int, shape: tuple[int, ...], downsample: float
) -> np.ndarray:
    """The mask cell holding each level pixel's centre."""
    h, w = shape[:2]
    rows = np.minimum(((np.arange(h) + 0.5) * downsample / ds).astype(int), mask.shape[0] - 1)
    cols = np.minimum(((np.arange(w) + 0.5) * downsample / ds).astype(int), mask.shape[1] - 1)
    return mask[np.ix_(rows, cols)]


def test_tumour_is_darker_and_more_purple_than_stroma(slide: SyntheticSlide) -> None:
    rgb, downsample = _read_level(slide, 1)
    ds = slide.mask_downsample
    tumour = _mask_at_level(_erode(slide.tumour_mask), ds, rgb.shape, downsample)
    stroma_mask = _erode(slide.tissue_mask & ~slide.tumour_mask)
    stroma = _mask_at_level(stroma_mask, ds, rgb.shape, downsample)
    t_mean, s_mean = rgb[tumour].mean(0), rgb[stroma].mean(0)
    assert t_mean.mean() < s_mean.mean() - 25  # darker
    assert t_mean[2] - t_mean[0] > s_mean[2] - s_mean[0] + 15  # bluer relative to red
    assert s_mean[0] > s_mean[2] > s_mean[1]  # stroma is pink
    # read at level 0 inside each class: textured, not flat colour
    with openslide.OpenSlide(slide.path) as osr:
        t_region = _rgb(osr, _region_around(slide, slide.tumour_mask, 64), 0, 64)
        s_region = _rgb(osr, _region_around(slide, stroma_mask, 64), 0, 64)
    assert t_region.std() > 10 and s_region.std() > 5
    assert t_region.mean() < s_region.mean()


def test_background_is_near_white_glass(slide: SyntheticSlide) -> None:
    with openslide.OpenSlide(slide.path) as osr:
        glass = _rgb(osr, _region_around(slide, ~slide.tissue_mask, 128), 0, 128)
    mean = glass.reshape(-1, 3).mean(0)
    assert ((mean > 238) & (mean < 252)).all()
    assert glass.std() < 4


@pytest.mark.parametrize("level", [0, 1])
def test_painted_tissue_matches_the_mask(slide: SyntheticSlide, level: int) -> None:
    rgb, downsample = _read_level(slide, level)
    painted = _saturation(rgb) > 0.1
    truth = _mask_at_level(slide.tissue_mask, slide.mask_downsample, rgb.shape, downsample)
    iou = (painted & truth).sum() / (painted | truth).sum()
    assert iou > 0.9


def test_same_seed_same_bytes_other_seed_other_layout(tmp_path: Path) -> None:
    a = make_synthetic_slide(tmp_path / "a.tif", 1500, 1000, seed=3)
    b = make_synthetic_slide(tmp_path / "b.tif", 1500, 1000, seed=3)
    c = make_synthetic_slide(tmp_path / "c.tif", 1500, 1000, seed=4)
    assert a.path.read_bytes() == b.path.read_bytes()
    assert np.array_equal(a.tissue_mask, b.tissue_mask)
    assert np.array_equal(a.tumour_mask, b.tumour_mask)
    iou = (a.tissue_mask & c.tissue_mask).sum() / (a.tissue_mask | c.tissue_mask).sum()
    assert iou < 0.8
    assert a.path.read_bytes() != c.path.read_bytes()


def test_write_is_atomic_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    s = make_synthetic_slide(str(tmp_path / "slide.tif"), 600, 500)
    assert isinstance(s.path, Path)
    assert [p.name for p in tmp_path.iterdir()] == ["slide.tif"]
    # overwriting works and still leaves a single file
    make_synthetic_slide(tmp_path / "slide.tif", 700, 500, seed=2)
    assert [p.name for p in tmp_path.iterdir()] == ["slide.tif"]


def test_failed_write_keeps_the_old_file_and_removes_the_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "slide.tif"
    target.write_bytes(b"previous content")
    calls = {"n": 0}
    encode = synthetic._encode_jpeg

    def failing_encode(arr: np.ndarray, quality: int) -> bytes:
        calls["n"] += 1
        if calls["n"] > 20:
            raise RuntimeError("disk on fire")
        return encode(arr, quality)

    monkeypatch.setattr(synthetic, "_encode_jpeg", failing_encode)
    with pytest.raises(RuntimeError, match="disk on fire"):
        make_synthetic_slide(target, 3000, 2000)
    assert target.read_bytes() == b"previous content"
    assert [p.name for p in tmp_path.iterdir()] == ["slide.tif"]


def test_openslide_decodes_the_colours_that_were_written(tmp_path: Path) -> None:
    """The JPEG photometric (YCbCr 4:2:0) is declared right: an RGB pattern reads back."""
    tile = 64
    h, w = 192, 320
    pattern = np.zeros((h, w, 3), np.uint8)
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (240, 140, 190), (90, 50, 140)]
    for i, colour in enumerate(colours):
        pattern[:, i * 64 : (i + 1) * 64] = colour
    pattern[128:, :, :] = np.linspace(0, 255, w, dtype=np.uint8)[None, :, None]
    tiles = [
        synthetic._encode_jpeg(pattern[y : y + tile, x : x + tile].copy(), 95)
        for y in range(0, h, tile)
        for x in range(0, w, tile)
    ]
    path = tmp_path / "pattern.tif"
    synthetic._write_pyramid(
        path, [(w, h)], [tiles], mpp=1.0, tile_size=tile, description="gpfm synthetic test"
    )
    with openslide.OpenSlide(path) as osr:
        assert osr.properties["openslide.vendor"] == "generic-tiff"
        got = np.asarray(osr.read_region((0, 0), 0, (w, h)).convert("RGB"), np.float64)
    for i, colour in enumerate(colours):
        inner = got[8:120, i * 64 + 8 : i * 64 + 56].reshape(-1, 3).mean(0)
        assert np.abs(inner - colour).max() < 6, (colour, inner)
    assert np.abs(got[136:, 8:-8] - pattern[136:, 8:-8]).mean() < 3


def test_tiny_slides_work(tmp_path: Path) -> None:
    for w, h in [(1, 1), (17, 300), (257, 255)]:
        s = make_synthetic_slide(tmp_path / f"{w}x{h}.tif", w, h, seed=5)
        with openslide.OpenSlide(s.path) as osr:
            assert osr.dimensions == (w, h)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"width": 0}, "width"),
        ({"height": -5}, "height"),
        ({"width": 10.5}, "width"),
        ({"mpp": 0}, "mpp"),
        ({"mpp": -0.25}, "mpp"),
        ({"mpp": float("nan")}, "mpp"),
        ({"seed": -1}, "seed"),
        ({"tile_size": 100}, "tile_size"),
        ({"jpeg_quality": 0}, "jpeg_quality"),
        ({"jpeg_quality": 101}, "jpeg_quality"),
        ({"tissue_fraction": 0.0}, "tissue_fraction"),
        ({"tissue_fraction": 0.95}, "tissue_fraction"),
        ({"n_tissue_pieces": 0}, "n_tissue_pieces"),
        ({"tumour_fraction": 1.0}, "tumour_fraction"),
        ({"mask_downsample": 3}, "mask_downsample"),
    ],
)
def test_bad_arguments_raise_value_error_naming_them(
    tmp_path: Path, kwargs: dict[str, object], name: str
) -> None:
    args: dict[str, object] = {"path": tmp_path / "x.tif", "width": 100, "height": 100}
    args.update(kwargs)
    with pytest.raises(ValueError, match=name):
        make_synthetic_slide(**args)
    assert not any(tmp_path.iterdir())
