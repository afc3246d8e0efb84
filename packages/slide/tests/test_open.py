"""open_slide on real scanner files, on the formats of the fallback backends, and on bad input."""

from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from gpfm.slide import (
    MissingResolutionError,
    SlideError,
    SlideReadError,
    UnsupportedSlideError,
    open_slide,
)

# Each row of ../shared/data/slides/README.md, as OpenSlide 4 describes the file.
README_ROWS = [
    ("CMU-1-Small-Region.svs", (2220, 2967), 1, 0.499),
    ("boxes_0.dcm", (16, 16), 1, 0.499),
    ("boxes_1.dcm", (16, 16), 1, 0.499),
    ("small.svs", (16, 16), 1, 0.499),
]


@pytest.mark.parametrize(("name", "dimensions", "levels", "mpp"), README_ROWS)
def test_sample_slides_open_as_documented(shared_slides, name, dimensions, levels, mpp):
    with open_slide(shared_slides / name) as slide:
        assert slide.backend == "openslide"
        assert slide.dimensions == dimensions
        assert slide.level_count == levels
        assert slide.mpp == pytest.approx(mpp, abs=1e-3)
        region = slide.read_region((0, 0), 0, (16, 16))
        assert region.shape == (16, 16, 3)
        assert region.dtype == np.uint8


def test_generic_tiff_with_bogus_resolution_needs_mpp(shared_slides):
    with pytest.raises(MissingResolutionError, match=r"boxes\.tiff"):
        open_slide(shared_slides / "boxes.tiff")
    with open_slide(shared_slides / "boxes.tiff", mpp=0.5) as slide:
        assert slide.dimensions == (300, 250)
        assert slide.level_count == 4
        assert slide.mpp == 0.5


def test_flat_kidney_tiff_opens_through_the_tifffile_fallback(shared_slides):
    path = shared_slides / "kidney-48-5.tif"
    with pytest.raises(MissingResolutionError, match=r"kidney-48-5\.tif"):
        open_slide(path)
    with open_slide(path, mpp=0.5) as slide:
        assert slide.backend == "tifffile"
        assert slide.dimensions == (1493, 901)
        whole = slide.read_region((0, 0), 0, (1493, 901))
        assert np.array_equal(whole, tifffile.imread(path)[..., :3])
        assert slide.thumbnail(256).shape[1] == 256


def test_unreadable_pixels_raise_slide_read_error_naming_file_and_region(shared_slides):
    with (
        open_slide(shared_slides / "unreadable.svs") as slide,
        pytest.raises(SlideReadError, match=r"unreadable\.svs.*\(0, 0\)"),
    ):
        slide.read_region((0, 0), 0, (16, 16))


@pytest.mark.parametrize("name", ["unopenable.tiff", "broken.svs", "README.md"])
def test_unsupported_or_corrupt_files_raise_unsupported_slide_error(shared_slides, name):
    with pytest.raises(UnsupportedSlideError, match=name.replace(".", r"\.")):
        open_slide(shared_slides / name)


def test_missing_file_is_unsupported(tmp_path):
    with pytest.raises(UnsupportedSlideError, match="no such file"):
        open_slide(tmp_path / "absent.svs")


def test_every_error_is_a_slide_error():
    for error in (UnsupportedSlideError, MissingResolutionError, SlideReadError):
        assert issubclass(error, SlideError)


def test_flat_tiff_resolution_tag_gives_mpp(tmp_path, rgb_image, write_flat_tiff):
    path = write_flat_tiff(tmp_path / "flat.tif", rgb_image, mpp=0.25)
    with open_slide(path) as slide:
        assert slide.backend == "tifffile"
        assert slide.mpp == pytest.approx(0.25)
        assert slide.native_tile_size(0) == (600, 64)
        assert np.array_equal(
            slide.read_region((100, 50), 0, (300, 200)), rgb_image[50:250, 100:400]
        )


def test_flat_tiff_reads_lazily_and_pads_outside_with_white(tmp_path, rgb_image, write_flat_tiff):
    path = write_flat_tiff(tmp_path / "flat.tif", rgb_image, mpp=0.5)
    with open_slide(path) as slide:
        region = slide.read_region((550, 350), 0, (100, 100))
        assert np.array_equal(region[:50, :50], rgb_image[350:, 550:])
        assert (region[50:] == 255).all() and (region[:, 50:] == 255).all()


def test_flat_tiff_virtual_pyramid_is_area_averaged(tmp_path, write_flat_tiff):
    image = np.random.default_rng(1).integers(0, 256, (2048, 3072, 3), dtype=np.uint8)
    path = write_flat_tiff(tmp_path / "big.tif", image, mpp=0.5)
    with open_slide(path) as slide:
        assert slide.level_downsamples == (1.0, 4.0)
        assert slide.level_dimensions[1] == (768, 512)
        level1 = slide.read_region((0, 0), 1, (16, 16))
        expected = image[:64, :64].reshape(16, 4, 16, 4, 3).mean(axis=(1, 3))
        assert np.abs(level1.astype(float) - expected).max() <= 1.0


def test_ome_tiff_physical_size_gives_mpp(tmp_path, rgb_image):
    path = tmp_path / "image.ome.tif"
    tifffile.imwrite(
        path,
        rgb_image,
        photometric="rgb",
        tile=(128, 128),
        metadata={"PhysicalSizeX": 0.3, "PhysicalSizeY": 0.3},
    )
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(0.3)
        assert np.array_equal(slide.read_region((0, 0), 0, (600, 400)), rgb_image)


def test_pyramidal_ome_tiff_exposes_its_stored_levels(tmp_path):
    base = np.random.default_rng(2).integers(0, 256, (1024, 1024, 3), dtype=np.uint8)
    path = tmp_path / "pyramid.ome.tif"
    with tifffile.TiffWriter(path) as tif:
        options = {"photometric": "rgb", "tile": (256, 256)}
        tif.write(base, subifds=1, metadata={"PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5}, **options)
        tif.write(base[::2, ::2], subfiletype=1, **options)
    with open_slide(path, backend="tifffile") as slide:
        assert slide.level_dimensions == ((1024, 1024), (512, 512))
        assert slide.level_downsamples == (1.0, 2.0)
        assert np.array_equal(
            slide.read_region((256, 0), 1, (64, 64)), base[::2, ::2][:64, 128:192]
        )


def test_png_with_transparency_is_composited_on_white(tmp_path):
    rgba = np.zeros((40, 50, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:20, :, 3] = 255  # top half opaque red-ish, bottom half fully transparent
    path = tmp_path / "image.png"
    Image.fromarray(rgba).save(path)
    with pytest.raises(MissingResolutionError):
        open_slide(path)
    with open_slide(path, mpp=1.0) as slide:
        assert slide.backend == "pillow"
        region = slide.read_region((0, 0), 0, (50, 40))
        assert (region[:20] == (200, 0, 0)).all()
        assert (region[20:] == 255).all()


def test_jpeg_dpi_gives_mpp(tmp_path, rgb_image):
    path = tmp_path / "image.jpg"
    Image.fromarray(rgb_image).save(path, dpi=(50_800, 50_800), quality=95)
    with open_slide(path) as slide:
        assert slide.mpp == pytest.approx(0.5)
        assert slide.dimensions == (600, 400)


def test_read_region_rejects_bad_arguments(shared_slides):
    with open_slide(shared_slides / "small.svs") as slide:
        with pytest.raises(ValueError, match="level"):
            slide.read_region((0, 0), 3, (4, 4))
        with pytest.raises(ValueError, match="size"):
            slide.read_region((0, 0), 0, (0, 4))


def test_unknown_backend_is_rejected(shared_slides):
    with pytest.raises(ValueError, match="backend"):
        open_slide(shared_slides / "small.svs", backend="bioformats")


def test_repr_names_file_size_and_resolution(shared_slides):
    with open_slide(shared_slides / "small.svs") as slide:
        text = repr(slide)
    assert "small.svs" in text and "16x16" in text and "0.499" in text


def test_synthetic_slide_opens_with_openslide(synthetic):
    with open_slide(synthetic.path) as slide:
        assert slide.backend == "openslide"
        assert slide.mpp == pytest.approx(0.5)
        assert slide.dimensions == (4000, 3000)
        assert slide.level_count > 1
        assert slide.native_tile_size(0) is not None


def test_path_may_be_a_string(shared_slides):
    with open_slide(str(shared_slides / "small.svs")) as slide:
        assert isinstance(slide.path, Path)
