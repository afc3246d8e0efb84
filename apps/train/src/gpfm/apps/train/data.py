"""Pretraining data: synthetic patches, image folders, or N tiles sampled from each slide.

Augmentation is seeded per (seed, epoch, sample), and masks per (seed, step), so a run gives
the same batches whatever the number of DataLoader workers, and a resumed run gives the batches
the uninterrupted one would have.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

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
    raise ValueError(f"data.source must be synthetic, folder or slides, got {data.source!r}")
