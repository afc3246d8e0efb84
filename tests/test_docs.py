"""The examples in the docs run as written."""

import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"


def _python_blocks(page: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.DOTALL)


@pytest.mark.slow
@pytest.mark.parametrize("page", ["slide.md", "distill.md", "train.md", "extract.md"])
def test_docs_example_runs(page, capsys):
    blocks = _python_blocks(DOCS / page)
    assert blocks, f"{page} has no python example"
    exec(compile(blocks[0], str(DOCS / page), "exec"), {"__name__": "__docs__"})
    assert capsys.readouterr().out
