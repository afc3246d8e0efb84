from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pyarrow")

from gpfm.apps.curate import CurateError, CurateSettings, curate
from gpfm.apps.curate import run as run_module
from gpfm.apps.curate.__main__ import main
from gpfm.slide import make_synthetic_slide
from gpfm.slide.store import PatchStore, read_table

REPO = Path(__file__).resolve().parents[3]
SHARED_SLIDES = REPO.parent / "shared" / "data" / "slides"


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> Path:
    """Three small synthetic 'lung' slides of cohort A and one 'kidney' slide of cohort B."""
    folder = tmp_path_factory.mktemp("slides")
    rows = []
    for number, (cohort, kind) in enumerate([("A", "lung")] * 3 + [("B", "kidney")]):
        path = folder / f"s{number}.tiff"
        make_synthetic_slide(path, 1536, 1024, mpp=0.5, seed=number, tissue_fraction=0.5)
        rows.append({"slide_path": path.name, "cohort": cohort, "tissue_type": kind})
    write_csv(folder / "slides.csv", rows)
    return folder / "slides.csv"


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, ["slide_path", "cohort", "tissue_type"])
        writer.writeheader()
        writer.writerows(rows)
    return path


SETTINGS = CurateSettings(
    patches_per_slide=4, patch_size=128, balance_by=("tissue_type",), rows_per_shard=6
)


def shard_tables(store: Path) -> list[dict[str, list[object]]]:
    patches = PatchStore(store)
    return [read_table(patches.shard_path(k)).to_pydict() for k in range(len(patches.shards))]


def shard_files(store: Path) -> list[str]:
    return [shard.file for shard in PatchStore(store).shards]


def test_the_store_meets_the_mix_and_loads_with_datasets(slides, tmp_path):
    datasets = pytest.importorskip("datasets")
    store = tmp_path / "store"
    summary = curate(slides, store, SETTINGS, arrow=True)
    assert summary.complete and summary.count("done") == 4
    stats = json.loads((store / "stats.json").read_text())
    # 16 patches in all, half kidney (one slide gives 8), half lung (4 + 2 + 2 from three).
    assert stats["by_tissue_type"] == {"kidney": 8, "lung": 8}
    assert stats["mix"] == {
        "lung": {"target": 8, "patches": 8, "shortfall": 0},
        "kidney": {"target": 8, "patches": 8, "shortfall": 0},
    }
    assert stats["by_cohort"] == {"A": 8, "B": 8}
    card = (store / "README.md").read_text()
    assert "path: data/*.parquet" in card and "| kidney | 8 | 50.0% |" in card
    assert (store / "mosaic.png").stat().st_size > 0 and not (store / "parts").exists()
    loaded = datasets.load_dataset(
        "parquet",
        data_files=str(store / "data" / "*.parquet"),
        split="train",
        cache_dir=str(tmp_path / "cache"),
    )
    assert len(loaded) == 16 and loaded[0]["image"].size == (128, 128)
    assert set(loaded["tissue_type"]) == {"lung", "kidney"} and loaded[0]["mpp"] == 0.5
    again = datasets.load_from_disk(str(store))
    assert len(again) == 16 and again[3]["phash"] == loaded[3]["phash"]
    # each kept patch passed the thresholds
    assert min(loaded["tissue_fraction"]) >= SETTINGS.quality.min_tissue
    assert min(loaded["sharpness"]) >= SETTINGS.quality.min_sharpness
    # the same slide never gives the same tile twice
    keys = list(zip(loaded["slide_id"], loaded["x"], loaded["y"], strict=True))
    assert len(set(keys)) == 16


def test_a_killed_run_resumed_gives_the_same_store(slides, tmp_path, monkeypatch):
    straight = tmp_path / "a" / "store"  # the card names the store's folder
    curate(slides, straight, SETTINGS, workers=2)
    original = run_module.curate_slide
    calls = {"n": 0}

    def killed_on_the_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # as a kill between two slides
        return original(*args, **kwargs)

    monkeypatch.setattr(run_module, "curate_slide", killed_on_the_third)
    resumed = tmp_path / "b" / "store"
    with pytest.raises(KeyboardInterrupt):
        curate(slides, resumed, SETTINGS)
    assert not (resumed / "store.json").exists()
    monkeypatch.setattr(run_module, "curate_slide", original)
    summary = curate(slides, resumed, SETTINGS)
    assert summary.count("skipped") == 2 and summary.count("done") == 2 and summary.complete
    assert shard_tables(resumed) == shard_tables(straight)
    for name in ("store.json", "README.md", "stats.json", "mosaic.png", *shard_files(straight)):
        assert (resumed / name).read_bytes() == (straight / name).read_bytes(), name
    with pytest.raises(CurateError, match="other settings"):
        curate(slides, resumed, CurateSettings(patches_per_slide=5, patch_size=128))


def test_bad_slides_are_recorded_and_skipped(slides, tmp_path, capsys):
    if not (SHARED_SLIDES / "README.md").exists():
        pytest.skip("sample slides not found at ../shared/data/slides")
    table = write_csv(
        tmp_path / "slides.csv",
        [
            {"slide_path": str(SHARED_SLIDES / "CMU-1-Small-Region.svs"), "cohort": "CMU",
             "tissue_type": "skin"},
            {"slide_path": str(SHARED_SLIDES / "broken.svs"), "cohort": "CMU",
             "tissue_type": "skin"},
            {"slide_path": str(SHARED_SLIDES / "unreadable.svs"), "cohort": "CMU",
             "tissue_type": "skin"},
            {"slide_path": str(slides.parent / "s3.tiff"), "cohort": "B", "tissue_type": "kidney"},
        ],
    )  # fmt: skip
    store = tmp_path / "store"
    args = [str(table), "--out", str(store), "--patches-per-slide", "3", "--patch-size", "128",
            "--no-progress"]  # fmt: skip
    assert main(args) == 1
    assert "2 failed" in capsys.readouterr().err
    records = [json.loads(line) for line in (store / "manifest.jsonl").read_text().splitlines()]
    failed = {r["slide_id"]: r["error"] for r in records if r["status"] == "failed"}
    assert set(failed) == {"broken", "unreadable"}
    stats = json.loads((store / "stats.json").read_text())
    assert stats["by_tissue_type"] == {"kidney": 3, "skin": 3}
    assert (
        len(stats["failed_slides"]) == 2 and "## Failed slides" in (store / "README.md").read_text()
    )
    assert main(args) == 0  # a second run skips every slide, the failed ones too
    assert "4 skipped" in capsys.readouterr().err


def test_settings_are_checked():
    with pytest.raises(ValueError, match="exactly one"):
        CurateSettings(patches_per_slide=1, mpp=0.5, level=0)
    with pytest.raises(ValueError, match="balance_by"):
        CurateSettings(patches_per_slide=1, balance_by=("organ",))
    assert np.isclose(CurateSettings(patches_per_slide=1).mpp or 0, 0.5)


def test_a_pyramid_level_is_read_as_it_is(slides, tmp_path):
    settings = CurateSettings(patches_per_slide=2, mpp=None, level=0, patch_size=64)
    assert curate(slides, tmp_path / "store", settings).complete
    table = read_table(PatchStore(tmp_path / "store").shard_path(0)).to_pydict()
    assert set(table["mpp"]) == {0.5} and set(table["level"]) == {0} and len(table["mpp"]) == 8
    beyond = CurateSettings(patches_per_slide=2, mpp=None, level=3, patch_size=64)
    summary = curate(slides, tmp_path / "beyond", beyond)
    assert summary.count("failed") == 4
    assert "level 3 does not exist" in summary.records[0]["error"]
