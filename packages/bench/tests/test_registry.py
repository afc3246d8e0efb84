import csv
import importlib.util
from collections import Counter
from pathlib import Path

import pytest

from gpfm.bench import SpecError, get_task, list_tasks, load_task
from gpfm.bench.registry import ENV_VAR, shipped_task_files
from gpfm.bench.spec import parse_spec, spec_to_toml

REPO = Path(__file__).resolve().parents[3]
TASK_LIST = REPO.parent / "shared" / "data" / "gpfm_tasks.csv"
SCRIPT = REPO / "packages" / "bench" / "scripts" / "make_paper_specs.py"


def test_the_72_paper_tasks_load_and_validate():
    tasks = list_tasks()
    assert len(tasks) == 72 and len({t.name for t in tasks}) == 72
    assert Counter(t.type for t in tasks) == {
        "slide_classification": 40,
        "survival": 14,
        "roi_classification": 13,
        "roi_retrieval": 1,
        "vqa": 2,
        "report_generation": 2,
    }
    for task in tasks:
        assert task.dataset.source and task.metrics.primary in task.metrics.names
    survival = get_task("tcga-brca")  # case does not matter
    assert survival.split.kind == "kfold" and survival.split.folds == 5
    assert survival.metrics.primary == "c_index" and survival.label.unit == "patient"
    assert get_task("TCGA-NSCLC").label.classes == ("LUAD", "LUSC")
    assert [t.name for t in list_tasks("roi_retrieval")] == ["CRC Tissue Retrieval"]


@pytest.mark.skipif(not TASK_LIST.exists(), reason="../shared/data/gpfm_tasks.csv not present")
def test_the_shipped_specs_are_what_the_script_makes_from_the_task_list(tmp_path):
    with open(TASK_LIST, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [t.name for t in list_tasks()] == [row["name"] for row in rows]
    assert [(t.type, t.panel) for t in list_tasks()] == [(r["type"], r["panel"]) for r in rows]
    module_spec = importlib.util.spec_from_file_location("make_paper_specs", SCRIPT)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    for index, row in enumerate(rows, start=1):
        made = parse_spec(module.spec_for(row)).to_dict()
        shipped = shipped_task_files()[index - 1]
        assert shipped.name == module.file_name(index, row["name"])
        assert spec_to_toml(made) == shipped.read_text(), shipped.name


def test_a_user_adds_a_task_with_a_spec_file_in_their_folder(tmp_path, monkeypatch):
    (tmp_path / "mine.toml").write_text(
        'name = "my-task"\ntype = "roi_classification"\n[label]\nclasses = ["a", "b"]\n'
    )
    tasks = list_tasks(folders=[tmp_path])
    assert len(tasks) == 73 and tasks[-1].name == "my-task"
    assert tasks[-1].head.name == "linear" and tasks[-1].metrics.primary == "balanced_accuracy"
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert get_task("my-task").path == tmp_path / "mine.toml"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('name = "x"\ntype = "slide_clasification"\n', "`type` must be one of"),
        (
            'name = "x"\ntype = "survival"\n[split]\nfold = 5\n',
            "unknown field `split.fold`; did you mean `split.folds`",
        ),
        (
            'name = "x"\ntype = "survival"\n[metrics]\nnames = ["auc"]\n',
            "`metrics.names` has ['auc']",
        ),
        (
            'name = "x"\ntype = "survival"\n[head]\ntrain = {epoch = 3}\n',
            "`head.train.epoch`; did you mean `head.train.epochs`",
        ),
        (
            'name = "x"\ntype = "survival"\n[split]\nratios = [0.5, 0.5, 0.5]\n',
            "`split.ratios` must be",
        ),
        ('type = "survival"\n', "`name` is required"),
        ('name = "x"\ntype = survival\n', "not valid TOML"),
    ],
)
def test_invalid_spec_files_name_the_file_and_field(tmp_path, text, message):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SpecError) as error:
        load_task(path)
    assert str(path) in str(error.value) and message in str(error.value)


def test_unknown_task_names_the_closest_ones():
    with pytest.raises(SpecError, match=r"closest.*TCGA-NSCLC"):
        get_task("TCGA-NSCL")


def test_overrides_are_checked_like_a_spec_file():
    spec = get_task("TCGA-BRCA").with_overrides({"head": {"train": {"epochs": 3}}})
    assert spec.head.train == {"epochs": 3} and spec.split.folds == 5
    with pytest.raises(SpecError, match=r"head\.train\.epoch"):
        spec.with_overrides({"head": {"train": {"epoch": 3}}})
