"""Which slides to extract: a folder, slide files, or a CSV with ``slide_path`` (and optional
``slide_id`` and ``mpp``)."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from gpfm.slide.cli import slide_id as default_slide_id
from gpfm.slide.dataset import SLIDE_SUFFIXES

IMAGE_SUFFIXES = (*SLIDE_SUFFIXES, ".ome.tif", ".ome.tiff", ".png", ".jpg", ".jpeg")


class InputError(ValueError):
    """INPUT names no slide, a CSV lacks ``slide_path``, or two slides share an id."""


@dataclass(frozen=True)
class SlideInput:
    """One slide to extract.

    Attributes:
        slide_id: names its output files (``features/<encoder>/<slide_id>.h5``).
        path: the slide file.
        mpp: level-0 µm/px overriding the file's metadata (None: the file's, or ``--slide-mpp``).
    """

    slide_id: str
    path: Path
    mpp: float | None = None


def _from_csv(table: Path) -> list[SlideInput]:
    with table.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "slide_path" not in rows[0]:
        raise InputError(
            f"{table}: a slide list needs a `slide_path` column (optional: `slide_id`, `mpp`)"
        )
    slides = []
    for number, row in enumerate(rows, start=2):
        path = Path(row["slide_path"])
        if not path.is_absolute():
            path = table.parent / path
        mpp_text = (row.get("mpp") or "").strip()
        try:
            mpp = float(mpp_text) if mpp_text else None
        except ValueError:
            raise InputError(f"{table}, line {number}: mpp {mpp_text!r} is not a number") from None
        identifier = (row.get("slide_id") or "").strip() or default_slide_id(path)
        slides.append(SlideInput(identifier, path, mpp))
    return slides


def _is_slide(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(IMAGE_SUFFIXES)


def find_slides(inputs: Sequence[str | os.PathLike[str]]) -> list[SlideInput]:
    """The slides named by ``inputs`` (folders, slide files, CSV files), in a stable order.

    A folder contributes its slide files (by suffix, not recursive, sorted by name); a file is a
    slide even when its suffix is unusual (it fails later, with a reason in the manifest, if it is
    not one).

    Raises:
        InputError: an input that does not exist, no slide at all, or two slides with one id.
    """
    slides: list[SlideInput] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files = sorted(p for p in item.iterdir() if _is_slide(p))
            slides += [SlideInput(default_slide_id(p), p) for p in files]
        elif item.suffix.lower() == ".csv":
            slides += _from_csv(item)
        elif item.exists():
            slides.append(SlideInput(default_slide_id(item), item))
        else:
            raise InputError(f"{item}: no such file or folder")
    if not slides:
        raise InputError(f"no slides found in {[str(p) for p in inputs]}")
    ids = [s.slide_id for s in slides]
    shared = sorted({i for i in ids if ids.count(i) > 1})
    if shared:
        raise InputError(
            f"several slides share the id(s) {shared}; rename them or give `slide_id` in a CSV"
        )
    return slides
