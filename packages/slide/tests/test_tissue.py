import json

import numpy as np
import pytest
from PIL import Image

from gpfm.slide import open_slide, segment_tissue
from gpfm.slide.tissue import TissueMask, tissue_mask_from_rgb

GLASS = (243, 242, 245)
PINK = (225, 140, 190)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def _glass(height: int = 400, width: int = 400) -> np.ndarray:
    noise = np.random.default_rng(0).integers(-3, 4, (height, width, 3))
    return np.clip(np.array(GLASS) + noise, 0, 255).astype(np.uint8)


def test_synthetic_tissue_matches_the_ground_truth(synthetic):
    with open_slide(synthetic.path) as slide:
        tissue = segment_tissue(slide, mpp=synthetic.mask_mpp)
    assert tissue.mask.shape == synthetic.tissue_mask.shape
    assert tissue.downsample == pytest.approx(synthetic.mask_downsample)
    assert _iou(tissue.mask, synthetic.tissue_mask) > 0.9


def test_blank_slide_gives_an_empty_mask():
    mask = tissue_mask_from_rgb(_glass(), mpp=8.0)
    assert mask.dtype == bool
    assert not mask.any()


def test_faint_tissue_next_to_strong_tissue_is_kept():
    image = _glass()
    image[50:150, 50:350] = (150, 60, 140)  # strongly stained
    image[250:350, 50:350] = (232, 208, 222)  # faint eosin
    mask = tissue_mask_from_rgb(image, mpp=8.0)
    assert mask[60:140, 60:340].all()
    assert mask[260:340, 60:340].mean() > 0.95
    assert not mask[200, 200]


def test_pen_marks_and_dark_scanner_borders_are_not_tissue():
    image = _glass()
    image[100:300, 100:300] = PINK
    image[20:40, :] = (40, 160, 60)  # green pen line
    image[360:380, :] = (40, 60, 200)  # blue pen line
    image[:, :12] = (10, 10, 10)  # black scanner border
    mask = tissue_mask_from_rgb(image, mpp=8.0)
    assert mask[120:280, 120:280].all()
    assert not mask[20:40].any()
    assert not mask[360:380].any()
    assert not mask[:, :12].any()


def test_small_holes_are_filled_and_large_ones_kept():
    image = _glass(600, 600)
    image[50:550, 50:550] = PINK
    image[100:106, 100:106] = GLASS  # 48 µm hole: filled
    image[250:450, 250:450] = GLASS  # 1.6 mm lumen: kept
    mask = tissue_mask_from_rgb(image, mpp=8.0)
    assert mask[100:106, 100:106].all()
    assert not mask[300:400, 300:400].any()


def test_debris_below_the_minimum_area_is_dropped():
    image = _glass()
    image[100:300, 100:300] = PINK
    image[350:355, 350:355] = PINK  # 40 x 40 µm speck
    mask = tissue_mask_from_rgb(image, mpp=8.0, min_area_um2=20_000)
    assert mask[150, 150]
    assert not mask[350:355, 350:355].any()


def test_pale_blue_haematoxylin_is_tissue_not_ink(shared_slides):
    # The kidney sample is stained so that its tissue looks pale blue (hue about 225°).
    with open_slide(shared_slides / "kidney-48-5.tif", mpp=4.0) as slide:
        tissue = segment_tissue(slide, mpp=8.0)
    assert 0.001 < tissue.tissue_fraction < 0.05


def _square_mask() -> TissueMask:
    mask = np.zeros((100, 120), bool)
    mask[10:60, 20:80] = True
    mask[30:40, 40:50] = False  # a hole
    return TissueMask(mask=mask, mpp=8.0, downsample=16.0, slide_dimensions=(1920, 1600))


def test_geojson_outlines_are_in_level0_pixels_with_holes():
    geojson = _square_mask().to_geojson()
    json.dumps(geojson)  # serialisable as is
    assert geojson["type"] == "FeatureCollection"
    (feature,) = geojson["features"]
    exterior, hole = feature["geometry"]["coordinates"]
    xs = [x for x, _ in exterior]
    ys = [y for _, y in exterior]
    # A quarter mask pixel inside the tissue's pixel edges (x 20-80, y 10-60 mask pixels).
    assert min(xs) == pytest.approx(20.25 * 16) and max(xs) == pytest.approx(79.75 * 16)
    assert min(ys) == pytest.approx(10.25 * 16) and max(ys) == pytest.approx(59.75 * 16)
    assert exterior[0] == exterior[-1] and hole[0] == hole[-1]
    assert feature["properties"]["classification"]["name"] == "Tissue"


def test_empty_mask_gives_an_empty_feature_collection():
    empty = TissueMask(np.zeros((10, 10), bool), 8.0, 16.0, (160, 160))
    assert empty.to_geojson() == {"type": "FeatureCollection", "features": []}
    assert empty.tissue_fraction == 0.0


def test_cmu_slide_tissue_is_found(shared_slides):
    with open_slide(shared_slides / "CMU-1-Small-Region.svs") as slide:
        tissue = segment_tissue(slide)
        thumbnail = np.asarray(
            Image.fromarray(slide.thumbnail(512)).resize(tissue.mask.shape[::-1])
        )
    assert 0.15 < tissue.tissue_fraction < 0.6
    # Tissue pixels are stained: far more saturated than what is called glass.
    saturation = thumbnail.max(-1).astype(int) - thumbnail.min(-1)
    assert saturation[tissue.mask].mean() > 3 * saturation[~tissue.mask].mean()
    assert tissue.area_mm2 == pytest.approx(tissue.mask.sum() * (tissue.mpp / 1000) ** 2)
