import inspect

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.preprocessing import StandardScaler

from gpfm.heads import InvalidInputError, fit_knn_probe, fit_linear_probe
from gpfm.heads.probes import simpleshot


def _roi_features(n, *, dim=32, n_classes=3, noise=1.0, seed=0):
    """Class means on random directions plus Gaussian noise, like ROI embeddings."""
    rng = np.random.default_rng(seed)
    means = np.random.default_rng(99).normal(size=(n_classes, dim))
    labels = rng.integers(0, n_classes, n)
    return (means[labels] + noise * rng.normal(size=(n, dim))).astype(np.float32), labels


def test_probe_fitting_takes_no_test_data_at_all():
    for fit in (fit_linear_probe, fit_knn_probe):
        parameters = inspect.signature(fit).parameters
        assert not [name for name in parameters if "test" in name], fit.__name__


def test_linear_probe_keeps_the_c_that_scores_best_on_validation():
    x_train, y_train = _roi_features(60, dim=64, noise=3.0, seed=1)
    x_val, y_val = _roi_features(300, dim=64, noise=3.0, seed=2)
    probe = fit_linear_probe(x_train, y_train, x_val, y_val, Cs=np.logspace(-4, 2, 7))
    cs, scores = zip(*probe.sweep, strict=True)
    assert list(cs) == sorted(cs) and cs[int(np.argmax(scores))] == probe.C
    # The recorded score is the validation score of a model fitted on the training split alone.
    scaler = StandardScaler().fit(x_train)
    alone = LogisticRegression(C=probe.C, max_iter=1000).fit(scaler.transform(x_train), y_train)
    expected = balanced_accuracy_score(y_val, alone.predict(scaler.transform(x_val)))
    assert max(scores) == pytest.approx(expected, abs=0.01)
    assert np.array_equal(probe.predict(x_val), alone.predict(scaler.transform(x_val)))


def test_the_chosen_c_follows_the_validation_labels():
    x_train, y_train = _roi_features(60, dim=64, noise=3.0, seed=1)
    x_val, y_val = _roi_features(300, dim=64, noise=3.0, seed=2)
    cs = np.logspace(-4, 2, 7)
    honest = fit_linear_probe(x_train, y_train, x_val, y_val, Cs=cs)
    # Validation labels rotated to a wrong class: the worst C on honest labels now looks best.
    rotated = fit_linear_probe(x_train, y_train, x_val, (y_val + 1) % 3, Cs=cs)
    assert rotated.C != honest.C


def test_linear_probe_classifies_held_out_rois():
    x_train, y_train = _roi_features(300, seed=3)
    x_val, y_val = _roi_features(100, seed=4)
    x_test, y_test = _roi_features(200, seed=5)
    probe = fit_linear_probe(x_train, y_train, x_val, y_val, select_by="log_loss")
    assert balanced_accuracy_score(y_test, probe.predict(x_test)) > 0.9
    probabilities = probe.predict_proba(x_test)
    assert probabilities.shape == (200, 3) and np.allclose(probabilities.sum(axis=1), 1)
    assert probe.classes.tolist() == [0, 1, 2]


def test_knn_chooses_k_on_validation_and_defaults_to_20_without_it():
    x_train, y_train = _roi_features(200, noise=2.5, seed=6)
    x_val, y_val = _roi_features(150, noise=2.5, seed=7)
    probe = fit_knn_probe(x_train, y_train, x_val, y_val, ks=(1, 5, 20, 50))
    ks, scores = zip(*probe.sweep, strict=True)
    assert ks == (1, 5, 20, 50) and probe.k == ks[int(np.argmax(scores))]
    assert scores[0] < max(scores)  # a single neighbour is noisier than a vote
    assert fit_knn_probe(x_train, y_train).k == 20
    assert fit_knn_probe(x_train[:8], y_train[:8]).k == 8


def test_knn_votes_of_the_nearest_neighbours_by_cosine():
    train = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9], [-1, 0.05]], dtype=np.float32)
    labels = np.array([0, 0, 1, 1, 2])
    probe = fit_knn_probe(train, labels, default_k=3)
    # [1, 0.2]: nearest by angle are train 0, 1 (class 0) then train 3 (class 1).
    assert probe.predict(np.array([[1, 0.2]], dtype=np.float32)).tolist() == [0]
    assert np.allclose(
        probe.predict_proba(np.array([[1, 0.2]], dtype=np.float32)), [[2 / 3, 1 / 3, 0]]
    )
    weighted = fit_knn_probe(train, labels, default_k=3, temperature=0.07)
    shares = weighted.predict_proba(np.array([[1, 0.2]], dtype=np.float32))[0]
    assert shares[0] > 0.99  # far neighbours count for little


def test_simpleshot_episodes_give_a_mean_and_an_interval():
    support, support_labels = _roi_features(200, noise=2.0, seed=8)
    queries, query_labels = _roi_features(100, noise=2.0, seed=9)
    one = simpleshot(support, support_labels, queries, query_labels, n_shot=1, n_episodes=50)
    many = simpleshot(support, support_labels, queries, query_labels, n_shot=16, n_episodes=50)
    assert one.per_episode.shape == (50,) and one.low <= one.mean <= one.high
    assert many.mean > one.mean and many.mean > 0.8
    again = simpleshot(support, support_labels, queries, query_labels, n_shot=1, n_episodes=50)
    assert np.array_equal(one.per_episode, again.per_episode)


def test_simpleshot_on_one_episode_is_nearest_centred_prototype():
    support = np.array([[2, 0], [0, 2]], dtype=np.float32)  # one shot of each class
    queries = np.array([[3, 0.5], [0.2, 5]], dtype=np.float32)
    result = simpleshot(support, [0, 1], queries, [0, 1], n_shot=1, n_episodes=1, metric="accuracy")
    assert result.mean == 1.0


def test_probe_inputs_are_checked():
    x, y = _roi_features(20)
    with pytest.raises(InvalidInputError, match="single class"):
        fit_linear_probe(x, np.zeros(20), x, y)
    with pytest.raises(InvalidInputError, match=r"training split: features \(N, D\) and labels"):
        fit_linear_probe(x, y[:5], x, y)
    with pytest.raises(InvalidInputError, match="has only"):
        simpleshot(x, y, x, y, n_shot=50)
