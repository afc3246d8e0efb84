import re

import numpy as np
import pytest

from gpfm.bench import ResultsError, critical_difference, leaderboard, list_tasks, write_report
from gpfm.bench.results import TaskResult, result_path

PAPER_MODELS = [
    "ResNet50",
    "CTransPath",
    "PLIP",
    "Phikon",
    "CONCH",
    "UNI",
    "CHIEF",
    "GigaPath",
    "GPFM",
]


def write_fake_results(out, models=PAPER_MODELS, seed=0, protocol="gpfm"):
    """results.json files for the paper's 72 tasks, model i better on average than i - 1."""
    rng = np.random.default_rng(seed)
    for spec in list_tasks():
        for strength, model in enumerate(models):
            result = TaskResult(
                task=spec.name,
                type=spec.type,
                panel=spec.panel,
                encoder=model,
                protocol=protocol,
                status="done",
                primary_metric=spec.metrics.primary,
                higher_is_better=True,
                spec=spec.to_dict(),
            )
            if spec.type in ("vqa", "report_generation"):
                result.status, result.reason = "not_available", "no language head yet"
            else:
                value = 0.6 + 0.03 * strength + rng.normal(0, 0.03)
                result.metrics = {
                    spec.metrics.primary: {
                        "mean": value,
                        "ci_low": value - 0.02,
                        "ci_high": value + 0.02,
                        "values": [value],
                    }
                }
            path = result_path(out, protocol, model, spec.name)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(result.to_json())
    return out


def test_the_leaderboard_is_computed_from_the_results_files(tmp_path):
    board = leaderboard(write_fake_results(tmp_path))
    assert board.models[0] == "GPFM" and len(board.scores) == 68
    assert set(board.not_available) == {"PathVQA", "WSI-VQA", "TCGA-Report", "PatchGastricADC22"}
    assert board.rows[0]["tasks"] == 68 and board.rows[0]["firsts"] > board.rows[1]["firsts"]
    assert sum(row["firsts"] for row in board.rows) == pytest.approx(68)
    text = str(board)
    assert text.startswith("leaderboard (gpfm protocol, 68 tasks)") and "GPFM" in text
    assert board.to_csv(tmp_path / "board.csv").splitlines()[0] == (
        "rank,model,mean_rank,firsts,mean_metric,tasks,missing"
    )
    assert board.to_markdown().count("\n") == 2 + 9
    assert board.friedman().n_tasks == 68
    assert board.critical_difference() == pytest.approx(critical_difference(9, 68))


def test_results_of_two_protocols_are_not_mixed(tmp_path):
    write_fake_results(tmp_path, models=["a", "b", "c"], protocol="gpfm")
    write_fake_results(tmp_path, models=["a", "b", "c"], protocol="ours")
    with pytest.raises(ResultsError, match="several protocols"):
        leaderboard(tmp_path)
    assert leaderboard(tmp_path, protocol="ours").protocol == "ours"


@pytest.mark.slow
def test_the_report_is_one_self_contained_page_and_markdown(tmp_path):
    results = write_fake_results(tmp_path / "results")
    page = write_report(results, tmp_path / "report")
    html = page.read_text()
    assert html.count('src="data:image/png;base64,') == 3
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", html)  # nothing from the network
    for heading in (
        "Leaderboard",
        "Critical-difference diagram",
        "Not available",
        "Resolved settings",
    ):
        assert heading in html
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "![Rank of each model on each task](figures/rank_heatmap.png)" in markdown
    assert (tmp_path / "report" / "figures" / "critical_difference.png").stat().st_size > 5000


@pytest.mark.slow
def test_the_report_of_the_synthetic_run(ours_results, tmp_path):
    page = write_report(ours_results, tmp_path)
    assert "synthetic-survival" in page.read_text() and (tmp_path / "report.md").exists()
