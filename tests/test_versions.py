"""Versions, changelogs and the ranges between gpfm packages agree."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECTS = sorted(p.parent for p in ROOT.glob("packages/*/pyproject.toml")) + sorted(
    p.parent for p in ROOT.glob("apps/*/pyproject.toml")
)
REQUIREMENT = re.compile(r"^gpfm-([a-z]+)(?:\[[^\]]*\])?>=(\d+)\.(\d+),<(\d+)\.(\d+)$")


def _project(folder: Path) -> dict:
    return tomllib.loads((folder / "pyproject.toml").read_text())["project"]


def _version(name: str) -> tuple[int, ...]:
    folder = ROOT / "packages" / name
    if not folder.exists():
        folder = ROOT / "apps" / name
    return tuple(int(part) for part in _project(folder)["version"].split("."))


@pytest.mark.parametrize("folder", PROJECTS, ids=lambda p: p.name)
def test_each_version_has_its_changelog_section(folder):
    version = _project(folder)["version"]
    changelog = (folder / "CHANGELOG.md").read_text()
    assert re.search(rf"^## {re.escape(version)}$", changelog, re.M), (folder, version)
    assert (folder / "README.md").exists() and (folder / "LICENSE").exists(), folder


@pytest.mark.parametrize("folder", PROJECTS, ids=lambda p: p.name)
def test_gpfm_dependencies_carry_ranges_that_admit_the_current_versions(folder):
    for requirement in _project(folder).get("dependencies", []):
        if not requirement.startswith("gpfm-"):
            continue
        match = REQUIREMENT.match(requirement)
        assert match, f"{folder.name}: {requirement!r} needs a range such as >=0.2,<0.3"
        name, low, high = (
            match.group(1),
            tuple(map(int, match.group(2, 3))),
            tuple(map(int, match.group(4, 5))),
        )
        assert low <= _version(name)[:2] < high, f"{folder.name}: {requirement} excludes {name}"


@pytest.mark.parametrize("folder", PROJECTS, ids=lambda p: p.name)
def test_packages_are_typed(folder):
    if folder.parent.name == "packages":
        assert (folder / "src" / "gpfm" / folder.name / "py.typed").exists(), folder
