import numpy as np
import pytest
from sklearn import metrics as skm

from gpfm.heads import (
    InvalidInputError,
    balanced_accuracy,
    bootstrap_ci,
    c_index,
    classification_metrics,
)
from gpfm.heads.metrics import accuracy, macro_auc, macro_f1


def _predictions(n=200, n_classes=3, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, n)
    logits = rng.normal(size=(n, n_classes)) + 1.5 * np.eye(n_classes)[labels]
    probabilities = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, probabilities


@pytest.mark.parametrize("n_classes", [2, 3, 5])
def test_metrics_equal_scikit_learn(n_classes):
    labels, probabilities = _predictions(n_classes=n_classes)
    predictions = probabilities.argmax(axis=1)
    assert accuracy(labels, predictions) == skm.accuracy_score(labels, predictions)
    assert balanced_accuracy(labels, predictions) == skm.balanced_accuracy_score(
        labels, predictions
    )
    assert macro_f1(labels, predictions) == skm.f1_score(labels, predictions, average="macro")
    expected_auc = (
        skm.roc_auc_score(labels, probabilities[:, 1])
        if n_classes == 2
        else skm.roc_auc_score(labels, probabilities, multi_class="ovr", average="macro")
    )
    assert macro_auc(labels, probabilities) == pytest.approx(expected_auc, abs=1e-12)
    assert classification_metrics(labels, probabilities)["auc"] == pytest.approx(expected_auc)


def test_auc_of_a_binary_task_accepts_positive_scores_alone():
    labels, probabilities = _predictions(n_classes=2)
    assert macro_auc(labels, probabilities[:, 1]) == macro_auc(labels, probabilities)


def test_auc_averages_over_the_classes_present():
    labels, probabilities = _predictions(n_classes=4)
    present = labels != 3
    per_class = [
        skm.roc_auc_score(labels[present] == c, probabilities[present, c]) for c in range(3)
    ]
    assert macro_auc(labels[present], probabilities[present]) == pytest.approx(np.mean(per_class))
    with pytest.raises(InvalidInputError, match="at least two classes"):
        macro_auc(np.zeros(5, int), probabilities[:5])


def test_bootstrap_interval_brackets_the_estimate_and_repeats_with_a_seed():
    labels, probabilities = _predictions(n=300, n_classes=2)
    result = bootstrap_ci(macro_auc, labels, probabilities, n_resamples=300, seed=1)
    assert result.low < result.estimate < result.high
    assert result.estimate == macro_auc(labels, probabilities)
    assert len(result.replicates) + result.n_failed == 300
    again = bootstrap_ci(macro_auc, labels, probabilities, n_resamples=300, seed=1)
    assert np.array_equal(result.replicates, again.replicates)
    narrower = bootstrap_ci(macro_auc, labels, probabilities, n_resamples=300, confidence=0.5)
    assert narrower.high - narrower.low < result.high - result.low


def test_bootstrap_by_patient_keeps_a_patients_slides_together():
    # 20 patients with 5 identical slides each: resampling slides would pretend 100 independent
    # samples; resampling patients draws whole groups, so every replicate has multiples of 5.
    rng = np.random.default_rng(0)
    patient_label = rng.integers(0, 2, 20)
    patient_score = rng.random(20) + 0.3 * patient_label
    labels, scores = np.repeat(patient_label, 5), np.repeat(patient_score, 5)
    patients = np.repeat([f"patient-{i}" for i in range(20)], 5)
    sizes = []

    def size_then_auc(y, s):
        sizes.append(len(y))
        return macro_auc(y, s)

    by_patient = bootstrap_ci(size_then_auc, labels, scores, groups=patients, n_resamples=200)
    assert all(size % 5 == 0 for size in sizes)
    by_slide = bootstrap_ci(macro_auc, labels, scores, n_resamples=200)
    assert by_patient.high - by_patient.low > by_slide.high - by_slide.low


def test_bootstrap_works_for_the_c_index_and_skips_unscorable_resamples():
    rng = np.random.default_rng(0)
    time, event, risk = rng.exponential(size=40), rng.integers(0, 2, 40), rng.normal(size=40)
    result = bootstrap_ci(c_index, time, event, risk, n_resamples=100)
    assert result.low <= result.estimate <= result.high
    labels = np.array([0, 0, 0, 0, 0, 0, 0, 1])
    rare = bootstrap_ci(macro_auc, labels, np.linspace(0, 1, 8), n_resamples=200, seed=0)
    assert rare.n_failed > 0 and len(rare.replicates) == 200 - rare.n_failed


def test_bootstrap_inputs_are_checked():
    with pytest.raises(InvalidInputError, match="different lengths"):
        bootstrap_ci(accuracy, np.zeros(3), np.zeros(4))
    with pytest.raises(InvalidInputError, match="groups has 2 entries for 3 rows"):
        bootstrap_ci(accuracy, np.zeros(3), np.zeros(3), groups=["a", "b"])
    with pytest.raises(InvalidInputError, match="could not be scored"):
        bootstrap_ci(macro_auc, np.array([0, 1]), np.array([0.2, 0.8]), n_resamples=50)
