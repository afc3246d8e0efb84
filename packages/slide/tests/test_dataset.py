import pickle

import numpy as np
import torch
from torch.utils.data import DataLoader

from gpfm.slide import PatchDataset, open_slide, read_coords, read_tile, tile, write_coords


def test_items_are_tiles_at_the_target_resolution(synthetic):
    with open_slide(synthetic.path) as slide:
        tiles = tile(slide, mpp=1.0, patch_size=112, min_tissue=0.5)
        expected = read_tile(slide, tiles, 2)
    dataset = PatchDataset(synthetic.path, tiles)
    item = dataset[2]
    assert len(dataset) == len(tiles)
    assert item.shape == (3, 112, 112) and item.dtype == torch.uint8
    assert np.array_equal(item.permute(1, 2, 0).numpy(), expected)
    assert dataset.coords(2) == tuple(int(v) for v in tiles.coords[2])


def test_transform_gets_the_uint8_tile(synthetic):
    with open_slide(synthetic.path) as slide:
        tiles = tile(slide, mpp=1.0, patch_size=64, min_tissue=0.5)
    dataset = PatchDataset(synthetic.path, tiles, transform=lambda rgb: float(rgb.mean()))
    assert 0 < dataset[0] < 255


def test_works_with_dataloader_worker_processes(synthetic):
    with open_slide(synthetic.path) as slide:
        tiles = tile(slide, mpp=1.0, patch_size=64, min_tissue=0.5)
    dataset = PatchDataset(synthetic.path, tiles)
    dataset[0]  # an open handle in the parent must not leak into the workers
    loader = DataLoader(dataset, batch_size=8, num_workers=2)
    batches = list(loader)
    stacked = torch.cat(batches)
    assert stacked.shape == (len(tiles), 3, 64, 64)
    assert torch.equal(stacked[5], dataset[5])


def test_an_mpp_override_made_when_tiling_needs_no_second_override(tmp_path, shared_slides):
    path = shared_slides / "kidney-48-5.tif"
    with open_slide(path, mpp=0.25) as slide:
        tiles = tile(slide, mpp=0.5, patch_size=112, min_tissue=0)
    write_coords(tmp_path / "kidney.h5", tiles)
    dataset = PatchDataset(path, read_coords(tmp_path / "kidney.h5"))
    assert dataset[0].shape == (3, 112, 112)


def test_pickles_without_its_slide_handle(synthetic):
    with open_slide(synthetic.path) as slide:
        tiles = tile(slide, mpp=1.0, patch_size=64, min_tissue=0.5)
    dataset = PatchDataset(synthetic.path, tiles)
    dataset[0]
    clone = pickle.loads(pickle.dumps(dataset))
    assert torch.equal(clone[1], dataset[1])
    dataset.close()


def test_multi_slide_dataset_draws_a_seeded_sample_per_slide(synthetic, tmp_path):
    import shutil
    from dataclasses import replace

    import pytest

    from gpfm.slide import MultiSlidePatchDataset, SlideError

    with open_slide(synthetic.path) as slide:
        tiles = tile(slide, mpp=1.0, patch_size=64, min_tissue=0.5)
    coords = tmp_path / "coords"
    write_coords(coords / "a.h5", tiles)
    moved = tmp_path / "slides"
    moved.mkdir()
    shutil.copy(synthetic.path, moved / f"b{synthetic.path.suffix}")
    write_coords(coords / "b.h5", replace(tiles, slide_path=None))  # found in slides_dir

    dataset = MultiSlidePatchDataset(coords, per_slide=5, seed=3, slides_dir=moved)
    again = MultiSlidePatchDataset(coords, per_slide=5, seed=3, slides_dir=moved)
    assert len(dataset) == 10 and len(dataset.slides) == 2
    assert dataset.slides[1].slide_path == moved / f"b{synthetic.path.suffix}"
    assert np.array_equal(dataset.slides[0].tiles.coords, again.slides[0].tiles.coords)
    assert set(map(tuple, dataset.slides[0].tiles.coords)) <= set(map(tuple, tiles.coords))
    assert dataset[7].shape == (3, 64, 64)
    with pytest.raises(SlideError, match="slides_dir"):
        MultiSlidePatchDataset(coords, per_slide=5)
    with pytest.raises(SlideError, match="no coords files"):
        MultiSlidePatchDataset(tmp_path / "empty", per_slide=5)


def test_without_torch_the_datasets_say_which_extra_to_install(monkeypatch):
    import sys

    import pytest

    import gpfm.slide

    monkeypatch.setitem(sys.modules, "torch", None)  # as if PyTorch were not installed
    monkeypatch.delitem(sys.modules, "gpfm.slide.dataset", raising=False)
    monkeypatch.delattr(gpfm.slide, "dataset", raising=False)
    with pytest.raises(ImportError, match=r"gpfm-slide\[torch\]"):
        gpfm.slide.PatchDataset  # noqa: B018
