"""The example on the package's docs page runs as written."""

import re
from pathlib import Path

import pytest

PAGE = Path(__file__).resolve().parents[3] / "docs" / "heads.md"


@pytest.mark.slow
def test_docs_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.DOTALL)
    assert blocks, f"{PAGE} has no python example"
    exec(compile(blocks[0], str(PAGE), "exec"), {"__name__": "__docs__"})
    printed = capsys.readouterr().out
    assert "test AUC" in printed and "acc@1" in printed
