"""The backbone docs page: its example runs as written and its zoo table is the registry's."""

import re
from pathlib import Path

import pytest

from gpfm.backbone.zoo import get_encoder_spec, list_encoders, unregister_encoder

PAGE = Path(__file__).resolve().parents[3] / "docs" / "backbone.md"


@pytest.fixture
def page() -> str:
    if not PAGE.is_file():
        pytest.skip("docs/backbone.md is not beside this package (installed elsewhere)")
    return PAGE.read_text()


@pytest.mark.slow
def test_the_example_runs_as_written(page, capsys):
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.DOTALL)
    assert blocks, "docs/backbone.md has no python example"
    try:
        exec(compile(blocks[0], str(PAGE), "exec"), {"__name__": "__docs__"})
    finally:
        if "my-cnn" in list_encoders():
            unregister_encoder("my-cnn")
    printed = capsys.readouterr().out
    assert "vit_tiny_patch16 (4, 192) (4, 196, 192)" in printed
    assert "virchow2: 631 M parameters, 2560-d embedding" in printed
    assert "my-cnn: (4, 16)" in printed and "my-run (4, 192)" in printed


@pytest.mark.slow
def test_every_other_example_runs_as_written(page, capsys):
    blocks = re.findall(r"```python\n(.*?)```", page, flags=re.DOTALL)
    for block in blocks[1:]:
        exec(compile(block, str(PAGE), "exec"), {"__name__": "__docs__"})
    assert "features (12, 192) labels [6 6]" in capsys.readouterr().out


def test_the_zoo_table_lists_every_entry_with_its_embedding_size(page):
    section = page.split("## The encoder zoo", 1)[1].split("\n#", 1)[0]
    rows = re.findall(r"^\| `([\w.-]+)` \| [^|]+ \| ([^|]+) \|", section, flags=re.MULTILINE)
    documented = dict(rows)
    zoo = {name for name in list_encoders() if not name.startswith("vit_")}
    assert set(documented) == zoo
    for name, embedding in documented.items():
        assert embedding.strip().endswith(str(get_encoder_spec(name).embed_dim)), name
