"""Every code block of the README and of every docs page runs as written.

Python blocks of a page run in order in one namespace; bash blocks run with ``bash -e`` and the
installed command-line tools. Both run in a fresh folder holding a real slide as ``my-slide.svs``
and ``slides/*.svs`` (../shared/data/slides/CMU-1-Small-Region.svs), the names the pages use.
A block that cannot run here (installing, 16 GPUs) is preceded by
``<!-- docs-test: skip — reason -->``; a skip without a reason is an error. backbone.md and
heads.md are run in full by their packages' own tests (they run when a package is installed
alone), so they are not run twice here.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
RUN_BY_THEIR_PACKAGE = {"backbone.md", "heads.md"}
SAMPLE = ROOT.parent / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"
FENCE = re.compile(
    r"(<!-- docs-test: skip(?P<reason>[^>]*)-->\n)?```(?P<lang>python|bash)\n(?P<code>.*?)```", re.S
)


def blocks(page: Path) -> list[tuple[str, str, str | None]]:
    """(language, code, skip reason or None) of each python and bash block, in order."""
    found = []
    for match in FENCE.finditer(page.read_text()):
        reason = match.group("reason")
        if match.group(1) is not None:
            reason = (reason or "").strip(" —-")
            assert reason, f"{page.name}: a skipped block must say why"
        found.append((match.group("lang"), match.group("code"), reason))
    return found


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    if not SAMPLE.exists():
        pytest.skip("the sample slides (../shared/data/slides) are not here")
    (tmp_path / "slides").mkdir()
    shutil.copy(SAMPLE, tmp_path / "slides" / SAMPLE.name)
    shutil.copy(SAMPLE, tmp_path / "my-slide.svs")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _run_bash(code: str, page: Path, cwd: Path) -> None:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["HF_HUB_OFFLINE"] = "1"
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", code],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, (
        f"{page.name}:\n{code}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    "page", [p for p in PAGES if p.name not in RUN_BY_THEIR_PACKAGE], ids=lambda p: p.name
)
def test_every_block_of_the_page_runs(page, workdir):
    namespace: dict[str, object] = {"__name__": "__docs__"}
    for language, code, skipped in blocks(page):
        if skipped is not None:
            continue
        if language == "python":
            exec(compile(code, str(page), "exec"), namespace)
        else:
            _run_bash(code, page, workdir)


def test_the_pages_run_elsewhere_have_their_own_tests():
    for name in RUN_BY_THEIR_PACKAGE:
        package = name.removesuffix(".md")
        tests = ROOT / "packages" / package / "tests"
        assert any("docs" in path.name for path in tests.glob("test_*.py")), name


def test_every_page_has_code_and_every_skip_says_why():
    for page in PAGES:
        blocks(page)  # asserts the reasons
    assert all(blocks(page) for page in PAGES if page.name != "index.md")
