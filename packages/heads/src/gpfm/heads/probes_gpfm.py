"""The GPFM paper's ROI probes (``protocol="gpfm"``), written from birkhoffkiki/GPFM at 4f8be2b.

- Linear probe (``ROI_tasks/linear.py``, ``ROI_tasks/scripts/linear.sh``): one ``nn.Linear``
  (weights N(0, 0.01), bias 0) trained on the features as given with cross-entropy, AdamW (lr
  5e-4, weight decay 1e-5), batches of 256 reshuffled every epoch, a cosine schedule stepped
  every batch down to 1e-5 over all epochs (3000), validation macro-AUC after every epoch, the
  weights of the first epoch with the best AUC kept, and a stop after 100 epochs without
  improvement. Random numbers come from ``torch.manual_seed(seed)`` in the order the reference
  draws them (inside ``torch.random.fork_rng``, so the caller's generator is left as it was).
- kNN (``ROI_tasks/knn.py``, DINOv2's): cosine similarity to the L2-normalised training
  features, the ``max(ks)`` most similar, votes softmax(similarity / 0.07) over those, summed per
  class over the first k; the class with the largest sum (the first on a tie) is predicted.

Unlike the reference, the validation split is never the test split: carve one from training
(``gpfm.heads.splits.validation_split``) when a dataset has none.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from tqdm.auto import tqdm

from gpfm.heads.errors import InvalidInputError
from gpfm.heads.metrics import multiclass_auroc

logger = logging.getLogger(__name__)


def _class_indices(labels: np.ndarray, name: str) -> torch.Tensor:
    if not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0:
        raise InvalidInputError(
            f"{name}: the GPFM protocol needs class indices 0..C-1 as labels, got "
            f"{labels.dtype} values from {labels.min()}"
        )
    return torch.as_tensor(labels).long()


@dataclass
class TorchLinearProbe:
    """A linear layer trained as the GPFM paper trains its ROI probe.

    Attributes:
        classes: (C,) the class labels 0..C-1, in the column order of ``predict_proba``.
        best_epoch: the epoch (1-based) whose weights were kept (best validation macro-AUC).
        history: per epoch: ``epoch``, ``train_loss`` (mean over batches), ``val_auc``, ``lr``.
        model: the ``nn.Linear`` (on the CPU, eval mode).
    """

    classes: np.ndarray
    best_epoch: int
    history: list[dict[str, float]]
    model: nn.Linear = field(repr=False)

    @torch.no_grad()
    def logits(self, features: np.ndarray) -> np.ndarray:
        """(N, C) float32 logits of (N, D) features."""
        x = torch.as_tensor(np.asarray(features, dtype=np.float32))
        return self.model(x).numpy()

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """(N, C) softmax probabilities of (N, D) features."""
        return torch.softmax(torch.from_numpy(self.logits(features)), dim=1).numpy()

    def predict(self, features: np.ndarray) -> np.ndarray:
        """(N,) the class of the largest logit (the first on a tie)."""
        return self.classes[self.logits(features).argmax(axis=1)]


@torch.no_grad()
def _validation_auc(
    model: nn.Linear, loader: DataLoader[tuple[torch.Tensor, ...]], classes: int
) -> float:
    """Macro-AUC on the validation loader (iterating it draws one base seed from the global
    generator, as the reference's evaluation loader does every epoch)."""
    device = model.weight.device
    logits, labels = [], []
    for features, target in loader:
        logits.append(model(features.to(device)).float().cpu())
        labels.append(target)
    return multiclass_auroc(torch.cat(labels).numpy(), torch.cat(logits), num_classes=classes)


def fit_gpfm_linear_probe(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    val_features: np.ndarray,
    val_labels: np.ndarray,
    *,
    epochs: int = 3000,
    batch_size: int = 256,
    lr: float = 5e-4,
    weight_decay: float = 1e-5,
    final_lr: float = 1e-5,
    patience: int = 100,
    seed: int = 0,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> TorchLinearProbe:
    """Train the GPFM paper's linear probe on (N, D) features; see the module docstring.

    Args:
        train_features, train_labels: (N, D) and (N,) class indices 0..C-1 (C = max + 1).
        val_features, val_labels: (M, D) and (M,): the split that chooses the epoch.
        epochs: at most this many epochs (``linear.sh``: 3000).
        batch_size: training batch (256). lr, weight_decay: AdamW's (5e-4, 1e-5).
        final_lr: the cosine schedule's floor (1e-5).
        patience: stop after this many epochs without a better validation AUC (100).
        seed: ``torch.manual_seed`` of the run (the reference: 0).
        device: where to train (default: CUDA when available, as the reference does).
        progress: show a bar over epochs.
    """
    x_train = torch.as_tensor(np.asarray(train_features, dtype=np.float32))
    x_val = torch.as_tensor(np.asarray(val_features, dtype=np.float32))
    y_train = _class_indices(np.asarray(train_labels), "training split")
    y_val = _class_indices(np.asarray(val_labels), "validation split")
    classes = int(y_train.max()) + 1
    target = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = nn.Linear(x_train.shape[1], classes)  # default init draws first, as there
        model.weight.data.normal_(mean=0.0, std=0.01)
        model.bias.data.zero_()
        model = model.to(target)
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
        loader = DataLoader(TensorDataset(x_train, y_train), batch_size=batch_size, shuffle=True)
        val_loader = DataLoader(TensorDataset(x_val, y_val), batch_size=batch_size)
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
            optimizer, epochs * len(loader), eta_min=final_lr
        )
        best_auc, best_epoch, best_state, waited = 0.0, 0, None, 0
        history: list[dict[str, float]] = []
        for epoch in tqdm(range(1, epochs + 1), desc="GPFM linear probe", disable=not progress):
            losses = []
            for features, labels in loader:
                loss = nn.functional.cross_entropy(model(features.to(target)), labels.to(target))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
                losses.append(float(loss.detach()))
            auc = _validation_auc(model, val_loader, classes)
            history.append(
                {
                    "epoch": float(epoch),
                    "train_loss": float(np.mean(losses)),
                    "val_auc": auc,
                    "lr": optimizer.param_groups[0]["lr"],
                }
            )
            waited += 1
            if auc > best_auc:
                best_auc, best_epoch, waited = auc, epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            if waited >= patience:
                break
    if best_state is None:
        raise InvalidInputError(
            "the validation macro-AUC never rose above 0; check the validation labels"
        )
    model.load_state_dict(best_state)
    model = model.cpu().eval()
    logger.info("GPFM linear probe: epoch %d kept (validation AUC %.4f)", best_epoch, best_auc)
    return TorchLinearProbe(np.arange(classes), best_epoch, history, model)


@torch.no_grad()
def gpfm_knn_votes(
    train_features: np.ndarray,
    train_labels: np.ndarray,
    query_features: np.ndarray,
    ks: Sequence[int],
    *,
    temperature: float = 0.07,
    num_classes: int | None = None,
) -> dict[int, torch.Tensor]:
    """The GPFM paper's kNN class votes: k -> (Q, C) float32, for each k in ``ks``.

    Votes are softmax(cosine / ``temperature``) over the ``max(ks)`` nearest training items
    (``torch.topk``), summed per class over the first k; not normalised, as in the reference.
    """
    labels = torch.as_tensor(np.asarray(train_labels)).long()
    classes = num_classes or int(labels.max()) + 1
    max_k = max(ks)
    database = torch.as_tensor(np.asarray(train_features, dtype=np.float32)).T
    database = nn.functional.normalize(database, dim=0)
    queries = nn.functional.normalize(
        torch.as_tensor(np.asarray(query_features, dtype=np.float32)), dim=1
    )
    if not 1 <= max_k <= database.shape[1]:
        raise InvalidInputError(f"k={max_k} but there are {database.shape[1]} training items")
    similarity = torch.mm(queries, database)
    top_similarity, indices = similarity.topk(max_k, largest=True, sorted=True, dim=-1)
    neighbour_labels = torch.gather(labels.expand(len(similarity), -1), 1, indices)
    weights = torch.softmax(top_similarity / temperature, 1)
    weighted = nn.functional.one_hot(neighbour_labels, num_classes=classes) * weights.unsqueeze(-1)
    return {k: weighted[:, :k, :].sum(1) for k in ks}


__all__ = ["TorchLinearProbe", "fit_gpfm_linear_probe", "gpfm_knn_votes"]
