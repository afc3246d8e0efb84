import numpy as np
import pytest

from gpfm.heads import InvalidInputError, retrieval_scores
from gpfm.heads.retrieval import majority_vote, nearest_neighbours


def _at_angles(degrees):
    """2-D unit vectors at the given angles: cosine similarity orders them by angle distance."""
    radians = np.deg2rad(np.asarray(degrees, dtype=float))
    return np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)


def test_hand_made_ranking_gives_the_scores_of_the_definitions():
    # One query at 0°; database ranked by angle: 10° (B), 20° (A), 30° (B), 40° (A), 50° (A).
    database = _at_angles([40, 10, 50, 20, 30])
    database_labels = np.array(["A", "B", "A", "A", "B"])
    query, query_labels = _at_angles([0]), np.array(["A"])
    neighbours, similarity = nearest_neighbours(query, database, 5)
    assert neighbours[0].tolist() == [1, 3, 4, 0, 2]
    assert np.all(np.diff(similarity[0]) < 0)
    scores = retrieval_scores(query, query_labels, database, database_labels, ks=(1, 3, 5))
    # ranked labels: B A B A A, relevant R = 3
    assert scores["acc@1"] == 0.0 and scores["acc@3"] == 1.0
    assert scores["mvacc@1"] == 0.0  # B
    assert scores["mvacc@3"] == 0.0  # B, A, B -> B
    assert scores["mvacc@5"] == 1.0  # A x3
    assert scores["map@1"] == 0.0
    assert scores["map@3"] == pytest.approx((1 / 2) / min(3, 3))
    assert scores["map@5"] == pytest.approx((1 / 2 + 2 / 4 + 3 / 5) / 3)


def test_map_divides_by_the_relevant_items_there_are_when_fewer_than_k():
    database = _at_angles([10, 20, 30, 40])
    labels = np.array([1, 2, 2, 2])
    scores = retrieval_scores(_at_angles([0]), [1], database, labels, ks=(3,))
    assert scores["map@3"] == 1.0  # the only relevant item ranks first: R = 1 < k


def test_majority_ties_go_to_the_label_of_the_nearest():
    assert majority_vote(np.array([[2, 1, 2, 2]])).tolist() == [2]  # a clear majority
    assert majority_vote(np.array([[1, 2, 2, 1]])).tolist() == [1]  # 1 and 2 tie, 1 nearest
    assert majority_vote(np.array([[3, 1, 1, 3, 2]])).tolist() == [3]  # 3 and 1 tie, 3 first
    assert majority_vote(np.array([[5, 4, 4, 6, 6]])).tolist() == [4]  # 4 and 6 tie, 4 nearer
    database = _at_angles([10, 20, 30, 40])
    scores = retrieval_scores(_at_angles([0]), [7], database, [7, 8, 8, 7], ks=(4,))
    assert scores["mvacc@4"] == 1.0  # 7 and 8 tie, the nearest is 7


def test_the_query_is_left_out_when_queries_and_database_are_the_same_objects():
    features = _at_angles([0, 5, 90, 95])
    labels = np.array([0, 0, 1, 1])
    scores = retrieval_scores(features, labels, features, labels, ks=(1,))
    assert scores["acc@1"] == 1.0  # each item's nearest other item shares its label
    copy = features.copy()
    kept = retrieval_scores(features, labels, copy, labels, ks=(1, 3))
    assert kept["acc@1"] == 1.0 and kept["map@3"] == 1.0  # itself first, R = 2
    forced = retrieval_scores(features, labels, copy, labels, ks=(1,), exclude_self=True)
    assert forced == scores
    shifted = np.array([1, 1, 0, 0])
    with pytest.raises(InvalidInputError, match="labels differ"):
        retrieval_scores(features, labels, features, shifted)


def test_scores_equal_a_brute_force_evaluation():
    rng = np.random.default_rng(0)
    database = rng.normal(size=(120, 8)).astype(np.float32)
    database_labels = rng.integers(0, 12, 120)  # more than 10 classes is fine
    queries, query_labels = rng.normal(size=(30, 8)).astype(np.float32), rng.integers(0, 12, 30)
    scores = retrieval_scores(
        queries, query_labels, database, database_labels, ks=(1, 5, 10), chunk_size=7
    )
    unit = database / np.linalg.norm(database, axis=1, keepdims=True)
    for k in (1, 5, 10):
        acc, mv, ap = [], [], []
        for query, label in zip(queries, query_labels, strict=True):
            ranked = np.argsort(-(unit @ (query / np.linalg.norm(query))), kind="stable")[:k]
            ranked_labels = database_labels[ranked]
            acc.append(label in ranked_labels)
            counts = {v: list(ranked_labels).count(v) for v in ranked_labels}
            best = max(counts.values())
            mv.append(next(v for v in ranked_labels if counts[v] == best) == label)
            hits = ranked_labels == label
            precision = np.cumsum(hits) / np.arange(1, k + 1)
            relevant = min(k, int((database_labels == label).sum()))
            ap.append((precision * hits).sum() / relevant if relevant else 0.0)
        assert scores[f"acc@{k}"] == pytest.approx(np.mean(acc))
        assert scores[f"mvacc@{k}"] == pytest.approx(np.mean(mv))
        assert scores[f"map@{k}"] == pytest.approx(np.mean(ap))


def test_centring_and_z_scoring_use_the_database_statistics():
    rng = np.random.default_rng(1)
    database = rng.normal(loc=3.0, size=(60, 4)).astype(np.float32)
    labels = rng.integers(0, 3, 60)
    queries, query_labels = rng.normal(loc=3.0, size=(10, 4)).astype(np.float32), labels[:10]
    mean, std = database.mean(axis=0), database.std(axis=0, ddof=1)
    for how, (q, d) in {
        "center": (queries - mean, database - mean),
        "zscore": ((queries - mean) / std, (database - mean) / std),
    }.items():
        expected = retrieval_scores(q, query_labels, d, labels, ks=(1, 5))
        assert retrieval_scores(
            queries, query_labels, database, labels, ks=(1, 5), normalization=how
        ) == pytest.approx(expected)


def test_z_scoring_stops_a_noisy_dimension_from_hiding_the_classes():
    rng = np.random.default_rng(2)
    labels = np.repeat([0, 1], 60)
    signal = np.where(labels == 0, -1.0, 1.0) + rng.normal(scale=0.2, size=120)
    noise = rng.normal(scale=10.0, size=(120, 3))  # three dimensions of loud noise
    features = np.concatenate([signal[:, None], noise], axis=1).astype(np.float32)
    plain = retrieval_scores(features, labels, features, labels, ks=(1,))
    zscored = retrieval_scores(features, labels, features, labels, ks=(1,), normalization="zscore")
    assert plain["acc@1"] < 0.75 and zscored["acc@1"] > 0.85


def test_inputs_are_checked():
    features = _at_angles([0, 10, 20])
    with pytest.raises(InvalidInputError, match="k=5 but the database offers 3"):
        retrieval_scores(_at_angles([0]), [0], features, [0, 1, 1], ks=(5,))
    with pytest.raises(InvalidInputError, match="k=3 but the database offers 2"):
        retrieval_scores(features, [0, 1, 1], features, [0, 1, 1], ks=(3,))
    with pytest.raises(InvalidInputError, match="2 query labels for 1 queries"):
        retrieval_scores(_at_angles([0]), [0, 1], features, [0, 1, 1])
    with pytest.raises(InvalidInputError, match="normalization must be"):
        nearest_neighbours(features, features, 1, normalization="whiten")
