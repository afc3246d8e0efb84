"""data.source=hf: a gpfm-curate patch store, read shard by shard, resumed exactly."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow")

from gpfm.apps.train.config import load_config
from gpfm.apps.train.data import ShardEpochSampler, StoreImages, image_dataset
from gpfm.apps.train.trainer import train
from gpfm.slide.curation import encode_jpeg
from gpfm.slide.store import Shard, rows_to_table, write_index, write_table


def make_store(folder: Path, shard_rows: list[int], size: int = 96) -> Path:
    rng = np.random.default_rng(0)
    shards, number = [], 0
    for k, rows in enumerate(shard_rows):
        batch = []
        for _ in range(rows):
            ramp = np.linspace(0, 1, size)[:, None] * rng.integers(0, 120, 3)
            rgb = np.broadcast_to(ramp[:, None, :] + rng.integers(0, 120, 3), (size, size, 3))
            rgb = rgb.astype(np.uint8).copy()
            rgb[..., 0] = 8 * number  # the row number, readable back
            row = {"image": encode_jpeg(rgb, 100), "slide_id": f"s{k}", "x": number, "y": 0}
            row |= {"level": 0, "mpp": 0.5, "patch_size": size, "cohort": "c"}
            row |= {"tissue_type": "t", "tissue_fraction": 1.0, "sharpness": 100.0, "phash": "0"}
            batch.append(row)
            number += 1
        name = f"data/train-{k:05d}-of-{len(shard_rows):05d}.parquet"
        write_table(folder / name, rows_to_table(batch))
        shards.append(Shard(name, rows))
    write_index(folder, shards)
    return folder


def tiny(tmp_path, store, *overrides):
    return load_config(
        "tiny_cpu",
        [f"output_dir={tmp_path}", "data.source=hf", f"data.path={store}", *overrides],
    )


def test_each_process_reads_its_own_shards_in_windows():
    rows = [10, 7, 12, 9, 11]
    offsets = np.concatenate([[0], np.cumsum(rows)])
    shard_of = np.repeat(np.arange(len(rows)), rows)
    seen = []
    for rank in range(2):
        sampler = ShardEpochSampler(rows, seed=1, rank=rank, world_size=2, window=2)
        indices = list(sampler)
        assert len(indices) == len(sampler) == min(10 + 12 + 11, 7 + 9)
        assert {int(shard_of[i]) % 2 for i in indices} == {rank}  # its own shards only
        assert len(set(indices)) == len(indices)
        # read in windows of two shards: at most two shards among any run of rows of a window
        assert len({int(shard_of[i]) for i in indices[:10]}) <= 2
        sampler.set_epoch(1)
        assert list(sampler) != indices
        sampler.set_epoch(0, skip=5)
        assert list(sampler) == indices[5:]
        seen += indices
    assert max(seen) < offsets[-1]
    with pytest.raises(ValueError, match="shards for 8 processes"):
        ShardEpochSampler(rows, seed=0, world_size=8)


def test_store_images_decode_and_come_from_the_hub_lazily(tmp_path, monkeypatch):
    store = make_store(tmp_path / "store", [4, 4, 4])
    images = image_dataset(tiny(tmp_path, store))
    assert isinstance(images, StoreImages) and len(images) == 12
    assert abs(float(images[9][..., 0].mean()) - 72) < 3  # row 9; JPEG nearly exact
    fetched = []

    def hf_hub_download(repo_id, filename, repo_type, revision=None):
        assert (repo_id, repo_type, revision) == ("lab/corpus", "dataset", "v1")
        fetched.append(filename)
        return str(store / filename)

    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
    remote = image_dataset(tiny(tmp_path, "lab/corpus", "data.hf_revision=v1"))
    assert len(remote) == 12 and fetched == ["store.json"]
    remote[5]
    assert fetched == ["store.json", "data/train-00001-of-00003.parquet"]


@pytest.mark.slow
def test_training_from_a_store_resumes_with_the_same_losses(tmp_path):
    store = make_store(tmp_path / "store", [8, 8])  # 2 batches an epoch
    overrides = ["max_steps=3", "checkpoint_every=2", "data.hf_shards_in_memory=1"]
    straight = train(tiny(tmp_path / "a", store, *overrides))["history"]
    first = train(tiny(tmp_path / "b", store, *overrides), stop_after=2)
    assert first["step"] == 2
    resumed = train(tiny(tmp_path / "b", store, *overrides))["history"]
    assert [h["step"] for h in resumed] == [3]  # in the second epoch
    for expected, got in zip(straight[2:], resumed, strict=True):
        for key in ("loss/total", "loss/dino", "loss/ibot", "loss/expert_a_cls"):
            assert got[key] == expected[key], (got["step"], key)
