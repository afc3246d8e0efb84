"""The slide list: a CSV with ``slide_path``, ``cohort``, ``tissue_type`` and optional ``mpp`` and
``slide_id``."""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path

from gpfm.slide.cli import slide_id as default_slide_id

REQUIRED_COLUMNS = ("slide_path", "cohort", "tissue_type")


class InputError(ValueError):
    """The slide list is missing, lacks a column, has a bad value, or two slides share an id."""


@dataclass(frozen=True)
class SlideEntry:
    """One slide of the list.

    Attributes:
        slide_id: the slide's name in the store (default: the file name without suffixes).
        path: the slide file (relative paths are relative to the CSV's folder).
        cohort: e.g. ``TCGA-BRCA``.
        tissue_type: e.g. ``breast``.
        mpp: level-0 µm/px overriding the file's metadata (None: the file's).
    """

    slide_id: str
    path: Path
    cohort: str
    tissue_type: str
    mpp: float | None = None

    def group(self, balance_by: tuple[str, ...]) -> str:
        """The balancing group: the values of the ``balance_by`` columns, joined by ``/``."""
        return "/".join(str(getattr(self, column)) for column in balance_by)


def read_slide_list(table: str | os.PathLike[str]) -> list[SlideEntry]:
    """The slides of a CSV, in its order.

    Raises:
        InputError: no such file, a missing column, an empty cohort or tissue type, a bad mpp,
            or two slides with one id; the message names the file and line.
    """
    table = Path(table)
    if not table.is_file():
        raise InputError(f"{table}: no such slide list (a CSV with {', '.join(REQUIRED_COLUMNS)})")
    with table.open(newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(
                f"{table}: the slide list lacks the column(s) {missing}; it needs "
                f"{', '.join(REQUIRED_COLUMNS)} (optional: mpp, slide_id)"
            )
        rows = list(reader)
    entries = []
    for line, row in enumerate(rows, start=2):
        path = Path(row["slide_path"].strip())
        if not path.is_absolute():
            path = table.parent / path
        cohort, tissue_type = row["cohort"].strip(), row["tissue_type"].strip()
        if not cohort or not tissue_type:
            raise InputError(f"{table}, line {line}: cohort and tissue_type must not be empty")
        text = (row.get("mpp") or "").strip()
        try:
            mpp = float(text) if text else None
        except ValueError:
            mpp = math.nan
        if mpp is not None and not (math.isfinite(mpp) and mpp > 0):
            raise InputError(f"{table}, line {line}: mpp {text!r} is not a positive number")
        identifier = (row.get("slide_id") or "").strip() or default_slide_id(path)
        entries.append(SlideEntry(identifier, path, cohort, tissue_type, mpp))
    if not entries:
        raise InputError(f"{table}: the slide list has no rows")
    ids = [e.slide_id for e in entries]
    shared = sorted({i for i in ids if ids.count(i) > 1})
    if shared:
        raise InputError(f"{table}: several slides share the id(s) {shared}; give `slide_id`")
    return entries
