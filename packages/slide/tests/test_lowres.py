"""Low-resolution reads of slides without a pyramid: JPEG tiles decoded at reduced scale."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from gpfm.slide import lowres, make_synthetic_slide, open_slide, segment_tissue


@pytest.fixture(scope="module")
def single_level(tmp_path_factory):
    """A 2,400 x 1,800 px JPEG-tiled TIFF with one level (no pyramid), and its pixels."""
    folder = tmp_path_factory.mktemp("lowres")
    synthetic = make_synthetic_slide(folder / "pyramid.tiff", 2400, 1800, 0.5, seed=4)
    with open_slide(synthetic.path) as slide:
        pixels = slide.read_region((0, 0), 0, slide.dimensions)
    path = folder / "flat.tiff"
    tifffile.imwrite(path, pixels, tile=(256, 256), compression="jpeg", photometric="rgb")
    return path


def exact(slide, downsample):
    """What read_downsampled returns without reduced-scale decoding."""
    original = lowres.read_downsampled_jpeg
    lowres.read_downsampled_jpeg = lambda *args, **kwargs: None
    try:
        return slide.read_downsampled(downsample)
    finally:
        lowres.read_downsampled_jpeg = original


@pytest.mark.parametrize("downsample", [2.0, 5.5, 16.0, 40.0])
def test_reduced_scale_read_matches_the_full_decode(single_level, downsample):
    with open_slide(single_level, mpp=0.5) as slide:
        assert slide.level_count == 1
        reads = []
        read_region = slide.reader.read_region
        slide.reader.read_region = lambda *a: reads.append(a[2]) or read_region(*a)  # type: ignore[method-assign]
        fast = slide.read_downsampled(downsample)
        # Only the one native tile of the decoder's probe goes through the backend.
        assert reads == [(256, 256)]
        slide.reader.read_region = read_region  # type: ignore[method-assign]
        reference = exact(slide, downsample)
    assert fast.shape == reference.shape
    difference = np.abs(fast.astype(np.int16) - reference.astype(np.int16))
    assert difference.mean() < 1.5
    assert np.percentile(difference, 99) < 32


def test_tissue_mask_is_the_same_from_reduced_scale_decoding(single_level, monkeypatch):
    with open_slide(single_level, mpp=0.5) as slide:
        fast = segment_tissue(slide).mask
        monkeypatch.setattr(lowres, "read_downsampled_jpeg", lambda *a, **k: None)
        reference = segment_tissue(slide).mask
    assert (fast == reference).mean() > 0.99


def test_scale_is_the_largest_reduction_that_keeps_the_resolution():
    assert lowres.jpeg_scale(16.0, (256, 256)) == 8
    assert lowres.jpeg_scale(5.5, (256, 256)) == 4
    assert lowres.jpeg_scale(1.5, (256, 256)) is None
    assert lowres.jpeg_scale(16.0, (252, 252)) == 4  # 252 is not a multiple of 8


def test_files_that_are_not_jpeg_tiled_read_as_before(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 255, (600, 700, 3), dtype=np.uint8)
    path = tmp_path / "lzw.tiff"
    tifffile.imwrite(path, pixels, tile=(128, 128), compression="zlib")
    with open_slide(path, mpp=0.5) as slide:
        assert lowres.read_downsampled_jpeg(slide, 0, 4.0) is None
        assert slide.read_downsampled(4.0).shape == (150, 175, 3)
