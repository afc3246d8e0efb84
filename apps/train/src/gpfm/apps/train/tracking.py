"""A CSV tracker for Accelerate: one row per logged step, columns added as terms appear."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from accelerate.tracking import GeneralTracker


class CSVTracker(GeneralTracker):
    """Writes ``metrics.csv`` (rows of step + values) and ``hparams.json`` in ``logging_dir``."""

    name = "csv"
    requires_logging_directory = True

    def __init__(self, logging_dir: str | Path) -> None:
        super().__init__()
        self.directory = Path(logging_dir)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.path = self.directory / "metrics.csv"
        self.columns: list[str] = []
        if self.path.exists():  # a resumed run appends to its own history
            with self.path.open() as handle:
                self.columns = next(csv.reader(handle), [])

    @property
    def tracker(self) -> Path:
        return self.path

    def store_init_configuration(self, values: dict[str, Any]) -> None:
        (self.directory / "hparams.json").write_text(json.dumps(values, indent=2, default=str))

    def log(self, values: dict[str, Any], step: int | None = None, **kwargs: Any) -> None:
        row = {"step": step, **values}
        new = [k for k in row if k not in self.columns]
        if new:
            self._rewrite_with(self.columns + new)
        with self.path.open("a", newline="") as handle:
            csv.DictWriter(handle, self.columns).writerow(row)

    def _rewrite_with(self, columns: list[str]) -> None:
        rows: list[dict[str, str]] = []
        if self.path.exists():
            with self.path.open() as handle:
                rows = list(csv.DictReader(handle))
        self.columns = columns
        with self.path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, columns)
            writer.writeheader()
            writer.writerows(rows)


def read_metrics(path: str | Path) -> list[dict[str, float]]:
    """The rows of a ``metrics.csv`` as floats (empty cells skipped)."""
    with Path(path).open() as handle:
        return [
            {k: float(v) for k, v in row.items() if v not in ("", None)}
            for row in csv.DictReader(handle)
        ]
