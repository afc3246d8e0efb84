"""train_mil with TrainConfig(protocol="gpfm") equals a transcription of GPFM's trainer.

Reference: birkhoffkiki/GPFM at commit 4f8be2b: utils/core_trainer.py (TrainEngine), utils/
comm_utils.py (EarlyStopping), utils/clam_utils.py (get_split_loader, calculate_error,
make_weights_for_balanced_classes_split), train_scripts/UBC-OCEAN.sh (--lr 2e-4 --reg 1e-4
--weighted_sample, att_mil). One deviation, of plumbing only: the reference draws its sampling
from the global random stream, the transcription from a generator seeded as ``train_mil`` seeds
its own, so that both see the same bags in the same order.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, SequentialSampler, WeightedRandomSampler

from gpfm.heads import FeatureBagDataset, TrainConfig, make_mil, train_mil
from gpfm.heads.mil_gpfm import load_reference_state_dict

from .conftest import make_bags
from .test_gpfm_heads import ReferenceDAttention


class ReferenceEarlyStopping:
    """utils/comm_utils.py:41-88 (checkpoints kept in memory instead of files)."""

    def __init__(self, patience=20, stop_epoch=50):
        self.patience, self.stop_epoch = patience, stop_epoch
        self.counter, self.best_score, self.early_stop = 0, None, False
        self.checkpoint, self.best_epoch = None, None

    def __call__(self, epoch, val_loss, model):
        score = -val_loss
        if self.best_score is None:
            self.best_score = score
            self.save_checkpoint(epoch, model)
        elif score < self.best_score:
            self.counter += 1
            if self.counter >= self.patience and epoch > self.stop_epoch:
                self.early_stop = True
        else:
            self.best_score = score
            self.save_checkpoint(epoch, model)
            self.counter = 0

    def save_checkpoint(self, epoch, model):
        self.checkpoint = {k: v.clone() for k, v in model.state_dict().items()}
        self.best_epoch = epoch


def reference_train(model, train_bags, train_labels, val_bags, val_labels, seed, max_epochs=100):
    """TrainEngine.train_model for subtyping (core_trainer.py:139-180, 196-287, 289-362)."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    counts = np.bincount(train_labels)
    weights = torch.DoubleTensor([len(train_labels) / counts[y] for y in train_labels])  # :150-162
    pairs = [(torch.from_numpy(b), int(y)) for b, y in zip(train_bags, train_labels, strict=True)]
    val_pairs = [(torch.from_numpy(b), int(y)) for b, y in zip(val_bags, val_labels, strict=True)]

    def collate(batch):  # utils/clam_utils.py collate_MIL
        return torch.cat([item[0] for item in batch], dim=0), torch.LongTensor([batch[0][1]])

    train_loader = DataLoader(
        pairs,
        batch_size=1,
        sampler=WeightedRandomSampler(weights, len(weights), generator=generator),
        collate_fn=collate,
        generator=generator,
    )
    val_loader = DataLoader(
        val_pairs,
        batch_size=1,
        sampler=SequentialSampler(val_pairs),
        collate_fn=collate,
        generator=generator,
    )
    optimizer = torch.optim.Adam(
        filter(lambda p: p.requires_grad, model.parameters()), lr=2e-4, weight_decay=1e-4
    )  # core_trainer.py:121-129
    loss_function = nn.CrossEntropyLoss()
    early_stopping = ReferenceEarlyStopping(patience=20, stop_epoch=50)  # :62-64
    val_errors = []
    for epoch in range(max_epochs):
        model.train()
        for data, label in train_loader:  # :205-242
            logits = model(data)[0]
            loss = loss_function(logits, label)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        model.eval()
        val_error = 0.0
        with torch.no_grad():  # :298-337
            for data, label in val_loader:
                logits = model(data)[0]
                y_hat = torch.topk(logits, 1, dim=1)[1]
                val_error += 1.0 - y_hat.float().eq(label.float()).float().mean().item()
        val_error /= len(val_loader)
        val_errors.append(val_error)
        early_stopping(epoch, val_error, model)  # :356
        if early_stopping.early_stop:
            break
    model.load_state_dict(early_stopping.checkpoint)
    return model, early_stopping.best_epoch, val_errors


def test_gpfm_training_equals_the_reference_trainer():
    bags, labels = make_bags(18, dim=8, seed=3, sizes=(6, 14))
    train_bags, train_labels = bags[:12], labels[:12]
    val_bags, val_labels = bags[12:], labels[12:]
    torch.manual_seed(0)
    reference = ReferenceDAttention(8, 2)
    ours = make_mil("att_mil", 8, 2, protocol="gpfm")
    load_reference_state_dict(ours, reference.state_dict())
    config = TrainConfig(protocol="gpfm", seed=5, progress=False, cpu=True)
    assert (config.optimizer, config.lr, config.weight_decay) == ("adam", 2e-4, 1e-4)
    assert (config.epochs, config.patience, config.min_epochs) == (100, 20, 52)
    assert (config.monitor, config.tie_break, config.mixed_precision) == ("error", "later", "no")

    result = train_mil(
        ours,
        FeatureBagDataset(train_bags, {"label": train_labels}),
        FeatureBagDataset(val_bags, {"label": val_labels}),
        config=config,
    )
    reference, best_epoch, val_errors = reference_train(
        reference, train_bags, train_labels, val_bags, val_labels, seed=5
    )
    assert [row["val_error"] for row in result.history] == val_errors
    assert result.best_epoch == best_epoch + 1  # ours counts epochs from 1
    assert len(val_errors) > 52  # early stopping was allowed to act
    for mine, theirs in zip(
        result.model.state_dict().values(), reference.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


def test_gpfm_survival_settings_and_explicit_values_win():
    config = TrainConfig(task="survival", protocol="gpfm", epochs=3)
    assert config.monitor == "c_index" and config.survival_eps == 1e-7
    assert config.epochs == 3 and config.survival_alpha == 0.0
    assert TrainConfig().optimizer == "adamw"  # ours is untouched
