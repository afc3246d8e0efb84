import csv

import pytest

from gpfm.bench import LabelFileError, check_task
from gpfm.bench.data import read_cohort
from gpfm.bench.spec import parse_spec

SLIDES = parse_spec(
    {
        "name": "t",
        "type": "slide_classification",
        "label": {"classes": ["a", "b"]},
        "split": {"kind": "ratio"},
    }
)
SURVIVAL = parse_spec({"name": "s", "type": "survival"})


def _labels(folder, rows):
    with open(folder / "labels.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return folder


def test_a_missing_column_is_named_with_the_file(tmp_path):
    _labels(tmp_path, [{"slide_id": "s1", "label": "a"}])
    with pytest.raises(LabelFileError, match=r"labels.csv: missing column\(s\) \['patient_id'\]"):
        read_cohort(SLIDES, tmp_path)


def test_a_label_outside_the_classes_names_the_line_and_what_to_do(tmp_path):
    rows = [{"slide_id": f"s{i}", "patient_id": f"p{i}", "label": "ab"[i % 2]} for i in range(4)]
    rows[2]["label"] = "c"
    _labels(tmp_path, rows)
    with pytest.raises(LabelFileError, match=r"line 4: `label` is 'c', not one of .*'a', 'b'"):
        read_cohort(SLIDES, tmp_path)


def test_survival_values_are_checked_and_patients_grouped(tmp_path):
    rows = [
        {"slide_id": "s1", "patient_id": "p1", "time": "10", "event": "1"},
        {"slide_id": "s2", "patient_id": "p1", "time": "10", "event": "1"},
        {"slide_id": "s3", "patient_id": "p2", "time": "5.5", "event": "0"},
    ]
    cohort = read_cohort(SURVIVAL, _labels(tmp_path, rows))
    assert cohort.ids == ["p1", "p2"] and cohort.members == [["s1", "s2"], ["s3"]]
    assert cohort.targets["time"].tolist() == [10.0, 5.5]
    rows[2]["event"] = "yes"
    with pytest.raises(LabelFileError, match=r"line 4: `event` is 'yes'; use 1"):
        read_cohort(SURVIVAL, _labels(tmp_path, rows))
    rows[2]["event"], rows[1]["time"] = "0", "11"
    with pytest.raises(LabelFileError, match="patient 'p1' has different `time`"):
        read_cohort(SURVIVAL, _labels(tmp_path, rows))


def test_check_task_says_what_is_missing_in_words(tmp_path, synthetic):
    assert check_task(SLIDES, tmp_path / "nowhere")[0].startswith("data root")
    assert "labels file not found" in check_task(SLIDES, tmp_path)[0]
    spec = synthetic.specs[0]
    root = synthetic.data_roots[spec.name]
    assert check_task(spec, root) == []
    problems = check_task(spec, root, encoder="absent")
    assert "30 of 30 slides have no feature file" in problems[0]
    roi = synthetic.specs[2]
    assert "ROI feature file not found" in check_task(roi, synthetic.data_roots[roi.name], "x")[0]
