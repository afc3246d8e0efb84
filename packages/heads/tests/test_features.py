import h5py
import numpy as np
import pytest

from gpfm.heads import FeatureFileError, InvalidInputError, read_bag, read_features, write_features
from gpfm.heads.features import bag_shape


def _write(path, n=5, dim=8):
    features = np.arange(n * dim, dtype=np.float32).reshape(n, dim)
    coords = np.stack([np.arange(n) * 448, np.arange(n) * 224], axis=1)
    return write_features(
        path,
        features,
        coords,
        encoder="toy-vit",
        mpp=0.5,
        patch_size=224,
        weights_sha256="abc",
        coords_attrs={"patch_size_level0": 448},
    )


def test_feature_file_round_trip_keeps_features_coords_and_attributes(tmp_path):
    path = _write(tmp_path / "features" / "toy-vit" / "slide-1.h5")
    read = read_features(path)
    assert read.features.shape == (5, 8) and read.embed_dim == 8 and len(read) == 5
    assert np.array_equal(read.features[2], np.arange(16, 24, dtype=np.float32))
    assert read.coords.dtype == np.int64 and read.coords[3].tolist() == [1344, 672]
    assert read.encoder == "toy-vit"
    assert read.attrs["embed_dim"] == 8
    assert read.attrs["mpp"] == 0.5 and read.attrs["patch_size"] == 224
    assert read.attrs["weights_sha256"] == "abc"
    assert read.coords_attrs["patch_size_level0"] == 448


def test_file_layout_is_the_one_other_tools_read(tmp_path):
    path = _write(tmp_path / "slide.h5")
    with h5py.File(path, "r") as h5:
        assert h5["features"].shape == (5, 8)
        assert h5["coords"].shape == (5, 2) and h5["coords"].dtype == np.int64
        assert h5.attrs["encoder"] == "toy-vit" and h5.attrs["embed_dim"] == 8


def test_read_bag_reads_float32_features_only(tmp_path):
    path = tmp_path / "half.h5"
    features = np.random.default_rng(0).normal(size=(7, 4)).astype(np.float16)
    write_features(path, features, np.zeros((7, 2)), encoder="e")
    bag = read_bag(path)
    assert bag.dtype == np.float32 and np.array_equal(bag, features.astype(np.float32))
    assert bag_shape(path) == (7, 4)


def test_a_failed_write_leaves_no_file_behind(tmp_path):
    path = tmp_path / "slide.h5"
    with pytest.raises(TypeError):
        write_features(path, np.zeros((3, 2)), np.zeros((3, 2)), encoder="e", attrs={"x": object()})
    assert list(tmp_path.iterdir()) == []


def test_write_rejects_coords_that_do_not_match_the_features(tmp_path):
    with pytest.raises(InvalidInputError, match=r"coords must have shape \(N, 2\) = \(3, 2\)"):
        write_features(tmp_path / "a.h5", np.zeros((3, 4)), np.zeros((2, 2)), encoder="e")
    with pytest.raises(InvalidInputError, match="2-D float"):
        write_features(tmp_path / "a.h5", np.zeros((3,)), np.zeros((3, 2)), encoder="e")


def test_errors_name_the_file_and_what_is_missing(tmp_path):
    with pytest.raises(FeatureFileError, match=r"missing\.h5: feature file not found"):
        read_bag(tmp_path / "missing.h5")
    text = tmp_path / "text.h5"
    text.write_text("not hdf5")
    with pytest.raises(FeatureFileError, match=r"text\.h5: not a readable HDF5"):
        read_bag(text)
    with h5py.File(tmp_path / "nofeatures.h5", "w") as h5:
        h5["coords"] = np.zeros((2, 2))
    with pytest.raises(FeatureFileError, match=r"nofeatures\.h5: no `features` dataset"):
        read_features(tmp_path / "nofeatures.h5")
    with h5py.File(tmp_path / "trident.h5", "w") as h5:
        h5["features"] = np.zeros((1, 3, 4))
    with pytest.raises(FeatureFileError, match=r"trident.h5: `features` has shape \(1, 3, 4\)"):
        read_bag(tmp_path / "trident.h5")
    with h5py.File(tmp_path / "nocoords.h5", "w") as h5:
        h5["features"] = np.zeros((3, 4))
    assert read_bag(tmp_path / "nocoords.h5").shape == (3, 4)
    with pytest.raises(FeatureFileError, match=r"nocoords\.h5: no `coords` dataset"):
        read_features(tmp_path / "nocoords.h5")
    with h5py.File(tmp_path / "wrongdim.h5", "w") as h5:
        h5["features"] = np.zeros((3, 4))
        h5.attrs["embed_dim"] = 5
    with pytest.raises(FeatureFileError, match="embed_dim=5 but `features` has 4 columns"):
        read_bag(tmp_path / "wrongdim.h5")
