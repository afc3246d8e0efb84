import csv
import json
import shutil

import numpy as np
import pytest

from gpfm.bench import leaderboard, run_task
from gpfm.bench import protocols as protocols_module
from gpfm.bench import results as results_module
from gpfm.bench.splits import TestLabels

RUNNABLE = ["slide_classification", "survival", "roi_classification", "roi_retrieval"]


def _spec(synthetic, task_type):
    return next(s for s in synthetic.specs if s.type == task_type)


def _result(out, protocol, encoder, task):
    return json.loads((out / protocol / encoder / task / "results.json").read_text())


@pytest.mark.slow
def test_every_type_runs_end_to_end_and_the_better_encoder_ranks_higher(synthetic, ours_results):
    for spec in synthetic.specs:
        if spec.type in ("vqa", "report_generation"):
            continue  # test_language.py
        saved = {e: _result(ours_results, "ours", e, spec.name) for e in synthetic.encoders}
        good, poor = saved["good"], saved["poor"]
        assert good["protocol"] == "ours" and good["spec"]["name"] == spec.name
        assert good["versions"]["gpfm-heads"] and good["spec_hash"]
        assert good["status"] == "done" and good["runs"]
        primary = good["primary_metric"]
        assert good["metrics"][primary]["mean"] > poor["metrics"][primary]["mean"], spec.name
        assert len(good["metrics"][primary]["values"]) == len(good["runs"])
        if spec.type != "roi_retrieval":
            assert {p["id"] for p in good["predictions"]}  # test predictions kept
    board = leaderboard(ours_results)
    assert board.models[0] == "good" and board.models[-1] == "poor"
    assert not board.not_available


@pytest.mark.slow
def test_the_survival_task_runs_its_folds_grouped_by_patient(synthetic, ours_results):
    saved = _result(ours_results, "ours", "good", "synthetic-survival")
    assert [run["fold"] for run in saved["runs"]] == ["fold 0", "fold 1", "fold 2"]
    assert all(
        run["val_carved"] and len(run["selection"]["time_bins"]) == 3 for run in saved["runs"]
    )
    tested = [p["id"] for p in saved["predictions"]]
    assert sorted(tested) == sorted(set(tested))  # every patient tested once over the folds
    assert saved["metrics"]["c_index"]["ci_method"] == "t over folds/seeds"


@pytest.mark.slow
@pytest.mark.parametrize("task_type", RUNNABLE)
def test_the_papers_protocol_end_to_end(synthetic, tmp_path, task_type):
    spec = _spec(synthetic, task_type)
    root = synthetic.data_roots[spec.name]
    overrides = (
        {"head": {"options": {"epochs": 100}}} if task_type == "roi_classification" else None
    )
    good, poor = (
        run_task(spec, e, root, tmp_path, protocol="gpfm", overrides=overrides)
        for e in ("good", "poor")
    )
    assert good.protocol == "gpfm" and good.status == "done"
    assert good.primary > poor.primary
    run = good.runs[0]
    if task_type == "roi_classification":
        assert "epoch" in run["selection"]  # the paper's probe: the epoch chosen on validation
        assert "balanced_accuracy_bootstrap_std" in run["metrics"]
    if task_type == "roi_retrieval":
        assert "acc@1_bootstrap_std" in run["metrics"] and "mvacc@5" not in run["metrics"]
    assert (tmp_path / "gpfm" / "good" / spec.name / "results.json").exists()


def test_a_finished_result_is_reused_unless_asked(synthetic, tmp_path, monkeypatch):
    spec = _spec(synthetic, "roi_retrieval")
    root = synthetic.data_roots[spec.name]
    first = run_task(spec, "fair", root, tmp_path, protocol="ours")

    def fail(*args, **kwargs):
        raise AssertionError("recomputed")

    monkeypatch.setitem(results_module.RUNNERS, "roi_retrieval", fail)
    again = run_task(spec, "fair", root, tmp_path, protocol="ours")
    assert (
        again.created == first.created and again.metrics == json.loads(first.to_json())["metrics"]
    )
    with pytest.raises(AssertionError, match="recomputed"):
        run_task(spec, "fair", root, tmp_path, protocol="ours", force=True)
    with pytest.raises(AssertionError, match="recomputed"):  # a changed spec is recomputed
        run_task(
            spec, "fair", root, tmp_path, protocol="ours", overrides={"metrics": {"bootstrap": 5}}
        )


class _Spy:
    """Records the heads' fitting calls and the openings of sealed test labels, in order."""

    def __init__(self, monkeypatch):
        self.events, self.folds = [], []
        original = protocols_module.make_folds if hasattr(protocols_module, "make_folds") else None
        assert original is None  # folds come from run_task; capture them there
        make_folds = results_module.make_folds

        def capture(spec, cohort):
            self.folds = make_folds(spec, cohort)
            self.cohort = cohort
            return self.folds

        monkeypatch.setattr(results_module, "make_folds", capture)
        for name in (
            "train_mil",
            "fit_linear_probe",
            "fit_knn_probe",
            "predict",
            "retrieval_scores",
        ):
            monkeypatch.setattr(
                protocols_module, name, self._wrap(name, getattr(protocols_module, name))
            )
        monkeypatch.setattr(
            TestLabels, "on_open", [lambda where: self.events.append(("open", where))]
        )

    def _wrap(self, name, function):
        def spied(*args, **kwargs):
            self.events.append((name, args, kwargs))
            return function(*args, **kwargs)

        return spied


@pytest.mark.parametrize("task_type", RUNNABLE)
def test_selection_never_reads_test_labels(synthetic, tmp_path, monkeypatch, task_type):
    spec = _spec(synthetic, task_type)
    spy = _Spy(monkeypatch)
    overrides = {"head": {"train": {"epochs": 2}}} if task_type in RUNNABLE[:2] else None
    run_task(
        spec,
        "fair",
        synthetic.data_roots[spec.name],
        tmp_path,
        protocol="ours",
        overrides=overrides,
    )
    kinds = [event[0] for event in spy.events]
    assert kinds.count("open") == len(spy.folds) >= 1
    opens_before = np.cumsum([kind == "open" for kind in kinds]) - np.array(
        [k == "open" for k in kinds]
    )
    # retrieval chooses nothing: it scores right after the opening, within that fold
    fold_of_event = opens_before - np.array([k == "retrieval_scores" for k in kinds])
    for (kind, *call), fold_index in zip(spy.events, fold_of_event, strict=True):
        fold = spy.folds[fold_index]
        test_ids = {spy.cohort.ids[i] for i in fold.test}
        if kind == "train_mil":  # training and validation bags only, none of the test fold
            train, val, test = call[0][1], call[0][2], call[0][3]
            assert test is None and not (set(train.names) | set(val.names)) & test_ids
        elif kind == "predict":  # the test bags, without their targets
            assert set(call[0][1].names) == test_ids and call[0][1].target_names == []
        elif kind in ("fit_linear_probe", "fit_knn_probe"):
            assert len(call[0][1]) == len(fold.train) and len(call[0][3]) == len(fold.val)
        elif kind == "retrieval_scores":  # after the opening; the database has no test rows
            assert len(call[0][3]) == len(fold.train) + len(fold.val) and len(call[0][1]) == len(
                fold.test
            )
    # Within each fold, every fit and prediction comes before the opening of its test labels.
    for index in range(len(spy.folds)):
        events = [k for k, f in zip(kinds, fold_of_event, strict=True) if f == index]
        assert events[-1] == "open" or task_type == "roi_retrieval"
        if task_type == "roi_retrieval":
            assert events == ["open", "retrieval_scores"]


def _scrambled_copy(source, destination):
    shutil.copytree(source / "features", destination / "features", symlinks=True)
    with open(source / "labels.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    columns = [c for c in ("label", "time", "event") if c in rows[0]]
    test_rows = [row for row in rows if row["split"] == "test"]
    patients = sorted({row["patient_id"] for row in test_rows})
    values = [
        {c: next(r[c] for r in test_rows if r["patient_id"] == p) for c in columns}
        for p in patients
    ]
    # the first cyclic shift of the patients' values that changes at least one of them
    shift = next(k for k in range(1, len(values)) if values[k:] + values[:k] != values)
    new = dict(zip(patients, values[shift:] + values[:shift], strict=True))
    for row in test_rows:
        row.update(new[row["patient_id"]])
    with open(destination / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


@pytest.mark.parametrize("task_type", ["slide_classification", "survival", "roi_classification"])
def test_scrambled_test_labels_change_nothing_but_the_test_metrics(synthetic, tmp_path, task_type):
    spec = _spec(synthetic, task_type)
    root = synthetic.data_roots[spec.name]
    (tmp_path / "scrambled").mkdir()
    _scrambled_copy(root, tmp_path / "scrambled")
    overrides = {"split": {"kind": "official"}, "metrics": {"bootstrap": 0}}
    if task_type != "roi_classification":
        overrides["head"] = {"train": {"epochs": 3}}
    honest = run_task(spec, "fair", root, tmp_path / "a", protocol="ours", overrides=overrides)
    other = run_task(
        spec, "fair", tmp_path / "scrambled", tmp_path / "b", protocol="ours", overrides=overrides
    )
    assert honest.runs[0]["selection"] == other.runs[0]["selection"]
    output = "risk" if task_type == "survival" else "probabilities"
    assert [p[output] for p in honest.predictions] == [p[output] for p in other.predictions]
    truth = "time" if task_type == "survival" else "label"
    assert [p[truth] for p in honest.predictions] != [p[truth] for p in other.predictions]


def test_runs_of_different_mixed_precision_follow_each_other_in_one_process(synthetic, tmp_path):
    # On a GPU the protocols differ (ours: bf16 autocast; gpfm: full precision); Accelerate
    # keeps one precision per process, so the bench resets it between such runs.
    spec = _spec(synthetic, "slide_classification")
    root = synthetic.data_roots[spec.name]
    for index, precision in enumerate(("bf16", "no")):
        overrides = {"head": {"train": {"epochs": 1, "mixed_precision": precision}}}
        result = run_task(
            spec, "fair", root, tmp_path / str(index), protocol="ours", overrides=overrides
        )
        assert result.status == "done"
