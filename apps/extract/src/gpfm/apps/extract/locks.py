"""One lock file per slide, so that two runs on one output folder never write the same slide.

The lock is created atomically (a hard link that fails if the name exists) with the owner's host
and process id inside, so a lock left by a killed process on this host is recognised and taken
over; a lock of a live process, or of another host, is respected.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def lock_owner(lock: Path) -> dict[str, object] | None:
    """The ``{"host", "pid"}`` recorded in a lock file, or None if unreadable."""
    try:
        owner = json.loads(lock.read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _is_stale(lock: Path) -> bool:
    owner = lock_owner(lock)
    if owner is None or owner.get("host") != socket.gethostname():
        return False
    pid = owner.get("pid")
    return isinstance(pid, int) and pid != os.getpid() and not _running(pid)


def try_lock(lock: Path) -> bool:
    """Take ``lock`` for this process; False when a live process (or another host) holds it."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    content = json.dumps({"host": socket.gethostname(), "pid": os.getpid()})
    temporary = lock.with_name(f".{lock.name}.{os.getpid()}.tmp")
    temporary.write_text(content)
    try:
        for _ in range(2):
            try:
                os.link(temporary, lock)
                return True
            except FileExistsError:
                if not _is_stale(lock):
                    return False
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(lock)
        return False
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)


def release(lock: Path) -> None:
    """Remove ``lock`` if this process holds it."""
    owner = lock_owner(lock)
    if owner is not None and owner.get("pid") == os.getpid():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
