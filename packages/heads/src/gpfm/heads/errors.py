"""The exceptions gpfm.heads raises; every message says what was wrong, where, and what to do."""

from __future__ import annotations


class HeadsError(Exception):
    """Base class of every error raised by gpfm.heads."""


class FeatureFileError(HeadsError):
    """A feature file is missing, not HDF5, or lacks a dataset or attribute we need."""


class InvalidInputError(HeadsError, ValueError):
    """Arrays, labels or settings passed in are inconsistent (shapes, lengths, values)."""
