"""The task registry: the GPFM paper's 72 tasks shipped with the package, plus the user's.

A user adds tasks by putting spec files (``*.toml``) in a folder and passing it as
``folders=[...]``, or by listing folders in the ``GPFM_BENCH_TASKS`` environment variable
(separated like ``PATH``). A user's spec with the name of a shipped task replaces it (a warning
says so, since the numbers are then no longer the paper's protocol).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from importlib import resources
from pathlib import Path

from gpfm.bench.errors import SpecError
from gpfm.bench.spec import TASK_TYPES, TaskSpec, load_task

logger = logging.getLogger(__name__)

ENV_VAR = "GPFM_BENCH_TASKS"


def shipped_task_files() -> list[Path]:
    """The spec files of the paper's tasks inside the installed package, sorted by name."""
    folder = Path(str(resources.files("gpfm.bench") / "tasks"))
    return sorted(folder.glob("*.toml"))


def _user_folders(folders: Iterable[str | Path] | None) -> list[Path]:
    listed = [Path(f) for f in folders or ()]
    listed += [Path(f) for f in os.environ.get(ENV_VAR, "").split(os.pathsep) if f]
    for folder in listed:
        if not folder.is_dir():
            raise SpecError(
                f"{folder}: task folder not found (from folders= or ${ENV_VAR}); create it or "
                "remove it from the list"
            )
    return listed


def list_tasks(
    type: str | None = None,
    *,
    folders: Iterable[str | Path] | None = None,
) -> list[TaskSpec]:
    """Every task: the paper's 72 and those in ``folders`` (and ``$GPFM_BENCH_TASKS``).

    Args:
        type: keep only tasks of this type (``slide_classification``, ``survival``,
            ``roi_classification``, ``roi_retrieval``, ``vqa``, ``report_generation``).
        folders: folders of the user's ``*.toml`` spec files.

    Returns:
        The specs, shipped ones in the paper's order (file name) then the user's by file name.

    Raises:
        SpecError: an unknown type, a missing folder, or an invalid spec file (named).
    """
    if type is not None and type not in TASK_TYPES:
        raise SpecError(f"type must be one of {list(TASK_TYPES)}, got {type!r}")
    tasks: dict[str, TaskSpec] = {}
    for path in shipped_task_files():
        spec = load_task(path)
        tasks[spec.name] = spec
    for folder in _user_folders(folders):
        for path in sorted(folder.glob("*.toml")):
            spec = load_task(path)
            if spec.name in tasks:
                logger.warning(
                    "%s replaces the task %r of %s", path, spec.name, tasks[spec.name].path
                )
            tasks[spec.name] = spec
    return [spec for spec in tasks.values() if type is None or spec.type == type]


def get_task(name: str, *, folders: Iterable[str | Path] | None = None) -> TaskSpec:
    """The task called ``name`` (exact, or ignoring case).

    Raises:
        SpecError: no such task; the message lists the closest names.
    """
    tasks = {spec.name: spec for spec in list_tasks(folders=folders)}
    if name in tasks:
        return tasks[name]
    folded = {key.casefold(): spec for key, spec in tasks.items()}
    if name.casefold() in folded:
        return folded[name.casefold()]
    import difflib

    close = difflib.get_close_matches(name, list(tasks), n=3)
    raise SpecError(
        f"no task named {name!r}; closest: {close or 'none'} (list_tasks() lists all; add your "
        f"own with a spec file in a folder passed as folders= or in ${ENV_VAR})"
    )


__all__ = ["ENV_VAR", "get_task", "list_tasks", "shipped_task_files"]
