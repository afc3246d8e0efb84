"""gpfm-slide under hostile input: damaged files in subprocesses with limits, killed runs.

The fuzz cases are made by hostile_files.py and run by fuzz_worker.py (each case in a forked
child with an address-space and time limit); the kill test SIGKILLs ``gpfm-slide tile`` at
chosen points (after a temporary file is made, before it is renamed) and re-runs it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpfm.slide import make_synthetic_slide, open_slide
from gpfm.slide.errors import SlideError
from gpfm.slide.storage import atomic_path

HERE = Path(__file__).parent
SHARDS = 2


@pytest.fixture(scope="module")
def base_slide(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small two-level JPEG pyramid (2304 x 1024 px, 36 native tiles at level 0)."""
    path = tmp_path_factory.mktemp("base") / "base.tiff"
    return make_synthetic_slide(path, 2304, 1024, mpp=0.5, seed=3).path


def test_every_damaged_file_gives_a_typed_error_or_the_same_tiles_both_ways(base_slide, tmp_path):
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                str(HERE / "fuzz_worker.py"),
                str(base_slide),
                str(tmp_path),
                str(i),
                str(SHARDS),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        for i in range(SHARDS)
    ]
    results = []
    for worker in workers:
        out, _ = worker.communicate(timeout=300)
        assert worker.returncode == 0
        results += [json.loads(line) for line in out.splitlines()]
    assert len(results) >= 70
    failures = []
    for result in results:
        errors = [v for v in result.values() if isinstance(v, dict) and "error" in v]
        errors += (
            [result["tiles"]["fast_error"]] if result.get("tiles", {}).get("fast_error") else []
        )
        if (
            "crash" in result
            or result.get("tiles", {}).get("agree") is False
            or any(not e["names_file"] or not e["error"].endswith("Error") for e in errors)
        ):
            failures.append(result)
    assert not failures, json.dumps(failures, indent=1)[:4000]


def _hostile_files():
    spec = importlib.util.spec_from_file_location("hostile_files", HERE / "hostile_files.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").exists(), reason="needs /proc")
def test_open_slide_leaves_no_file_open_on_any_error(base_slide, tmp_path):
    cases = _hostile_files().make_cases(base_slide, tmp_path)
    before = _open_files()
    for make in cases.values():
        path = make()
        for options in ({}, {"mpp": 0.5}, {"mpp": 0.5, "backend": "tifffile"}):
            try:
                with open_slide(path, **options):
                    pass
            except (SlideError, ValueError):
                pass
    assert _open_files() == before


def test_unparsable_aperio_mpp_is_missing_resolution_with_a_warning(base_slide, tmp_path, caplog):
    from gpfm.slide import MissingResolutionError

    path = _hostile_files().make_cases(base_slide, tmp_path)["aperio-mpp--nan"]()
    for backend in ("openslide", "tifffile"):
        with pytest.raises(MissingResolutionError, match="aperio-mpp--nan"):
            open_slide(path, backend=backend)
        with open_slide(path, mpp=0.25, backend=backend) as slide:
            assert slide.mpp == 0.25
    assert "'-nan'" in caplog.text and "aperio-mpp--nan" in caplog.text


def test_a_header_claiming_1e6_px_in_a_few_kb_is_refused_at_open(base_slide, tmp_path):
    from gpfm.slide import UnsupportedSlideError

    path = _hostile_files().make_cases(base_slide, tmp_path)["lying-1e6-px-tiles-65520"]()
    assert path.stat().st_size < 4096
    with pytest.raises(UnsupportedSlideError, match=r"lying-1e6.*1000000 x 1000000 px"):
        open_slide(path, mpp=0.5)


def test_low_resolution_reads_go_in_bounded_blocks(base_slide, monkeypatch):
    from gpfm.slide import slide as slide_module

    monkeypatch.setattr(slide_module, "READ_BLOCK", 300)
    with open_slide(base_slide) as slide:
        sizes = []
        read = slide.reader.read_region

        def spy(location, level, size):
            sizes.append(size)
            return read(location, level, size)

        slide.reader.read_region = spy  # type: ignore[method-assign]
        blocked = slide.read_downsampled(3.0)
        monkeypatch.setattr(slide_module, "READ_BLOCK", 4096)
        whole = slide.read_downsampled(3.0)
    assert max(max(size) for size in sizes[: len(sizes) // 2]) <= 300
    assert blocked.shape == whole.shape == (342, 768, 3)
    assert abs(blocked.astype(int) - whole.astype(int)).mean() < 1.0


def _temporary(folder: Path, target: str, pid: int) -> Path:
    from gpfm.slide.storage import _host_tag

    path = folder / f".{target}.{_host_tag()}-{pid}.abc_1234.tmp"
    path.write_text("half")
    return path


def test_a_write_removes_temporaries_of_killed_writers_but_not_of_live_ones(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        stale = _temporary(tmp_path, "x.h5", dead.pid)
        other_stale = _temporary(tmp_path, "y.png", dead.pid)
        running = _temporary(tmp_path, "x.h5", live.pid)
        mine = _temporary(tmp_path, "x.h5", os.getpid())
        with atomic_path(tmp_path / "x.h5") as temporary:
            temporary.write_text("done")
        assert (tmp_path / "x.h5").read_text() == "done"
        assert not stale.exists() and not other_stale.exists()
        assert running.exists() and mine.exists()
    finally:
        live.kill()
        live.wait()


# Runs gpfm-slide tile, SIGKILLing itself at the N-th call of a hooked function: ``mkstemp``
# (a temporary exists, nothing written yet) or ``replace`` (written, not yet renamed).
_KILLED_RUN = """
import os, signal, sys, tempfile
hook, n = sys.argv[1], int(sys.argv[2])
module = tempfile if hook == "mkstemp" else os
original = getattr(module, hook)
calls = []
def killing(*args, **kwargs):
    calls.append(1)
    if len(calls) == n:
        if hook == "mkstemp":
            original(*args, **kwargs)
        os.kill(os.getpid(), signal.SIGKILL)
    return original(*args, **kwargs)
setattr(module, hook, killing)
from gpfm.slide.cli import main
sys.exit(main(sys.argv[3:]))
"""


def _run(args: list[str], kill: tuple[str, int] | None = None) -> int:
    command = [sys.executable, "-m", "gpfm.slide", *args]
    if kill:
        command = [sys.executable, "-c", _KILLED_RUN, kill[0], str(kill[1]), *args]
    return subprocess.run(command, capture_output=True, timeout=120, check=False).returncode


def _outputs(out: Path) -> dict[str, bytes]:
    files = {}
    for path in sorted(out.rglob("*")):
        if path.is_file() and path.name != "manifest.jsonl":
            files[str(path.relative_to(out))] = path.read_bytes()
    from gpfm.slide.cli import read_manifest

    latest = read_manifest(out / "manifest.jsonl")
    files["statuses"] = json.dumps({k: v["status"] for k, v in sorted(latest.items())}).encode()
    return files


@pytest.mark.slow
def test_tile_killed_at_any_point_then_rerun_equals_an_uninterrupted_run(base_slide, tmp_path):
    folder = tmp_path / "slides"
    folder.mkdir()
    shutil.copy(base_slide, folder / "a.tiff")
    make_synthetic_slide(folder / "b.tiff", 1800, 1200, mpp=0.5, seed=4)
    cases = _hostile_files().make_cases(base_slide, tmp_path / "bad")
    (tmp_path / "bad").mkdir()
    for name in ("random.svs", "flipped-tile-bytes-2", "lying-1e6-px-tiles-65520"):
        shutil.copy(cases[name](), folder / cases[name]().name)
    slides = sorted(str(p) for p in folder.iterdir())
    settings = ["--mpp", "1.0", "--patch-size", "128"]
    reference = tmp_path / "reference"
    assert _run(["tile", *slides, "--out", str(reference), *settings]) == 1  # bad slides fail
    expected = _outputs(reference)
    assert "coords/a.h5" in expected and "qc/b.png" in expected
    # 7 writes per run: tile_config.json, then coords, tissue and qc of each good slide.
    kills = [("mkstemp", 1), ("mkstemp", 3), ("mkstemp", 6), ("replace", 2), ("replace", 4)]
    kills += [("replace", 7)]
    for hook, call in kills:
        out = tmp_path / f"{hook}-{call}"
        assert _run(["tile", *slides, "--out", str(out), *settings], kill=(hook, call)) == -9
        assert list(out.rglob("*.tmp")), "the kill left no temporary: it missed the writes"
        _run(["tile", *slides, "--out", str(out), *settings])
        assert not list(out.rglob("*.tmp")), (hook, call)
        assert _outputs(out) == expected, (hook, call)
