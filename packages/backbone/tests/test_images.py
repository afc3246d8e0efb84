"""ROI images to features with an encoder's own transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from gpfm.backbone import ImageReadError, encode_images, image_files, load_encoder


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return load_encoder("vit_tiny_patch16", random_init=True)


def _write_images(folder, count=5):
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (96, 96, 3), dtype=np.uint8) for _ in range(count)]
    folder.mkdir(parents=True, exist_ok=True)
    for index, array in enumerate(arrays):
        Image.fromarray(array).save(folder / f"patch_{index:02d}.png")
    return arrays


def test_a_folder_gives_one_row_per_image_in_sorted_order(encoder, tmp_path):
    arrays = _write_images(tmp_path / "roi")
    (tmp_path / "roi" / "notes.txt").write_text("not an image")
    paths = image_files(tmp_path / "roi")
    assert [p.name for p in paths] == [f"patch_{i:02d}.png" for i in range(5)]
    features = encode_images(encoder, tmp_path / "roi", batch_size=2)
    with torch.no_grad():
        expected = encoder(torch.stack([encoder.transform(a) for a in arrays]))
    assert features.shape == (5, 192) and features.dtype == torch.float32
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(encode_images(encoder, arrays, batch_size=3), features)


def test_unreadable_and_missing_images_are_named(encoder, tmp_path):
    (tmp_path / "roi").mkdir()
    (tmp_path / "roi" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ImageReadError, match=r"broken\.png"):
        encode_images(encoder, tmp_path / "roi")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ImageReadError, match="no images"):
        image_files(tmp_path / "empty")
    with pytest.raises(ImageReadError, match="no such folder"):
        image_files(tmp_path / "missing")
