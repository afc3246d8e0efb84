import math

import numpy as np
import pytest
from scipy import stats as sps

from gpfm.bench import critical_difference, friedman, rank_models, wilcoxon_holm
from gpfm.bench.errors import ResultsError
from gpfm.bench.stats import holm, mean_ci


def test_ranks_average_over_tasks_and_first_places_count():
    scores = {"t1": {"a": 0.9, "b": 0.8, "c": 0.7}, "t2": {"a": 0.6, "b": 0.9, "c": 0.5}}
    ranked = rank_models(scores)
    assert list(ranked) == ["a", "b", "c"]  # a and b tie on mean rank 1.5; a listed first
    assert ranked["a"]["mean_rank"] == 1.5 and ranked["b"]["mean_rank"] == 1.5
    assert ranked["c"]["mean_rank"] == 3.0
    assert ranked["a"]["firsts"] == 1 and ranked["b"]["firsts"] == 1 and ranked["c"]["firsts"] == 0
    assert ranked["a"]["mean_metric"] == pytest.approx(0.75)
    assert ranked["c"]["tasks"] == 2 and ranked["c"]["missing"] == []


def test_ties_share_the_mean_rank_and_split_first_place():
    ranked = rank_models({"t": {"a": 0.9, "b": 0.9, "c": 0.9, "d": 0.1}})
    assert [ranked[m]["mean_rank"] for m in "abcd"] == [2.0, 2.0, 2.0, 4.0]
    assert [ranked[m]["firsts"] for m in "abcd"] == pytest.approx([1 / 3, 1 / 3, 1 / 3, 0])


def test_a_model_missing_a_task_is_ranked_on_the_tasks_it_has_and_says_so(caplog):
    scores = {
        "t1": {"a": 0.9, "b": 0.8, "c": 0.7},
        "t2": {"a": 0.9, "b": 0.8},  # c missing
        "t3": {"a": 0.9, "b": 0.8, "c": float("nan")},  # a NaN counts as missing
    }
    ranked = rank_models(scores)
    assert ranked["c"]["tasks"] == 1 and ranked["c"]["missing"] == ["t2", "t3"]
    assert ranked["c"]["mean_rank"] == 3.0 and ranked["b"]["mean_rank"] == 2.0
    assert "c lacks 2 task(s)" in caplog.text


def test_lower_is_better_reverses_the_ranks():
    ranked = rank_models({"t": {"a": 1.0, "b": 2.0}}, higher_is_better=False)
    assert ranked["a"]["mean_rank"] == 1.0 and ranked["a"]["firsts"] == 1


def test_friedman_equals_scipy_with_ties():
    rng = np.random.default_rng(0)
    table = rng.integers(0, 4, size=(12, 4)) / 4  # many ties
    scores = {
        f"t{i}": {f"m{j}": float(v) for j, v in enumerate(row)} for i, row in enumerate(table)
    }
    ours = friedman(scores)
    theirs = sps.friedmanchisquare(*table.T)
    assert ours.statistic == pytest.approx(theirs.statistic, rel=1e-12)
    assert ours.p_value == pytest.approx(theirs.pvalue, rel=1e-12)
    assert ours.n_models == 4 and ours.n_tasks == 12


def test_friedman_uses_only_tasks_every_model_has_and_refuses_too_few():
    scores = {"t1": {"a": 1, "b": 2, "c": 3}, "t2": {"a": 3, "b": 2, "c": 1}, "t3": {"a": 1}}
    assert friedman(scores).tasks == ("t1", "t2")
    with pytest.raises(ResultsError, match="3 or more models"):
        friedman({"t1": {"a": 1, "b": 2}, "t2": {"a": 1, "b": 2}})


def test_critical_difference_of_the_paper_setting_and_by_hand():
    assert round(critical_difference(9, 72), 2) == 1.42
    # Demšar (2006), table 5: q_0.05 = 2.343 for k = 3 (studentized range / sqrt 2)
    assert critical_difference(3, 10) == pytest.approx(2.343 * math.sqrt(3 * 4 / 60), abs=1e-3)
    with pytest.raises(ResultsError):
        critical_difference(1, 10)


def test_holm_by_hand():
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])


def test_wilcoxon_equals_scipy_on_task_level_scores_and_is_holm_corrected():
    rng = np.random.default_rng(1)
    base = rng.random(10)
    scores = {
        f"t{i}": {"a": base[i] + 0.05, "b": base[i] + rng.normal(0, 0.02), "c": base[i]}
        for i in range(10)
    }
    tests = {(t.model_a, t.model_b): t for t in wilcoxon_holm(scores)}
    a = np.array([scores[t]["a"] for t in scores])
    c = np.array([scores[t]["c"] for t in scores])
    assert tests[("a", "c")].p_value == pytest.approx(sps.wilcoxon(a, c).pvalue)
    raw = [t.p_value for t in tests.values()]
    assert [t.p_holm for t in tests.values()] == pytest.approx(holm(raw))
    assert tests[("a", "c")].significant and tests[("a", "c")].median_difference > 0


def test_mean_ci_is_the_student_t_interval():
    mean, low, high = mean_ci([0.7, 0.8, 0.9])
    half = sps.t.ppf(0.975, 2) * sps.sem([0.7, 0.8, 0.9])
    assert (mean, low, high) == pytest.approx((0.8, 0.8 - half, 0.8 + half))
    assert math.isnan(mean_ci([0.5])[1])
