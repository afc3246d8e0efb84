"""The evaluation protocol switch shared by the heads, probes, retrieval and training settings.

``"ours"`` (the default) is the toolkit's own protocol; ``"gpfm"`` reproduces the evaluation code
of the GPFM paper (birkhoffkiki/GPFM at commit 4f8be2b) exactly, except that nothing is ever
selected on test data. ``docs/heads.md`` lists every difference in one table.
"""

from __future__ import annotations

from typing import Literal, cast

from gpfm.heads.errors import InvalidInputError

EvalProtocol = Literal["ours", "gpfm"]
PROTOCOLS: tuple[str, ...] = ("ours", "gpfm")


def check_protocol(protocol: str, *, aliases: tuple[str, ...] = ()) -> EvalProtocol:
    """Return ``protocol`` as ``"ours"`` or ``"gpfm"``; ``aliases`` name "ours" too.

    Raises:
        InvalidInputError: any other value.
    """
    if protocol in aliases:
        return "ours"
    if protocol not in PROTOCOLS:
        choices = [*PROTOCOLS, *aliases]
        raise InvalidInputError(f"protocol must be one of {choices}, got {protocol!r}")
    return cast(EvalProtocol, protocol)


__all__ = ["PROTOCOLS", "EvalProtocol", "check_protocol"]
