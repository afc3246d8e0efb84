import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from gpfm.heads import (
    ABMIL,
    FeatureBagDataset,
    InvalidInputError,
    TrainConfig,
    make_mil,
    predict,
    read_bag,
    train_mil,
)
from gpfm.heads.mil import MIL_MODELS, TransMIL
from gpfm.heads.training import resolve_mixed_precision

FAST = {"lr": 1e-3, "progress": False}


def _abmil(in_dim=16, n_classes=2, seed=0):
    torch.manual_seed(seed)
    return ABMIL(in_dim, n_classes, hidden_dim=32, attention_dim=16)


@pytest.mark.slow
@pytest.mark.parametrize(
    "model",
    [
        lambda: _abmil(),
        lambda: (torch.manual_seed(0), TransMIL(16, 2, hidden_dim=32, n_heads=4))[1],
    ],
    ids=["ABMIL", "TransMIL"],
)
def test_attention_mil_finds_the_few_tiles_that_carry_the_label(model, classification_splits):
    train, val, test = classification_splits
    result = train_mil(model(), train, val, test, TrainConfig(epochs=10, patience=4, **FAST))
    assert result.test_metrics["auc"] > 0.95
    assert result.test.probabilities.shape == (50, 2)
    assert result.test.index.tolist() == list(range(50))
    assert result.test.targets["label"].tolist() == test.targets("label").tolist()


@pytest.mark.parametrize("name", sorted(set(MIL_MODELS) - {"abmil", "transmil"}))
def test_every_other_aggregator_trains_end_to_end(name, bag_maker):
    bags, labels = bag_maker(24, seed=4)
    train = FeatureBagDataset(bags[:16], {"label": labels[:16]})
    val = FeatureBagDataset(bags[16:], {"label": labels[16:]})
    torch.manual_seed(0)
    model = make_mil(name, 16, 2, hidden_dim=16)
    result = train_mil(model, train, val, val, TrainConfig(epochs=2, patience=2, **FAST))
    assert len(result.history) == 2 and np.isfinite(result.history[-1]["train_loss"])
    assert set(result.test_metrics) == {"accuracy", "balanced_accuracy", "macro_f1", "auc"}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("loss", "n_outputs", "batch_size"), [("nll", 4, 1), ("cox", 1, 8)], ids=["nll", "cox"]
)
def test_survival_heads_rank_patients_by_the_hazard_their_features_set(
    loss, n_outputs, batch_size, survival_splits
):
    train, val, test = survival_splits
    config = TrainConfig(
        task="survival", survival_loss=loss, batch_size=batch_size, epochs=10, **FAST
    )
    result = train_mil(_abmil(8, n_outputs), train, val, test, config)
    assert result.test_metrics["c_index"] > 0.7
    risk, truth = result.test.risk, result.test.targets["log_hazard"]
    assert np.corrcoef(np.argsort(np.argsort(risk)), np.argsort(np.argsort(truth)))[0, 1] > 0.7
    if loss == "nll":
        assert result.time_bins.shape == (3,)
        events = train.targets("time")[train.targets("event") == 1]
        assert np.allclose(result.time_bins, np.quantile(events, [0.25, 0.5, 0.75]))


class _SpyDataset(FeatureBagDataset):
    """Records every read of its bags or targets in a shared log."""

    def __init__(self, dataset, log):
        super().__init__(dataset.bags, {c: dataset.targets(c) for c in dataset.target_names})
        self.log = log

    def __getitem__(self, index):
        self.log.append(("test read", index))
        return super().__getitem__(index)

    def targets(self, column):
        if hasattr(self, "log"):
            self.log.append(("test targets", column))
        return super().targets(column)


def test_test_labels_are_not_read_before_the_final_evaluation(classification_splits):
    train, val, test = classification_splits
    log = []
    spy = _SpyDataset(test, log)
    result = train_mil(
        _abmil(),
        train,
        val,
        spy,
        TrainConfig(epochs=3, patience=3, **FAST),
        on_epoch=lambda row: log.append(("epoch done", row["epoch"])),
    )
    epochs_done = [i for i, event in enumerate(log) if event[0] == "epoch done"]
    test_reads = [i for i, event in enumerate(log) if event[0].startswith("test")]
    assert len(epochs_done) == 3 and test_reads
    assert min(test_reads) > max(epochs_done)
    assert sorted(i for kind, i in log if kind == "test read") == list(range(len(test)))
    assert result.test_metrics is not None


def test_scrambled_test_labels_change_nothing_but_the_test_metrics(classification_splits):
    train, val, test = classification_splits
    scrambled = FeatureBagDataset(
        test.bags, {"label": np.random.default_rng(0).permutation(test.targets("label"))}
    )
    config = TrainConfig(epochs=4, patience=4, **FAST)
    honest = train_mil(_abmil(), train, val, test, config)
    other = train_mil(_abmil(), train, val, scrambled, config)
    assert honest.history == [
        {**row, "seconds": honest.history[i]["seconds"]} for i, row in enumerate(other.history)
    ]
    assert honest.best_epoch == other.best_epoch
    assert np.array_equal(honest.test.logits, other.test.logits)
    assert honest.test_metrics != other.test_metrics


def test_early_stopping_keeps_the_best_validation_epoch(classification_splits):
    train, val, _ = classification_splits
    stuck = train_mil(
        _abmil(), train, val, config=TrainConfig(epochs=20, patience=2, **{**FAST, "lr": 0.0})
    )
    assert stuck.stopped_early and len(stuck.history) == 3 and stuck.best_epoch == 1
    result = train_mil(
        _abmil(), train, val, config=TrainConfig(epochs=12, patience=3, lr=5e-2, progress=False)
    )
    losses = [row["val_loss"] for row in result.history]
    assert result.best_epoch == int(np.argmin(losses)) + 1
    again = predict(result.model, val)
    loss = torch.nn.functional.cross_entropy(
        torch.from_numpy(again.logits), torch.from_numpy(val.targets("label"))
    )
    assert float(loss) == pytest.approx(losses[result.best_epoch - 1], rel=1e-5)


def test_a_seed_repeats_a_run_exactly(classification_splits):
    train, val, test = classification_splits
    config = TrainConfig(epochs=2, patience=2, **FAST)
    first = train_mil(_abmil(), train, val, test, config)
    second = train_mil(_abmil(), train, val, test, config)
    assert [r["train_loss"] for r in first.history] == [r["train_loss"] for r in second.history]
    assert np.array_equal(first.test.logits, second.test.logits)
    third = train_mil(_abmil(), train, val, test, TrainConfig(epochs=2, seed=1, **FAST))
    assert first.history[0]["train_loss"] != third.history[0]["train_loss"]


def test_training_from_feature_files_equals_training_from_memory(feature_folder):
    paths, labels = feature_folder
    on_disk = FeatureBagDataset(paths, {"label": labels})
    in_memory = FeatureBagDataset([read_bag(p) for p in paths], {"label": labels})
    config = TrainConfig(epochs=2, patience=2, batch_size=3, **FAST)
    from_files = train_mil(
        _abmil(),
        on_disk.subset(range(8)),
        on_disk.subset(range(8, 12)),
        on_disk.subset(range(8, 12)),
        config,
    )
    from_memory = train_mil(
        _abmil(),
        in_memory.subset(range(8)),
        in_memory.subset(range(8, 12)),
        in_memory.subset(range(8, 12)),
        config,
    )
    assert np.allclose(from_files.test.logits, from_memory.test.logits)
    assert from_files.test.names[0].endswith("slide-8.h5")


def test_bags_can_be_subsampled_during_training(classification_splits):
    train, val, _ = classification_splits
    small = FeatureBagDataset(train.bags, {"label": train.targets("label")}, max_instances=8)
    result = train_mil(_abmil(), small, val, config=TrainConfig(epochs=1, **FAST))
    assert np.isfinite(result.history[0]["train_loss"])


def test_summary_is_json_ready(survival_splits):
    train, val, test = survival_splits
    config = TrainConfig(task="survival", epochs=1, **FAST)
    summary = train_mil(_abmil(8, 4), train, val, test, config).summary()
    again = json.loads(json.dumps(summary))
    assert again["config"]["task"] == "survival" and len(again["time_bins"]) == 3
    assert set(again["history"][0]) == {"epoch", "train_loss", "val_loss", "val_metric", "seconds"}
    assert "c_index" in again["test_metrics"]


def test_mistakes_are_reported_before_training(classification_splits, survival_splits):
    train, val, test = classification_splits
    with pytest.raises(
        InvalidInputError, match=r"training split has no target \['time', 'event'\]"
    ):
        train_mil(_abmil(), train, val, config=TrainConfig(task="survival", progress=False))
    with pytest.raises(InvalidInputError, match=r"features have D=16 .* model expects in_dim=32"):
        train_mil(_abmil(in_dim=32), train, val)
    unlabelled = FeatureBagDataset(test.bags)
    with pytest.raises(InvalidInputError, match="the test split has no target"):
        train_mil(_abmil(), train, val, unlabelled, TrainConfig(epochs=1, **FAST))
    with pytest.raises(InvalidInputError, match="batch_size >= 2"):
        TrainConfig(task="survival", survival_loss="cox").validate()
    with pytest.raises(InvalidInputError, match="patience must be >= 1"):
        TrainConfig(patience=0).validate()


def test_mixed_precision_is_bf16_or_fp16_on_gpus_and_off_on_cpus():
    assert resolve_mixed_precision("auto", cuda=False, bf16_supported=False) == "no"
    assert resolve_mixed_precision("auto", cuda=True, bf16_supported=True) == "bf16"
    assert resolve_mixed_precision("auto", cuda=True, bf16_supported=False) == "fp16"
    assert resolve_mixed_precision("fp16", cuda=True, bf16_supported=True) == "fp16"
    with pytest.raises(InvalidInputError):
        resolve_mixed_precision("fp8", cuda=True, bf16_supported=True)


_BF16_RUN = textwrap.dedent(
    """
    import numpy as np, torch
    from gpfm.heads import ABMIL, FeatureBagDataset, TrainConfig, train_mil
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    bags = [rng.normal(size=(20, 8)).astype(np.float32) for _ in range(12)]
    data = FeatureBagDataset(bags, {"label": np.arange(12) % 2})
    model = ABMIL(8, 2, hidden_dim=16, attention_dim=8)
    dtypes = set()
    model.classifier.register_forward_hook(lambda m, i, o: dtypes.add(str(o.dtype)))
    config = TrainConfig(epochs=2, mixed_precision="bf16", cpu=True, progress=False)
    result = train_mil(model, data, data, data, config)
    print(sorted(dtypes), np.isfinite(result.test.logits).all(), result.test.logits.dtype)
    """
)


@pytest.mark.slow
def test_bf16_autocast_through_accelerate_runs_on_the_cpu():
    # Accelerate keeps one precision per process, so this runs in a fresh one.
    done = subprocess.run(
        [sys.executable, "-c", _BF16_RUN], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[0] == "['torch.bfloat16'] True float32"


def test_an_undefined_validation_metric_is_nan_in_history_and_null_in_the_summary(bag_maker):
    bags, labels = bag_maker(12, seed=6)
    train = FeatureBagDataset(bags, {"label": labels})
    one_class = FeatureBagDataset(bags[:3], {"label": np.zeros(3, dtype=np.int64)})
    result = train_mil(_abmil(), train, one_class, config=TrainConfig(epochs=1, **FAST))
    assert np.isnan(result.history[0]["val_metric"])  # no AUC with a single class
    assert json.loads(json.dumps(result.summary()))["history"][0]["val_metric"] is None
