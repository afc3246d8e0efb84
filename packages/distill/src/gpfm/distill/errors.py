"""The root of gpfm-distill's exceptions: ``except DistillError`` catches every one of them."""

from __future__ import annotations


class DistillError(Exception):
    """Something gpfm-distill cannot do with the model, experts or settings it was given."""


class DistillConfigError(DistillError, ValueError):
    """An invalid setting of the objective, its heads or its experts; the message names it."""


class DistillDataError(DistillError, ValueError):
    """Training images that cannot be found or read, or a batch that cannot be used."""
