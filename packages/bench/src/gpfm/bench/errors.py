"""The exceptions gpfm.bench raises; every message names the file or field, and what to do."""

from __future__ import annotations


class BenchError(Exception):
    """Base class of every error raised by gpfm.bench."""


class SpecError(BenchError, ValueError):
    """A task spec file is unreadable, or a field is missing, unknown or has a wrong value."""


class LabelFileError(BenchError, ValueError):
    """A labels file is missing, or a column or value in it is wrong."""


class DataMissingError(BenchError, FileNotFoundError):
    """Files that a task needs under its data root are missing (``check_task`` lists them)."""


class ResultsError(BenchError, ValueError):
    """A results file is unreadable, or results that should be compared do not fit together."""
