"""Pretraining data: synthetic patches, image folders, N tiles sampled from each slide, or a
gpfm-curate patch store (a folder or a Hugging Face Hub dataset, read shard by shard).

Augmentation is seeded per (seed, epoch, sample), and masks per (seed, step), so a run gives
the same batches whatever the number of DataLoader workers, and a resumed run gives the batches
the uninterrupted one would have.
"""

from __future__ import annotations

import logging
import random
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import simplejpeg
import torch
from torch.utils.data import Dataset, Sampler

from gpfm.apps.train.config import TrainConfig
from gpfm.distill import (
    BlockMaskingGenerator,
    ImageFileDataset,
    MultiCropAugmentation,
    SyntheticPatchDataset,
    collate_multicrop,
)
from gpfm.slide import MultiSlidePatchDataset

logger = logging.getLogger(__name__)


class SeededAugmentation(Dataset[Any]):
    """Wraps a dataset of images; item ``i`` of epoch ``e`` is augmented with its own seed."""

    def __init__(self, images: Dataset[Any], augment: Callable[[Any], Any], seed: int) -> None:
        self.images = images
        self.augment = augment
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.images)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> Any:
        image = self.images[index]
        if isinstance(image, torch.Tensor):
            image = (
                image.numpy().transpose(1, 2, 0)
                if image.ndim == 3 and image.shape[0] == 3
                else image
            )
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hash((self.seed, self.epoch, index)) % 2**63)
            crops = self.augment(image)
        return {**crops, "index": index, "epoch": self.epoch}


class EpochSampler(Sampler[int]):
    """A fixed permutation per epoch (seeded), split across processes.

    ``set_epoch(epoch, skip)`` selects the epoch and drops its first ``skip`` indices of this
    process (a run resumed mid-epoch).
    """

    def __init__(self, length: int, seed: int, rank: int = 0, world_size: int = 1) -> None:
        self.length = length
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch = epoch
        self.skip = skip

    def _indices(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.length, generator=generator).tolist()
        per_rank = self.length // self.world_size
        return order[self.rank * per_rank : (self.rank + 1) * per_rank][self.skip :]

    def __iter__(self) -> Iterator[int]:
        return iter(self._indices())

    def __len__(self) -> int:
        return max(0, self.length // self.world_size - self.skip)


class StoreImages(Dataset[np.ndarray]):
    """The patches of a gpfm-curate store as (H, W, 3) uint8 RGB, read a whole shard at a time.

    Item ``i`` is row ``i`` counting through the shards in order; the JPEG bytes of the
    ``cached_shards`` most recently used shards are kept (per DataLoader worker), so reading in
    ``ShardEpochSampler``'s order fetches and reads each shard once per epoch.
    """

    def __init__(self, location: str, revision: str | None = None, cached_shards: int = 4) -> None:
        from gpfm.slide.store import PatchStore

        self.store = PatchStore(location, revision=revision)
        self.shard_rows = [s.rows for s in self.store.shards]
        self.offsets = np.concatenate([[0], np.cumsum(self.shard_rows)]).astype(np.int64)
        self.cached_shards = max(1, cached_shards)
        self._cache: OrderedDict[int, list[bytes]] = OrderedDict()

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _shard(self, shard: int) -> list[bytes]:
        images = self._cache.get(shard)
        if images is None:
            images = self._cache[shard] = self.store.images(shard)
            while len(self._cache) > self.cached_shards:
                self._cache.popitem(last=False)
        self._cache.move_to_end(shard)
        return images

    def __getitem__(self, index: int) -> np.ndarray:
        shard = int(np.searchsorted(self.offsets, index, side="right")) - 1
        jpeg = self._shard(shard)[index - int(self.offsets[shard])]
        return simplejpeg.decode_jpeg(jpeg, colorspace="RGB")


class ShardEpochSampler(EpochSampler):
    """``EpochSampler`` for a store: each process reads its own shards, streamed, shuffled.

    Shard ``k`` belongs to process ``k % world_size``. Each epoch (seeded) shuffles the order of
    a process's shards, takes them ``window`` at a time and shuffles the rows within each window,
    so a batch mixes the slides of ``window`` shards while only those are in memory. Every
    process yields as many indices as the process with the fewest rows has, so all take the
    same number of steps; ``set_epoch(epoch, skip)`` resumes exactly as ``EpochSampler`` does.
    """

    def __init__(
        self,
        shard_rows: Sequence[int],
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        window: int = 4,
    ) -> None:
        if len(shard_rows) < world_size:
            raise ValueError(
                f"the store has {len(shard_rows)} shards for {world_size} processes; every "
                "process needs a shard of its own (curate with a smaller --rows-per-shard)"
            )
        offsets = np.concatenate([[0], np.cumsum(shard_rows)]).astype(np.int64)
        # (first row, rows) of each shard of this process
        self.shards = [
            (int(offsets[k]), int(shard_rows[k])) for k in range(rank, len(shard_rows), world_size)
        ]
        per_rank = min(sum(int(r) for r in shard_rows[k::world_size]) for k in range(world_size))
        super().__init__(per_rank * world_size, seed, rank, world_size)
        self.window = max(1, window)

    def _indices(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.shards), generator=generator).tolist()
        indices: list[int] = []
        for start in range(0, len(order), self.window):
            window = [self.shards[k] for k in order[start : start + self.window]]
            rows = torch.cat([torch.arange(first, first + count) for first, count in window])
            indices += rows[torch.randperm(len(rows), generator=generator)].tolist()
        return indices[: self.length // self.world_size][self.skip :]


def epoch_sampler(
    images: Dataset[Any], config: TrainConfig, rank: int, world_size: int
) -> EpochSampler:
    """The sampler for ``images``: shard by shard for a store, else a permutation per epoch."""
    if isinstance(images, StoreImages):
        return ShardEpochSampler(
            images.shard_rows, config.seed, rank, world_size, config.data.hf_shards_in_memory
        )
    return EpochSampler(len(images), config.seed, rank, world_size)  # type: ignore[arg-type]


class MultiCropCollate:
    """Collate with iBOT masks drawn from a generator seeded by the batch's own samples."""

    def __init__(self, config: TrainConfig, patch_size: int) -> None:
        grid = config.augment.global_size // patch_size
        self.generator = BlockMaskingGenerator((grid, grid))
        low, high = config.loss.mask_ratio
        self.mask_ratio = (float(low), float(high))
        self.mask_probability = config.loss.mask_probability
        self.seed = config.seed

    def __call__(self, samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        key = (self.seed, samples[0]["epoch"], tuple(s["index"] for s in samples))
        rng = random.Random(hash(key))
        return collate_multicrop(
            samples,
            self.generator,
            mask_ratio=self.mask_ratio,
            mask_probability=self.mask_probability,
            rng=rng,
        )


def multicrop_augmentation(config: TrainConfig) -> MultiCropAugmentation:
    return MultiCropAugmentation(config.augment)


def image_dataset(config: TrainConfig) -> Dataset[Any]:
    """The un-augmented images the configuration names."""
    data = config.data
    if data.source == "synthetic":
        return SyntheticPatchDataset(data.synthetic_length, data.synthetic_size, seed=config.seed)
    if data.source == "folder":
        if not data.path:
            raise ValueError("data.source=folder needs data.path (a folder or a list file)")
        return ImageFileDataset(data.path)
    if data.source == "slides":
        if not data.path:
            raise ValueError("data.source=slides needs data.path, the folder of coordinates files")
        return MultiSlidePatchDataset(
            data.path, data.patches_per_slide, seed=config.seed, slides_dir=data.slides_dir
        )
    if data.source == "hf":
        if not data.path:
            raise ValueError(
                "data.source=hf needs data.path: a gpfm-curate store folder or a Hub dataset id"
            )
        return StoreImages(data.path, data.hf_revision, data.hf_shards_in_memory)
    raise ValueError(f"data.source must be synthetic, folder, slides or hf, got {data.source!r}")
