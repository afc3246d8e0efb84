import h5py
import numpy as np
import pytest

from gpfm.slide import SlideError, Tiles, read_coords, write_coords
from gpfm.slide.storage import atomic_path


def _tiles() -> Tiles:
    return Tiles(
        coords=np.array([[0, 0], [448, 0], [896, 448]], dtype=np.int64),
        tissue_fraction=np.array([0.5, 0.75, 1.0], dtype=np.float32),
        mpp=0.5,
        patch_size=224,
        patch_size_level0=448,
        level=1,
        level_downsample=4.0,
        slide_mpp=0.25,
        slide_dimensions=(4000, 3000),
        overlap=0.0,
        min_tissue=0.5,
        slide_path="/data/slide.svs",
    )


def test_coords_round_trip(tmp_path):
    tiles = _tiles()
    path = write_coords(tmp_path / "coords" / "slide.h5", tiles)
    again = read_coords(path)
    assert np.array_equal(again.coords, tiles.coords)
    assert np.array_equal(again.tissue_fraction, tiles.tissue_fraction)
    for name in ("mpp", "patch_size", "patch_size_level0", "level", "level_downsample"):
        assert getattr(again, name) == getattr(tiles, name), name
    assert again.slide_mpp == 0.25
    assert again.slide_dimensions == (4000, 3000)
    assert again.slide_path == "/data/slide.svs"


def test_coords_file_has_the_attributes_clam_and_trident_read(tmp_path):
    path = write_coords(tmp_path / "slide.h5", _tiles())
    with h5py.File(path, "r") as h5:
        coords = h5["coords"]
        assert coords.dtype == np.int64 and coords.shape == (3, 2)
        attrs = coords.attrs
        assert attrs["patch_size"] == 224
        assert attrs["patch_level"] == 1
        assert list(attrs["downsample"]) == [4.0, 4.0]
        assert list(attrs["level_dim"]) == [1000, 750]
        assert attrs["patch_size_level0"] == 448
        assert attrs["target_mpp"] == 0.5 and attrs["slide_mpp"] == 0.25
        assert attrs["overlap"] == 0.0 and attrs["min_tissue"] == 0.5
        assert "gpfm_version" in attrs
        assert h5["tissue_fraction"].shape == (3,)


def test_no_temporary_file_is_left_behind(tmp_path):
    write_coords(tmp_path / "slide.h5", _tiles())
    assert [p.name for p in tmp_path.iterdir()] == ["slide.h5"]


def _write_half_then_fail(target):
    with atomic_path(target) as temporary:
        temporary.write_text("half")
        raise RuntimeError("interrupted")


def test_an_interrupted_write_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError):
        _write_half_then_fail(tmp_path / "out.txt")
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("complete")
    with pytest.raises(RuntimeError):
        _write_half_then_fail(target)
    assert target.read_text() == "complete"


def test_reading_a_file_that_is_not_coords_names_it(tmp_path):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(SlideError, match=r"bad\.h5"):
        read_coords(bad)
    foreign = tmp_path / "foreign.h5"
    with h5py.File(foreign, "w") as h5:
        h5.create_dataset("coords", data=np.zeros((2, 2), np.int64))
    with pytest.raises(SlideError, match="re-tile"):
        read_coords(foreign)
