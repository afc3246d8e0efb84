"""Feature files read by the peers' own loaders, transcribed here from their lines.

- Patho-Bench, commit 660e77044640e3d7d2f1150cc6721e97454993bf:
  ``patho_bench/datasets/PatchEmbeddingsDataset.py:42-53`` (finding ``<slide_id>.h5``),
  ``:127-132`` (what it keeps) and ``patho_bench/datasets/BaseDataset.py:171-195`` (``load_h5``).
- TRIDENT, commit a91fa8490e0210ebbbe58452c3babe009e0ab7ca: ``trident/wsi_objects/WSI.py:1102-1141``
  (``extract_slide_features``: the batch a slide encoder gets) and
  ``trident/slide_encoder_models/load.py:440-444`` (Madeleine: ``coords // patch_size_level0``).
- CLAM, commit 53e2409d4a8189c682c173382964a85f114f923c:
  ``dataset_modules/dataset_generic.py:336-352`` (``pt_files`` and ``h5_files`` loaders) and
  ``extract_features_fp.py:110-117`` (how ``pt_files`` are written).
"""

import os

import h5py
import numpy as np
import pytest
import torch

from gpfm.heads import read_features, write_features
from gpfm.heads.features import UNKNOWN, export_clam

PATCH_SIZE_LEVEL0 = 448


def _slide_features(folder, slide_id="slide-1", n=6, dim=5, dtype=np.float32):
    rng = np.random.default_rng(len(slide_id))
    features = rng.normal(size=(n, dim)).astype(dtype)
    coords = np.stack([np.arange(n) % 3, np.arange(n) // 3], axis=1) * PATCH_SIZE_LEVEL0
    path = write_features(
        folder / f"{slide_id}.h5",
        features,
        coords,
        encoder="toy",
        mpp=0.5,
        patch_size=224,
        patch_size_level0=PATCH_SIZE_LEVEL0,
        coords_attrs={"patch_size": 224, "target_magnification": 20.0},
    )
    return path, features, coords


# --- Patho-Bench -------------------------------------------------------------------------------


def patho_bench_load_h5(load_path, keys=None):
    # BaseDataset.py:183-195
    assert isinstance(keys, list) or keys is None, "keys must be a list or None"
    assert os.path.exists(load_path), f"File {load_path} does not exist"
    with h5py.File(load_path, "r") as file:
        if keys is None:
            keys = list(file.keys())
        assets = {key: file[key][:] for key in keys}
        attributes = {key: dict(file[key].attrs) for key in keys}
    return assets, attributes


def patho_bench_sample(load_from, slide_id):
    # PatchEmbeddingsDataset.py:45-53: slides are found by file name
    available_slide_paths = {}
    for file in os.listdir(load_from):
        if file.endswith(".h5"):
            available_slide_paths[os.path.splitext(file)[0]] = os.path.join(load_from, file)
    # :127-132 and :139: features, coords and patch_size_level0, as tensors
    data, attrs = patho_bench_load_h5(available_slide_paths[slide_id], keys=["features", "coords"])
    attributes = {
        "patch_size_level0": attrs["coords"]["patch_size_level0"]  # noqa: SIM401 (verbatim)
        if "patch_size_level0" in attrs["coords"]
        else None
    }
    return {key: torch.from_numpy(val) for key, val in data.items()}, attributes


def test_patho_bench_reads_our_features_coords_and_patch_size_level0(tmp_path):
    _, features, coords = _slide_features(tmp_path, "slide-1")
    _slide_features(tmp_path, "slide-2")
    assets, attributes = patho_bench_sample(str(tmp_path), "slide-1")
    assert torch.equal(assets["features"], torch.from_numpy(features))
    assert torch.equal(assets["coords"], torch.from_numpy(coords.astype(np.int64)))
    assert attributes["patch_size_level0"] == PATCH_SIZE_LEVEL0


def test_patho_bench_combines_slides_of_a_patient_only_with_equal_attributes(tmp_path):
    # PatchEmbeddingsDataset.py:134-135 asserts equal attributes across a patient's slides.
    _slide_features(tmp_path, "slide-a")
    _slide_features(tmp_path, "slide-b")
    first = patho_bench_sample(str(tmp_path), "slide-a")[1]
    second = patho_bench_sample(str(tmp_path), "slide-b")[1]
    assert first == second


# --- TRIDENT's slide encoders ----------------------------------------------------------------


def trident_slide_encoder_batch(patch_features_path):
    # WSI.py:1102-1105
    with h5py.File(patch_features_path, "r") as f:
        coords = f["coords"][:]
        patch_features = f["features"][:]
        coords_attrs = dict(f["coords"].attrs)
    # WSI.py:1123-1141
    patch_features = torch.from_numpy(patch_features).float()
    patch_features = patch_features.unsqueeze(0)
    coords = torch.from_numpy(coords)
    if torch.is_floating_point(coords):
        coords = torch.round(coords).to(torch.int64)
    else:
        coords = coords.to(torch.int64)
    coords = coords.unsqueeze(0)
    if "patch_size_level0" in coords_attrs:
        coords_attrs["patch_size_level0"] = int(coords_attrs["patch_size_level0"])
    return {"features": patch_features, "coords": coords, "attributes": coords_attrs}


def test_trident_slide_encoders_get_our_features_and_a_tile_grid(tmp_path):
    path, features, coords = _slide_features(tmp_path, dtype=np.float16)
    batch = trident_slide_encoder_batch(path)
    assert torch.equal(batch["features"][0], torch.from_numpy(features).float())
    assert batch["coords"].shape == (1, len(coords), 2)
    # load.py:443-444 (Madeleine): the grid position of each tile
    grid = batch["coords"] // int(batch["attributes"]["patch_size_level0"])
    assert grid[0].tolist() == (coords // PATCH_SIZE_LEVEL0).tolist()
    assert batch["attributes"]["patch_size"] == 224


def test_without_patch_size_level0_trident_slide_encoders_have_nothing_to_read(tmp_path):
    path = write_features(tmp_path / "bare.h5", np.zeros((2, 3)), np.zeros((2, 2)), encoder="e")
    with pytest.raises(KeyError):
        trident_slide_encoder_batch(path)["attributes"]["patch_size_level0"]  # load.py:351


# --- CLAM --------------------------------------------------------------------------------------


def clam_load_pt(data_dir, slide_id):
    # dataset_generic.py:338-339
    full_path = os.path.join(data_dir, "pt_files", "{}.pt".format(slide_id))  # noqa: UP032
    return torch.load(full_path)


def clam_load_h5(data_dir, slide_id):
    # dataset_generic.py:346-352
    full_path = os.path.join(data_dir, "h5_files", "{}.h5".format(slide_id))  # noqa: UP032
    with h5py.File(full_path, "r") as hdf5_file:
        features = hdf5_file["features"][:]
        coords = hdf5_file["coords"][:]
    return torch.from_numpy(features), coords


def test_clam_pt_files_hold_the_float32_features_its_training_scripts_load(tmp_path):
    paths = [_slide_features(tmp_path / "features", f"slide-{i}")[0] for i in range(2)]
    written = export_clam(paths, tmp_path / "clam", h5_files=True)
    assert [p.name for p in written] == ["slide-0.pt", "slide-1.pt"]
    for index, path in enumerate(paths):
        features = read_features(path).features
        loaded = clam_load_pt(str(tmp_path / "clam"), f"slide-{index}")
        # extract_features_fp.py:111-117 saves torch.from_numpy of float32 features
        assert loaded.dtype == torch.float32 and torch.equal(loaded, torch.from_numpy(features))
        h5_features, coords = clam_load_h5(str(tmp_path / "clam"), f"slide-{index}")
        assert torch.equal(h5_features, loaded)
        assert np.array_equal(coords, read_features(path).coords)
    assert sorted(p.name for p in (tmp_path / "clam").rglob("*")) == [
        "h5_files",
        "pt_files",
        "slide-0.h5",
        "slide-0.pt",
        "slide-1.h5",
        "slide-1.pt",
    ]


# --- None attributes ---------------------------------------------------------------------------


def test_an_unknown_weights_checksum_is_stored_as_none_text(tmp_path):
    path = write_features(
        tmp_path / "a.h5", np.zeros((2, 3)), np.zeros((2, 2)), encoder="e", weights_sha256=None
    )
    assert read_features(path).attrs["weights_sha256"] == UNKNOWN == "none"
    path = write_features(
        tmp_path / "b.h5",
        np.zeros((2, 3)),
        np.zeros((2, 2)),
        encoder="e",
        attrs={"note": None},
        coords_attrs={"savetodir": None},
    )
    read = read_features(path)
    assert read.attrs["note"] == "none" and read.coords_attrs["savetodir"] == "none"


def test_patch_size_level0_given_twice_must_agree(tmp_path):
    from gpfm.heads import InvalidInputError

    with pytest.raises(InvalidInputError, match="patch_size_level0=448 but coords_attrs has 224"):
        write_features(
            tmp_path / "a.h5",
            np.zeros((2, 3)),
            np.zeros((2, 2)),
            encoder="e",
            patch_size_level0=448,
            coords_attrs={"patch_size_level0": 224},
        )
