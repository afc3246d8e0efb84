"""The root of gpfm-backbone's exceptions: ``except BackboneError`` catches every one of them."""

from __future__ import annotations


class BackboneError(Exception):
    """Something gpfm-backbone cannot do with the model, checkpoint or weights it was given."""
