import json
import shutil

import h5py
import pytest

from gpfm.slide.cli import main, read_manifest, slide_id


def _records(out):
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def test_info_prints_geometry_and_resolution(shared_slides, capsys):
    assert main(["info", str(shared_slides / "CMU-1-Small-Region.svs")]) == 0
    printed = capsys.readouterr().out
    assert "2220 x 2967 px" in printed and "0.499 µm/px" in printed


def test_info_json_and_failure_exit_status(shared_slides, capsys):
    status = main(
        ["info", "--json", str(shared_slides / "small.svs"), str(shared_slides / "broken.svs")]
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert status == 1
    assert lines[0]["dimensions"] == [16, 16]
    assert "broken.svs" in lines[1]["error"]


def test_tile_writes_outputs_records_failures_and_resumes(tmp_path, synthetic, shared_slides):
    good = tmp_path / "slides" / "good.tiff"
    good.parent.mkdir()
    shutil.copy(synthetic.path, good)
    broken = shared_slides / "broken.svs"
    no_mpp = shared_slides / "kidney-48-5.tif"
    out = tmp_path / "out"
    args = ["tile", str(good), str(broken), str(no_mpp), "--out", str(out), "--mpp", "1.0"]

    assert main(args) == 1  # two slides failed, the good one is done
    records = {r["slide_id"]: r for r in _records(out)}
    assert records["good"]["status"] == "done"
    assert records["good"]["num_tiles"] > 0
    assert records["broken"]["status"] == "failed"
    assert "UnsupportedSlideError" in records["broken"]["error"]
    assert "--slide-mpp" in records["kidney-48-5"]["error"]
    for kind, suffix in (("coords", "h5"), ("tissue", "geojson"), ("qc", "png")):
        assert (out / kind / f"good.{suffix}").exists()
    assert not list(out.rglob("*.tmp"))
    with h5py.File(out / "coords" / "good.h5") as h5:
        assert h5["coords"].shape == (records["good"]["num_tiles"], 2)
    geojson = json.loads((out / "tissue" / "good.geojson").read_text())
    assert geojson["features"]
    assert json.loads((out / "tile_config.json").read_text())["mpp"] == 1.0

    assert main(args) == 1  # the failed slides are retried and fail again
    latest = _records(out)[-3:]
    assert [r["status"] for r in latest] == ["skipped", "failed", "failed"]
    assert read_manifest(out / "manifest.jsonl")["good"]["status"] == "done"

    changed = [*args, "--patch-size", "128"]
    assert main(changed) == 1
    assert _records(out)[-3]["status"] == "done"  # new settings: tiled again


def test_slide_mpp_supplies_a_missing_resolution(tmp_path, shared_slides):
    out = tmp_path / "out"
    path = str(shared_slides / "kidney-48-5.tif")
    assert main(["tile", path, "--out", str(out), "--slide-mpp", "0.25", "--min-tissue", "0"]) == 0
    with h5py.File(out / "coords" / "kidney-48-5.h5") as h5:
        assert h5["coords"].attrs["slide_mpp"] == 0.25


def test_duplicate_slide_ids_are_refused(tmp_path, synthetic):
    other = tmp_path / "b"
    other.mkdir()
    shutil.copy(synthetic.path, other / synthetic.path.name)
    status = main(
        [
            "tile",
            str(synthetic.path),
            str(other / synthetic.path.name),
            "--out",
            str(tmp_path / "o"),
        ]
    )
    assert status == 2


def test_a_torn_manifest_line_is_ignored(tmp_path):
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text('{"slide_id": "a", "status": "done"}\n{"slide_id": "b", "sta')
    assert list(read_manifest(manifest)) == ["a"]


@pytest.mark.parametrize(
    ("name", "expected"),
    [("a/b/slide.svs", "slide"), ("x.ome.tiff", "x"), ("y.OME.TIF", "y"), ("z.tiff", "z")],
)
def test_slide_id_drops_format_suffixes(name, expected):
    from pathlib import Path

    assert slide_id(Path(name)) == expected


def test_module_runs_as_a_program(shared_slides):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "gpfm.slide", "info", str(shared_slides / "small.svs")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "16 x 16 px" in done.stdout


def test_tile_says_what_it_did_shows_defaults_and_draws_a_legend(tmp_path, synthetic, capsys):
    import numpy as np
    from PIL import Image

    out = tmp_path / "out"
    assert main(["tile", str(synthetic.path), "--out", str(out), "--mpp", "1.0"]) == 0
    record = _records(out)[0]
    printed = capsys.readouterr().out
    assert f"{record['slide_id']}: {record['num_tiles']} tiles, " in printed
    assert "% tissue" in printed
    qc = np.asarray(Image.open(out / record["outputs"]["qc"]).convert("RGB"))
    assert (qc[3, 3] == 255).all()  # the legend's white box in the top-left corner
    with pytest.raises(SystemExit):
        main(["tile", "--help"])
    assert "(default: 0.5)" in capsys.readouterr().out
