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
