"""Developer tasks: `nox -s tests`, `nox -s demo`, `nox -s lint`, `nox -s typecheck`,
`nox -s "package(name='slide')"`, `nox -s bench`.

Sessions use pip in fresh virtual environments; torch is required as ``torch>=2.10`` and nothing
narrower, so pip picks the newest release available to the machine.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import nox

ROOT = Path(__file__).parent
PACKAGES = sorted(p.name for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").exists())
APPS = sorted(p.name for p in (ROOT / "apps").iterdir() if (p / "pyproject.toml").exists())

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True


def _local_dependencies(name: str) -> list[str]:
    """Paths of the gpfm packages that packages/<name> depends on, recursively."""
    project = tomllib.loads((ROOT / "packages" / name / "pyproject.toml").read_text())
    paths: list[str] = []
    for requirement in project["project"].get("dependencies", []):
        if requirement.startswith("gpfm-"):
            dependency = requirement.split()[0].removeprefix("gpfm-")
            paths += [*_local_dependencies(dependency), f"./packages/{dependency}"]
    return list(dict.fromkeys(paths))


def _install_all(session: nox.Session) -> None:
    targets = [f"./packages/{name}[test]" for name in PACKAGES] + [
        f"./apps/{name}" for name in APPS
    ]
    session.install(*targets)


@nox.session
def tests(session: nox.Session) -> None:
    """Every package's and app's tests, and the cross-package tests, in one environment."""
    _install_all(session)
    session.install("pytest>=8", "hypothesis>=6.100")
    test_dirs = [f"packages/{name}/tests" for name in PACKAGES]
    test_dirs += [
        f"apps/{name}/tests" for name in APPS if (ROOT / "apps" / name / "tests").exists()
    ]
    session.run("pytest", *test_dirs, "tests", *session.posargs)


@nox.session
@nox.parametrize("name", PACKAGES)
def package(session: nox.Session, name: str) -> None:
    """One package installed alone in a fresh environment, with its own tests.

    Other gpfm packages it depends on come from this repository (they are not on PyPI).
    """
    session.install(*_local_dependencies(name), f"./packages/{name}[test]")
    session.run("pytest", f"packages/{name}/tests", *session.posargs)


@nox.session
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff>=0.8")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session
def typecheck(session: nox.Session) -> None:
    """mypy on the packages."""
    _install_all(session)
    session.install("mypy>=1.10", "types-tqdm")
    for name in PACKAGES:
        session.run("mypy", f"packages/{name}/src")


@nox.session
def demo(session: nox.Session) -> None:
    """The main job at toy scale on generated data: the longest chain that exists so far."""
    _install_all(session)
    out = session.posargs[0] if session.posargs else "demo-output"
    session.run("gpfm-demo", "--out", out)


@nox.session
def bench(session: nox.Session) -> None:
    """Performance benchmarks (tests/benchmarks/bench_*.py); each prints its ratios."""
    _install_all(session)
    for script in sorted((ROOT / "tests" / "benchmarks").glob("bench_*.py")):
        session.run("python", str(script.relative_to(ROOT)), *session.posargs)


@nox.session
def docs(session: nox.Session) -> None:
    """Build the user guide with mkdocs (into site/)."""
    session.install("mkdocs>=1.6")
    session.run("mkdocs", "build", "--strict")
