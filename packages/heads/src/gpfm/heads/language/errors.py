"""The errors of gpfm.heads.language; each says what is missing and how to get it."""

from __future__ import annotations

from gpfm.heads.errors import HeadsError

EXTRA_HINT = "pip install 'gpfm-heads[language]'"


class MissingExtraError(HeadsError, ImportError):
    """A package of the optional extra ``gpfm-heads[language]`` is not installed."""


class JavaNotFoundError(HeadsError, RuntimeError):
    """METEOR and the PTB tokenizer of pycocoevalcap run in Java, and none was found."""
