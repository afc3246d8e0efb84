"""Slide to features end to end: our feature file and TRIDENT's hold the same features.

TRIDENT's ``extract_patch_features`` (commit a91fa8490e0210ebbbe58452c3babe009e0ab7ca,
``trident/wsi_objects/WSI.py:929-949`` patcher, ``:1020-1035`` file) is run on our coordinates
file with the transcriptions of ``packages/slide/tests/test_coords_peers.py``; Patho-Bench's
loader (``packages/heads/tests/test_features_peers.py``) then reads both files.
"""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from gpfm.heads import write_features
from gpfm.slide import make_synthetic_slide, open_slide, read_tiles, tile, write_coords
from gpfm.slide.storage import coords_attributes

REPO = Path(__file__).resolve().parents[1]


def _module(relative: str):
    spec = importlib.util.spec_from_file_location(
        Path(relative).stem + "_transcribed", REPO / relative
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


coords_peers = _module("packages/slide/tests/test_coords_peers.py")
features_peers = _module("packages/heads/tests/test_features_peers.py")


def toy_encoder(tiles: np.ndarray) -> np.ndarray:
    """(N, 6) float32: per-channel mean and standard deviation of each 224 px tile."""
    flat = tiles.reshape(len(tiles), -1, 3).astype(np.float32)
    return np.concatenate([flat.mean(axis=1), flat.std(axis=1)], axis=1)


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("e2e")
    slide_path = make_synthetic_slide(folder / "slide-1.tiff", 3000, 2400, mpp=0.25, seed=5).path
    with open_slide(slide_path) as slide:
        tiles = tile(slide, mpp=0.5, patch_size=224, min_tissue=0.5)
        ours = np.stack([rgb for _, rgb in read_tiles(slide, tiles)])
    # Keep tiles inside the slide (TRIDENT reads the overhang black, we read it as glass).
    width, height = tiles.slide_dimensions
    inside = (tiles.coords[:, 0] + 448 <= width) & (tiles.coords[:, 1] + 448 <= height)
    coords_path = write_coords(folder / "coords" / "slide-1.h5", tiles)
    write_features(
        folder / "ours" / "slide-1.h5",
        toy_encoder(ours[inside]),
        tiles.coords[inside],
        encoder="toy",
        mpp=tiles.mpp,
        patch_size=tiles.patch_size,
        patch_size_level0=tiles.patch_size_level0,
        coords_attrs=coords_attributes(tiles),
    )
    # TRIDENT: its patcher on our coords file, its encoder call, its file.
    wsi = coords_peers.TridentOpenSlideWSI(slide_path)
    patcher, route = coords_peers.trident_patcher(wsi, coords_path)
    assert route == "trident"
    coords_attrs, coords = coords_peers.trident_read_coords(coords_path)
    theirs = np.stack(patcher.tiles())[inside]
    (folder / "trident").mkdir()  # WSI.py:1023
    coords_peers.trident_save_h5(
        str(folder / "trident" / "slide-1.h5"),
        assets={"features": toy_encoder(theirs), "coords": coords[inside]},
        attributes={
            "features": {"name": "slide-1", "savetodir": str(folder), "encoder": None},
            "coords": coords_attrs,
        },
    )
    return folder


def test_patho_bench_reads_the_same_features_from_ours_and_tridents(extracted):
    ours, our_attrs = features_peers.patho_bench_sample(str(extracted / "ours"), "slide-1")
    theirs, their_attrs = features_peers.patho_bench_sample(str(extracted / "trident"), "slide-1")
    assert np.array_equal(ours["coords"].numpy(), theirs["coords"].numpy())
    assert our_attrs == their_attrs == {"patch_size_level0": 448}
    difference = np.abs(ours["features"].numpy() - theirs["features"].numpy())
    assert difference[:, :3].max() < 1.0  # channel means: the filters agree on average
    assert difference.mean() < 1.0


def test_tridents_slide_encoders_get_the_same_batch_from_ours_and_tridents(extracted):
    ours = features_peers.trident_slide_encoder_batch(extracted / "ours" / "slide-1.h5")
    theirs = features_peers.trident_slide_encoder_batch(extracted / "trident" / "slide-1.h5")
    assert ours["coords"].equal(theirs["coords"])
    for key in ("patch_size_level0", "patch_size", "level0_magnification", "target_magnification"):
        assert ours["attributes"][key] == theirs["attributes"][key], key
