"""The example on the package's docs page runs as written."""

import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[3] / "docs" / "bench.md"


@pytest.mark.slow
def test_docs_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.DOTALL)
    assert blocks, f"{PAGE} has no python example"
    exec(compile(blocks[0], str(PAGE), "exec"), {"__name__": "__docs__"})
    printed = capsys.readouterr().out
    assert "72 paper tasks" in printed and "leaderboard (ours protocol, 4 tasks)" in printed
