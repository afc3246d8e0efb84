"""protocol="gpfm" probes, retrieval and metrics equal transcriptions of GPFM's ROI code.

Reference: birkhoffkiki/GPFM at commit 4f8be2b, ROI_tasks/linear.py, ROI_tasks/roi_retrieval.py,
ROI_tasks/knn.py, ROI_tasks/metrics.py (the ``downstream_tasks`` package its scripts import),
with torchmetrics (pinned at 0.10.3 in pretrain/requirements.txt) as the reference for its
metrics where the installed torchmetrics agrees with 0.10.3 (every class present).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.functional import softmax

from gpfm.heads import fit_knn_probe, fit_linear_probe, retrieval_scores, validation_split
from gpfm.heads.metrics import (
    bootstrap_ci,
    multiclass_accuracy,
    multiclass_auroc,
    multiclass_f1,
    poisson_bootstrap,
)
from gpfm.heads.probes_gpfm import gpfm_knn_votes
from gpfm.heads.retrieval import rank_vote_scores


def _features(n: int, classes: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % classes
    centres = rng.normal(size=(classes, dim))
    return (centres[labels] + rng.normal(scale=1.5, size=(n, dim))).astype(np.float32), labels


class ReferenceLinearClassifier(nn.Module):
    """ROI_tasks/linear.py:38-50."""

    def __init__(self, out_dim, num_classes):
        super().__init__()
        self.linear = nn.Linear(out_dim, num_classes)
        self.linear.weight.data.normal_(mean=0.0, std=0.01)
        self.linear.bias.data.zero_()

    def forward(self, x):
        return self.linear(x)


def reference_linear_probe(train, val, epochs, batch_size, patience):
    """ROI_tasks/linear.py:91-153 and :156-197 (the test split is not touched here); the
    validation AUROC is torchmetrics' (metrics.py:41-54, bootstrap=False)."""
    torchmetrics = pytest.importorskip("torchmetrics")
    torch.manual_seed(0)  # :162
    classes = int(train[1].max()) + 1  # :170
    model = ReferenceLinearClassifier(train[0].shape[1], classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-4, weight_decay=1e-5)  # :174
    x, y = torch.from_numpy(train[0]), torch.from_numpy(train[1])
    train_loader = torch.utils.data.DataLoader(
        list(zip(x, y, strict=True)), batch_size=batch_size, shuffle=True
    )
    val_x, val_y = torch.from_numpy(val[0]), torch.from_numpy(val[1])
    val_loader = torch.utils.data.DataLoader(
        list(zip(val_x, val_y, strict=True)), batch_size=batch_size, shuffle=False
    )
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
        optimizer, epochs * len(train_loader), eta_min=1e-5
    )  # :180-181
    best_auc_value, best_weight, best_ep, early_stop_counter = 0, None, 0, 0
    aucs = []
    for ep in range(epochs):  # :108-153
        for features, labels in train_loader:
            loss = nn.CrossEntropyLoss()(model(features), labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        metric = torchmetrics.AUROC(num_classes=classes, average="macro", task="multiclass")
        model.eval()
        with torch.inference_mode():  # ROI_tasks/utils.py:37-73
            for features, labels in val_loader:
                metric.update(model(features), labels)
        auc_value = metric.compute().item()
        aucs.append(auc_value)
        early_stop_counter += 1
        if auc_value > best_auc_value:
            best_auc_value, best_ep, early_stop_counter = auc_value, ep, 0
            best_weight = {k: v.clone() for k, v in model.state_dict().items()}
        if early_stop_counter >= patience:
            break
    model.load_state_dict(best_weight)
    return model, best_ep, aucs


def test_gpfm_linear_probe_equals_reference_training():
    x, y = _features(300, 3, 12, seed=0)
    train, val = (x[:200], y[:200]), (x[200:], y[200:])
    reference, best_epoch, aucs = reference_linear_probe(train, val, 40, 32, patience=8)
    before = torch.random.get_rng_state()
    probe = fit_linear_probe(
        *train, *val, protocol="gpfm", epochs=40, batch_size=32, patience=8, device="cpu"
    )
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's stream untouched
    np.testing.assert_allclose([row["val_auc"] for row in probe.history], aucs, atol=1e-5)
    assert probe.best_epoch == best_epoch + 1
    torch.testing.assert_close(probe.model.weight, reference.linear.weight, rtol=0, atol=1e-5)
    with torch.no_grad():
        expected = softmax(reference(torch.from_numpy(x)), dim=1).numpy()
    np.testing.assert_allclose(probe.predict_proba(x), expected, atol=1e-5)


def reference_retrieval(train, val, num_classes, batch_size=256):
    """ROI_tasks/roi_retrieval.py:31-94: z-score, L2 kNN with k = classes, rank votes."""
    train_features, val_features = torch.from_numpy(train[0]), torch.from_numpy(val[0])
    var, mean = torch.var_mean(train_features, dim=0, keepdim=True)  # :36-41
    std = torch.sqrt(var)
    train_features = (train_features - mean) / std
    val_features = (val_features - mean) / std
    train_labels = torch.from_numpy(train[1])
    indices = []
    for i in range(0, val_features.size(0), batch_size):  # :53-65
        dist = torch.cdist(val_features[i : i + batch_size], train_features)
        indices.append(torch.topk(dist, num_classes, largest=False, sorted=True)[1])
    indices = torch.cat(indices)
    prediction = []
    for i in range(len(val[1])):  # :79-91
        prob = torch.zeros((1, num_classes))
        ratio = 1.0
        for j in indices[i][:num_classes]:
            prob[0, train_labels[j]] += ratio
            ratio -= 0.1
        prediction.append(softmax(prob, dim=-1))
    return torch.cat(prediction, dim=0)


def test_gpfm_retrieval_equals_reference_and_its_bootstrap():
    torchmetrics = pytest.importorskip("torchmetrics")
    from torchmetrics.classification import MulticlassAccuracy
    from torchmetrics.wrappers import BootStrapper

    x, y = _features(700, 6, 16, seed=1)
    train, val = (x[:500], y[:500]), (x[500:], y[500:])
    expected_scores = reference_retrieval(train, val, 6)
    scores = rank_vote_scores(val[0], train[0], train[1], 6)
    torch.testing.assert_close(scores, expected_scores, rtol=0, atol=1e-7)

    ours = retrieval_scores(val[0], val[1], train[0], train[1], protocol="gpfm", seed=7)
    target = torch.from_numpy(val[1])
    for k in (1, 3, 5):
        point = MulticlassAccuracy(top_k=k, num_classes=6, average="macro")
        assert ours[f"acc@{k}"] == pytest.approx(point(expected_scores, target).item(), abs=1e-6)
    metrics = torchmetrics.MetricCollection(  # ROI_tasks/metrics.py:56-68
        {
            f"top{k} acc": BootStrapper(
                MulticlassAccuracy(top_k=k, num_classes=6, average="macro"), num_bootstraps=1000
            )
            for k in (1, 3, 5)
        }
    )
    torch.manual_seed(7)
    metrics.update(expected_scores, target)  # roi_retrieval.py:96-98
    results = metrics.compute()
    for k in (1, 3, 5):
        assert ours[f"acc@{k}_bootstrap_mean"] == pytest.approx(
            results[f"top{k} acc_mean"].item(), abs=1e-5
        )
        assert ours[f"acc@{k}_bootstrap_std"] == pytest.approx(
            results[f"top{k} acc_std"].item(), abs=1e-5
        )


def test_poisson_bootstrap_in_batches_equals_bootstrapper_collection():
    torchmetrics = pytest.importorskip("torchmetrics")
    from torchmetrics.classification import AUROC, F1Score, MulticlassAccuracy
    from torchmetrics.wrappers import BootStrapper

    rng = np.random.default_rng(2)
    labels = np.arange(230) % 4
    logits = (np.eye(4)[labels] * 1.5 + rng.normal(size=(230, 4))).astype(np.float32)
    collection = torchmetrics.MetricCollection(  # ROI_tasks/metrics.py:41-54, bootstrap=True
        {
            "top1 acc": BootStrapper(MulticlassAccuracy(num_classes=4, average="macro"), 200),
            "f1_score": BootStrapper(
                F1Score(num_classes=4, average="macro", task="multiclass"), 200
            ),
            "AUC": BootStrapper(AUROC(num_classes=4, average="macro", task="multiclass"), 200),
        }
    )
    torch.manual_seed(3)
    for start in range(0, 230, 64):  # the test loader's batches (linear.py:205, 1024 there)
        collection.update(
            torch.from_numpy(logits[start : start + 64]),
            torch.from_numpy(labels[start : start + 64]),
        )
    expected = collection.compute()
    ours = poisson_bootstrap(
        {
            "top1 acc": lambda y, s: multiclass_accuracy(y, s, num_classes=4),
            "f1_score": lambda y, s: multiclass_f1(y, s, num_classes=4),
            "AUC": lambda y, s: multiclass_auroc(y, s, num_classes=4),
        },
        labels,
        logits,
        n_resamples=200,
        seed=3,
        batch_size=64,
    )
    for name in ("top1 acc", "f1_score", "AUC"):
        assert ours[name].mean == pytest.approx(expected[f"{name}_mean"].item(), abs=1e-5)
        assert ours[name].std == pytest.approx(expected[f"{name}_std"].item(), abs=1e-5)
    single = bootstrap_ci(
        lambda y, s: multiclass_accuracy(y, s), labels, logits, protocol="gpfm", n_resamples=50
    )
    assert single.n_failed == 0 and len(single.replicates) == 50


def test_macro_metrics_count_every_class_as_torchmetrics_0_10_3():
    """torchmetrics 0.10.3 functional/classification/accuracy.py:76-88 and f_beta.py:59-67:
    macro = plain mean over all C classes (weights all ones), 0/0 -> 0 (utilities/compute.py:47-55).
    """
    labels = np.array([0, 0, 1, 1, 1])  # class 2 has no sample
    scores = np.array(
        [[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.1, 0.8, 0.1], [0.0, 0.3, 0.7], [0.6, 0.3, 0.1]]
    )
    tp, fn = np.array([1, 1, 0]), np.array([1, 2, 0])
    recall = np.divide(tp, np.where(tp + fn == 0, 1, tp + fn))
    assert multiclass_accuracy(labels, scores) == pytest.approx(recall.mean())
    fp = np.array([1, 1, 1])
    f1 = np.divide(2 * tp, np.where(2 * tp + fp + fn == 0, 1, 2 * tp + fp + fn))
    assert multiclass_f1(labels, scores) == pytest.approx(f1.mean())
    assert multiclass_accuracy(labels, scores, top_k=3) == pytest.approx(2 / 3)  # k >= C: all hit
    assert multiclass_accuracy(labels, scores, average="weighted") == pytest.approx(2 / 5)


class ReferenceKnnModule(nn.Module):
    """ROI_tasks/knn.py:84-131."""

    def __init__(self, train_features, train_labels, nb_knn, t, num_classes):
        super().__init__()
        self.train_features = nn.functional.normalize(train_features.T, dim=0)
        self.candidates = train_labels
        self.nb_knn, self.max_k, self.t, self.num_classes = nb_knn, max(nb_knn), t, num_classes

    def forward(self, feature):
        feature = nn.functional.normalize(feature, dim=1)
        similarity = torch.mm(feature, self.train_features)
        candidate_labels = self.candidates.expand(len(similarity), -1)
        topk_sims, indices = similarity.topk(self.max_k, largest=True, sorted=True, dim=-1)
        neighbors_labels = torch.gather(candidate_labels, 1, indices)
        batch_size = neighbors_labels.shape[0]
        topk_sims_transform = softmax(topk_sims / self.t, 1)
        matmul = torch.mul(
            nn.functional.one_hot(neighbors_labels, num_classes=self.num_classes),
            topk_sims_transform.view(batch_size, -1, 1),
        )
        return {k: torch.sum(matmul[:, :k, :], 1) for k in self.nb_knn}


def test_gpfm_knn_equals_reference_votes_and_predictions():
    x, y = _features(400, 4, 10, seed=4)
    reference = ReferenceKnnModule(
        torch.from_numpy(x[:300]), torch.from_numpy(y[:300]), [1, 20], 0.07, 4
    )
    expected = reference(torch.from_numpy(x[300:]))
    votes = gpfm_knn_votes(x[:300], y[:300], x[300:], [1, 20])
    probe = fit_knn_probe(x[:300], y[:300], protocol="gpfm")
    for k in (1, 20):
        torch.testing.assert_close(votes[k], expected[k], rtol=0, atol=1e-6)
        np.testing.assert_array_equal(
            probe.predict(x[300:], k=k), expected[k].argmax(dim=1).numpy()
        )
    assert probe.k == 20 and probe.ks == (1, 20)


def test_probes_never_see_test_labels():
    x, y = _features(400, 3, 8, seed=5)
    train, val, test = (x[:200], y[:200]), (x[200:300], y[200:300]), (x[300:], y[300:])
    shuffled = np.random.default_rng(0).permutation(test[1])
    for protocol in ("ours", "gpfm"):
        linear = fit_linear_probe(
            *train, *val, protocol=protocol, **({"epochs": 5} if protocol == "gpfm" else {})
        )
        knn = fit_knn_probe(*train, *val, protocol=protocol)
        again = fit_linear_probe(
            *train, *val, protocol=protocol, **({"epochs": 5} if protocol == "gpfm" else {})
        )
        np.testing.assert_array_equal(linear.predict_proba(test[0]), again.predict_proba(test[0]))
        assert knn.k == fit_knn_probe(*train, *val, protocol=protocol).k
    # retrieval: the class scores of the queries come from the database alone
    scores = rank_vote_scores(test[0], train[0], train[1], 3)
    by_label = retrieval_scores(
        test[0], shuffled, train[0], train[1], protocol="gpfm", n_bootstrap=0
    )
    assert set(by_label) == {"acc@1", "acc@3", "acc@5"}
    torch.testing.assert_close(scores, rank_vote_scores(test[0], train[0], train[1], 3))


def test_validation_split_keeps_patients_whole_and_classes_balanced():
    labels = np.repeat(np.arange(2), 50)
    patients = np.repeat(np.arange(25), 4)
    train, val = validation_split(labels, patients, fraction=0.2, seed=1)
    assert not set(patients[train]) & set(patients[val])
    assert sorted([*train, *val]) == list(range(100))
    assert 0.1 <= len(val) / 100 <= 0.3 and set(labels[val]) == {0, 1}
