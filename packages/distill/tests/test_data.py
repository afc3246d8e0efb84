import numpy as np
import pytest
from PIL import Image

from gpfm.distill import ImageFileDataset, SyntheticPatchDataset


def test_folder_and_list_file(tmp_path):
    for index in range(3):
        (tmp_path / "a").mkdir(exist_ok=True)
        Image.fromarray(np.full((8, 8, 3), index * 50, np.uint8)).save(
            tmp_path / "a" / f"{index}.png"
        )
    (tmp_path / "notes.txt").write_text("not an image")
    folder = ImageFileDataset(tmp_path / "a")
    assert len(folder) == 3 and folder[1].size == (8, 8)
    listing = tmp_path / "list.txt"
    listing.write_text("a/2.png\na/0.png\n")
    images = ImageFileDataset(listing)
    assert np.asarray(images[0])[0, 0, 0] == 100


def test_empty_or_missing_sources_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="no images"):
        ImageFileDataset(tmp_path)
    with pytest.raises(FileNotFoundError, match="absent"):
        ImageFileDataset(tmp_path / "absent")


def test_unreadable_image_names_the_file(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"nope")
    with pytest.raises(OSError, match=r"bad\.png"):
        ImageFileDataset([bad])[0]


def test_synthetic_patches_are_deterministic_and_stained():
    data = SyntheticPatchDataset(4, size=64, seed=1)
    first = np.asarray(data[2])
    assert first.shape == (64, 64, 3) and first.dtype == np.uint8
    assert np.array_equal(first, np.asarray(SyntheticPatchDataset(4, size=64, seed=1)[2]))
    assert not np.array_equal(first, np.asarray(data[3]))
    # Stained tissue absorbs green most: pink/purple, not grey.
    assert first[..., 1].mean() < first[..., 0].mean()
    with pytest.raises(IndexError):
        data[4]
