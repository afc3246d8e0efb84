from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gpfm.heads import FeatureBagDataset, write_features


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run the tiny test models on one thread, restoring the setting afterwards.

    For matrices this small, waking a second OpenMP thread costs more than it saves (a tiny
    ABMIL step is about 20x slower with two threads than with one on a 2-core machine).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_bags(
    n_bags: int, *, dim: int = 16, seed: int = 0, sizes: tuple[int, int] = (20, 60)
) -> tuple[list[np.ndarray], np.ndarray]:
    """Bags of Gaussian tile features; in positive bags 1-4 tiles carry a signal.

    The signal is a shift of +3 along the first two feature dimensions, so only the witness
    tiles tell the classes apart and the mean of a bag barely moves.
    """
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(n_bags) % 2)
    bags = []
    for label in labels:
        bag = rng.normal(size=(int(rng.integers(*sizes)), dim)).astype(np.float32)
        if label:
            witnesses = rng.choice(len(bag), int(rng.integers(1, 5)), replace=False)
            bag[witnesses, :2] += 3.0
        bags.append(bag)
    return bags, labels


def make_survival_bags(
    n_bags: int, *, dim: int = 8, seed: int = 0
) -> tuple[list[np.ndarray], np.ndarray, np.ndarray, np.ndarray]:
    """Bags whose mean first feature sets the log-hazard; exponential times, random censoring.

    Returns bags, time (months), event (0/1) and the true log-hazard of each bag. Ranking
    patients by the true log-hazard gives a c-index near 0.78 (censoring about 40 %).
    """
    rng = np.random.default_rng(seed)
    z = rng.normal(size=n_bags)
    log_hazard = 1.5 * z
    bags = []
    for value in z:
        bag = rng.normal(size=(int(rng.integers(10, 30)), dim)).astype(np.float32)
        bag[:, 0] += 2.0 * value
        bags.append(bag)
    event_time = rng.exponential(12.0 / np.exp(log_hazard))
    censor_time = rng.exponential(30.0, n_bags)
    time = np.minimum(event_time, censor_time)
    event = (event_time <= censor_time).astype(np.int64)
    return bags, time, event, log_hazard


@pytest.fixture
def classification_splits() -> tuple[FeatureBagDataset, FeatureBagDataset, FeatureBagDataset]:
    """Train (80), validation (30) and test (50) bags of the witness-tile task, D = 16."""
    splits = []
    for n, seed in ((80, 1), (30, 2), (50, 3)):
        bags, labels = make_bags(n, seed=seed)
        splits.append(FeatureBagDataset(bags, {"label": labels}))
    return splits[0], splits[1], splits[2]


@pytest.fixture
def survival_splits() -> tuple[FeatureBagDataset, FeatureBagDataset, FeatureBagDataset]:
    """Train (100), validation (40) and test (80) survival bags, D = 8, with their log-hazards
    in the target column ``log_hazard``."""
    splits = []
    for n, seed in ((100, 1), (40, 2), (80, 3)):
        bags, time, event, log_hazard = make_survival_bags(n, seed=seed)
        splits.append(
            FeatureBagDataset(bags, {"time": time, "event": event, "log_hazard": log_hazard})
        )
    return splits[0], splits[1], splits[2]


@pytest.fixture
def feature_folder(tmp_path: Path) -> tuple[list[Path], np.ndarray]:
    """Twelve feature files (D = 16) of the witness-tile task, with their labels."""
    bags, labels = make_bags(12, seed=5)
    paths = []
    for index, bag in enumerate(bags):
        coords = np.stack([np.arange(len(bag)) * 224, np.zeros(len(bag))], axis=1)
        paths.append(
            write_features(
                tmp_path / "features" / f"slide-{index}.h5",
                bag,
                coords,
                encoder="toy",
                mpp=0.5,
                patch_size=224,
            )
        )
    return paths, labels


@pytest.fixture
def bag_maker():
    """``make_bags(n_bags, dim=16, seed=0, sizes=(20, 60)) -> (bags, labels)``."""
    return make_bags


@pytest.fixture
def survival_maker():
    """``make_survival_bags(n_bags, dim=8, seed=0) -> (bags, time, event, log_hazard)``."""
    return make_survival_bags
