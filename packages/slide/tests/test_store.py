from __future__ import annotations

import io
import json

import numpy as np
import pytest

pytest.importorskip("pyarrow")

from gpfm.slide.curation import encode_jpeg
from gpfm.slide.errors import StoreError
from gpfm.slide.store import (
    COLUMNS,
    PatchStore,
    Shard,
    read_table,
    rows_to_table,
    write_index,
    write_table,
)


def row(number: int) -> dict[str, object]:
    rgb = np.full((32, 32, 3), (200, 100 + number, 150), np.uint8)
    return {
        "image": encode_jpeg(rgb),
        "slide_id": f"slide-{number % 2}",
        "x": number * 32,
        "y": 0,
        "level": 0,
        "mpp": 0.5,
        "patch_size": 32,
        "cohort": "TCGA",
        "tissue_type": "lung",
        "tissue_fraction": 1.0,
        "sharpness": 50.0,
        "phash": f"{number:016x}",
    }


@pytest.fixture
def store(tmp_path):
    shards = []
    for number in range(2):
        name = f"data/train-{number:05d}-of-00002.parquet"
        write_table(tmp_path / name, rows_to_table([row(3 * number + i) for i in range(3)]))
        shards.append(Shard(name, 3))
    write_index(tmp_path, shards)
    return tmp_path


def test_store_round_trip(store):
    patches = PatchStore(store)
    assert len(patches) == 6 and [s.rows for s in patches.shards] == [3, 3]
    assert patches.images(1)[0] == row(3)["image"]
    table = read_table(store / patches.shards[0].file)
    assert table.column_names == list(COLUMNS)
    assert table.column("x").to_pylist() == [0, 32, 64]


def test_datasets_reads_the_shards_with_images(store):
    datasets = pytest.importorskip("datasets")
    loaded = datasets.load_dataset(
        "parquet",
        data_files=str(store / "data" / "*.parquet"),
        split="train",
        cache_dir=str(store / "cache"),
    )
    assert len(loaded) == 6 and loaded.features["image"].__class__.__name__ == "Image"
    image = loaded[4]["image"]
    assert image.size == (32, 32) and loaded[4]["x"] == 4 * 32


def test_damaged_and_newer_stores_are_refused(store, tmp_path):
    (store / "data" / "train-00001-of-00002.parquet").write_bytes(b"not parquet")
    with pytest.raises(StoreError, match="train-00001"):
        PatchStore(store).images(1)
    index = json.loads((store / "store.json").read_text())
    (store / "store.json").write_text(json.dumps({**index, "format_version": 99}))
    with pytest.raises(StoreError, match="upgrade"):
        PatchStore(store)
    with pytest.raises(StoreError, match="Hub dataset id"):
        PatchStore(tmp_path / "nowhere" / "deep" / "store")


def test_images_decode(store):
    from PIL import Image

    image = Image.open(io.BytesIO(PatchStore(store).images(0)[2]))
    assert image.size == (32, 32) and image.mode == "RGB"
