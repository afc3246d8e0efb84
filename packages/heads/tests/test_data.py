import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from gpfm.heads import FeatureBagDataset, FeatureFileError, InvalidInputError, read_bag
from gpfm.heads.data import balanced_sampler, collate_bags, feature_paths


def test_bags_from_files_equal_bags_from_memory(feature_folder):
    paths, labels = feature_folder
    on_disk = FeatureBagDataset(paths, {"label": labels})
    in_memory = FeatureBagDataset([read_bag(p) for p in paths], {"label": labels})
    assert len(on_disk) == 12 and on_disk.embed_dim == 16
    for index in range(len(paths)):
        a, b = on_disk[index], in_memory[index]
        assert torch.equal(a["features"], b["features"])
        assert int(a["label"]) == labels[index] and int(a["index"]) == index
    assert on_disk.names[3].endswith("slide-3.h5")


def test_dataset_holds_paths_not_features_so_workers_can_pickle_it(feature_folder):
    paths, labels = feature_folder
    dataset = FeatureBagDataset(paths, {"label": labels})
    assert len(pickle.dumps(dataset)) < 4096
    loader = DataLoader(dataset, batch_size=4, collate_fn=collate_bags, num_workers=2)
    seen = torch.cat([batch["index"] for batch in loader])
    assert sorted(seen.tolist()) == list(range(12))


def test_collate_pads_bags_and_marks_real_tiles_in_the_mask():
    items = [
        {"features": torch.ones(3, 2), "label": torch.tensor(1), "index": torch.tensor(0)},
        {"features": 2 * torch.ones(5, 2), "label": torch.tensor(0), "index": torch.tensor(1)},
    ]
    batch = collate_bags(items)
    assert batch["features"].shape == (2, 5, 2)
    assert batch["mask"].tolist() == [[True] * 3 + [False] * 2, [True] * 5]
    assert torch.all(batch["features"][0, 3:] == 0) and torch.all(batch["features"][1] == 2)
    assert batch["label"].tolist() == [1, 0]


def test_max_instances_returns_a_random_ordered_subset_of_the_tiles():
    bag = np.arange(100, dtype=np.float32).reshape(50, 2)
    dataset = FeatureBagDataset([bag], max_instances=10)
    torch.manual_seed(0)
    first, second = dataset[0]["features"], dataset[0]["features"]
    assert first.shape == (10, 2)
    rows = (first[:, 0] / 2).long()
    assert torch.all(rows[1:] > rows[:-1])  # stored order kept
    assert torch.equal(first, torch.from_numpy(bag)[rows])
    assert not torch.equal(first, second)  # a fresh subset on each access
    assert dataset.bag(0).shape == (50, 2)


def test_balanced_sampler_draws_rare_and_common_classes_equally_often():
    labels = np.array([0] * 90 + [1] * 10)
    sampler = balanced_sampler(
        labels, num_samples=20000, generator=torch.Generator().manual_seed(0)
    )
    drawn = labels[list(sampler)]
    assert abs(drawn.mean() - 0.5) < 0.02


def test_subset_keeps_targets_and_names(feature_folder):
    paths, labels = feature_folder
    fold = FeatureBagDataset(paths, {"label": labels}).subset([5, 2])
    assert len(fold) == 2
    assert fold.targets("label").tolist() == [labels[5], labels[2]]
    assert fold.names[0].endswith("slide-5.h5")


def test_bad_bags_and_targets_get_clear_errors(tmp_path, feature_folder):
    paths, labels = feature_folder
    with pytest.raises(
        InvalidInputError, match=r"target `label` has shape \(3,\); expected \(12,\)"
    ):
        FeatureBagDataset(paths, {"label": labels[:3]})
    mixed = FeatureBagDataset([np.zeros((4, 16)), np.zeros((4, 8))], names=["a", "b"])
    with pytest.raises(FeatureFileError, match=r"b: features of shape \(4, 8\); expected"):
        mixed[1]
    with pytest.raises(InvalidInputError, match="no target `time`"):
        FeatureBagDataset(paths, {"label": labels}).targets("time")
    with pytest.raises(FeatureFileError, match="2 of 3 feature files missing"):
        feature_paths(paths[0].parent, ["slide-0", "gone-1", "gone-2"])
    assert feature_paths(paths[0].parent, ["slide-1"]) == [paths[1]]
