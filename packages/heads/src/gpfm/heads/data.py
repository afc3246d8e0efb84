"""Bags of tile features for MIL: a torch Dataset over feature files or arrays, padding collation
and class-balanced sampling.

A bag is one slide (or one patient): an (N, D) matrix with one row per tile, N varying from bag
to bag. Files are opened on each access, so the dataset is safe in DataLoader worker processes
and holds no more than one bag in memory per worker.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, WeightedRandomSampler

from gpfm.heads.errors import FeatureFileError, InvalidInputError
from gpfm.heads.features import bag_shape, read_bag

Bag = str | os.PathLike[str] | np.ndarray | torch.Tensor


class FeatureBagDataset(Dataset[dict[str, torch.Tensor]]):
    """Feature bags with per-bag targets, read lazily from HDF5 feature files or held in memory.

    Item ``i`` is a dict: ``features`` (N_i, D) float32, ``index`` () int64 (= i), and one 0-d
    tensor per target column (e.g. ``label`` int64; ``time`` float32 and ``event`` bool for
    survival).

    Args:
        bags: one entry per bag: a feature file path (read on access) or an (N, D) array/tensor.
        targets: columns of per-bag values, each of length ``len(bags)``: ``label`` (class index)
            for classification, ``time`` (any unit) and ``event`` (1 = event observed,
            0 = censored) for survival.
        max_instances: when set, each access returns a random subset of at most this many tiles
            (kept in their stored order); meant for training on very large bags.
        names: a name per bag (e.g. slide ids) for messages and results.
    """

    def __init__(
        self,
        bags: Sequence[Bag],
        targets: Mapping[str, Sequence[float] | np.ndarray] | None = None,
        *,
        max_instances: int | None = None,
        names: Sequence[str] | None = None,
    ) -> None:
        self.bags = list(bags)
        if not self.bags:
            raise InvalidInputError("FeatureBagDataset needs at least one bag")
        self._targets: dict[str, np.ndarray] = {}
        for column, values in (targets or {}).items():
            array = np.asarray(values)
            if array.shape != (len(self.bags),):
                raise InvalidInputError(
                    f"target `{column}` has shape {array.shape}; expected ({len(self.bags)},), "
                    "one value per bag"
                )
            self._targets[column] = array
        if max_instances is not None and max_instances < 1:
            raise InvalidInputError(f"max_instances must be >= 1, got {max_instances}")
        self.max_instances = max_instances
        self.names = (
            [str(n) for n in names]
            if names is not None
            else [_name(b, i) for i, b in enumerate(self.bags)]
        )
        if len(self.names) != len(self.bags):
            raise InvalidInputError(f"{len(self.names)} names for {len(self.bags)} bags")
        self._embed_dim: int | None = None

    def __len__(self) -> int:
        return len(self.bags)

    @property
    def target_names(self) -> list[str]:
        """Names of the target columns."""
        return list(self._targets)

    def targets(self, column: str) -> np.ndarray:
        """All values of one target column, shape (len(self),)."""
        if column not in self._targets:
            raise InvalidInputError(
                f"this dataset has no target `{column}` (it has {self.target_names}); pass it in "
                "targets={...}"
            )
        return self._targets[column]

    @property
    def embed_dim(self) -> int:
        """D, the feature dimension (read from the first bag's header)."""
        if self._embed_dim is None:
            first = self.bags[0]
            if isinstance(first, np.ndarray | torch.Tensor):
                self._embed_dim = int(first.shape[-1])
            else:
                self._embed_dim = bag_shape(first)[1]
        return self._embed_dim

    def bag(self, index: int) -> torch.Tensor:
        """The (N, D) float32 features of bag ``index`` (all tiles, no subsampling)."""
        source = self.bags[index]
        if isinstance(source, torch.Tensor):
            features = source.to(torch.float32)
        elif isinstance(source, np.ndarray):
            features = torch.from_numpy(np.asarray(source, dtype=np.float32))
        else:
            features = torch.from_numpy(read_bag(source))
        if features.ndim != 2 or features.shape[0] == 0 or features.shape[1] != self.embed_dim:
            raise FeatureFileError(
                f"{self.names[index]}: features of shape {tuple(features.shape)}; expected "
                f"(N >= 1, {self.embed_dim}) like the dataset's first bag — are all bags from "
                "one encoder?"
            )
        return features

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        features = self.bag(index)
        if self.max_instances is not None and features.shape[0] > self.max_instances:
            # torch's RNG: seeded by the DataLoader per worker, so runs repeat with a seed.
            keep = torch.randperm(features.shape[0])[: self.max_instances].sort().values
            features = features[keep]
        item = {"features": features, "index": torch.tensor(index, dtype=torch.int64)}
        for column, values in self._targets.items():
            item[column] = torch.as_tensor(values[index])
        return item

    def subset(self, indices: Sequence[int] | np.ndarray) -> FeatureBagDataset:
        """A dataset of the bags at ``indices`` (with their targets and names), e.g. a fold."""
        indices = np.asarray(indices, dtype=np.int64)
        return FeatureBagDataset(
            [self.bags[i] for i in indices],
            {column: values[indices] for column, values in self._targets.items()},
            max_instances=self.max_instances,
            names=[self.names[i] for i in indices],
        )


def _name(bag: Bag, index: int) -> str:
    if isinstance(bag, np.ndarray | torch.Tensor):
        return f"bag {index}"
    return str(bag)


def collate_bags(items: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack bags of different sizes: zero-pad ``features`` and add a padding ``mask``.

    Returns:
        ``features`` (B, N_max, D) float32, ``mask`` (B, N_max) bool (True = a real tile), and
        every other key stacked to (B, ...).
    """
    if not items:
        raise InvalidInputError("collate_bags got an empty batch")
    sizes = [int(item["features"].shape[0]) for item in items]
    dim = int(items[0]["features"].shape[1])
    if len(items) == 1:  # nothing to pad: a view, not a copy of a bag that may be large
        features = items[0]["features"].to(torch.float32).unsqueeze(0)
        mask = torch.ones(1, sizes[0], dtype=torch.bool)
    else:
        features = torch.zeros(len(items), max(sizes), dim, dtype=torch.float32)
        mask = torch.zeros(len(items), max(sizes), dtype=torch.bool)
        for row, (item, size) in enumerate(zip(items, sizes, strict=True)):
            features[row, :size] = item["features"]
            mask[row, :size] = True
    batch = {"features": features, "mask": mask}
    for key in items[0]:
        if key != "features":
            batch[key] = torch.stack([torch.as_tensor(item[key]) for item in items])
    return batch


def balanced_sampler(
    labels: Sequence[int] | np.ndarray,
    *,
    num_samples: int | None = None,
    generator: torch.Generator | None = None,
) -> WeightedRandomSampler:
    """A sampler that draws every class equally often (with replacement).

    Each bag is drawn with probability proportional to 1 / (bags of its class); the weights
    are N / (bags of its class), CLAM's and GPFM's, so that the draws equal theirs.

    Args:
        labels: (N,) class index of each bag.
        num_samples: draws per epoch (default N).
        generator: torch generator, for repeatable epochs.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) == 0:
        raise InvalidInputError(f"labels must be a non-empty 1-D array, got shape {labels.shape}")
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    weights = float(len(labels)) / counts[inverse]
    return WeightedRandomSampler(
        weights.tolist(),
        num_samples=num_samples or len(labels),
        replacement=True,
        generator=generator,
    )


def feature_paths(folder: str | Path, slide_ids: Sequence[str]) -> list[Path]:
    """The feature files ``<folder>/<slide_id>.h5`` of ``slide_ids``, checking that all exist.

    Raises:
        FeatureFileError: naming the missing slides (the first 5) and how many are missing.
    """
    folder = Path(folder)
    paths = [folder / f"{slide_id}.h5" for slide_id in slide_ids]
    missing = [p.name for p in paths if not p.exists()]
    if missing:
        raise FeatureFileError(
            f"{folder}: {len(missing)} of {len(paths)} feature files missing ({missing[:5]}...); "
            "extract them first or drop these slides from the split"
        )
    return paths


__all__ = [
    "Bag",
    "FeatureBagDataset",
    "balanced_sampler",
    "collate_bags",
    "feature_paths",
]
