"""Coordinates files: one HDF5 per slide, readable by CLAM and TRIDENT as well as by us.

Dataset ``coords`` (N, 2) int64 of top-left (x, y) in level-0 pixels, with the attributes those
tools read (``patch_size``, ``patch_level``, ``downsample``, ``level_dim``,
``patch_size_level0``) and ours (``target_mpp``, ``slide_mpp``, ``overlap``, ``min_tissue``,
``gpfm_version``); dataset ``tissue_fraction`` (N,) float32.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import socket
import tempfile
import zlib
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import h5py
import numpy as np

from gpfm.slide.errors import SlideError
from gpfm.slide.tiling import Tiles

COORDS_FORMAT_VERSION = 1

logger = logging.getLogger(__name__)

# A temporary's name: ".{target}.{host}-{pid}.{random}.tmp", so a later run can tell whether
# the process that made it still exists.
_TEMPORARY = re.compile(r"\.(?P<target>.+)\.(?P<host>[0-9a-f]{8})-(?P<pid>\d+)\.\w+\.tmp")
_swept: set[tuple[int, Path]] = set()


def package_version() -> str:
    try:
        return version("gpfm-slide")
    except PackageNotFoundError:  # running from a source tree
        return "0+unknown"


@contextlib.contextmanager
def atomic_path(path: str | Path, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    An interrupted write never leaves a half file under the final name. ``durable=True`` also
    fsyncs the file before the rename and the folder after it (worth it for large outputs).
    The temporary is named ``.{name}.{host}-{pid}.{random}.tmp``; the first write of a process
    into a folder removes the temporaries there whose writer was killed (``remove_stale``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if (os.getpid(), path.parent) not in _swept:
        remove_stale(path.parent)
        _swept.add((os.getpid(), path.parent))
    handle, temporary = tempfile.mkstemp(
        prefix=f".{path.name}.{_host_tag()}-{os.getpid()}.", suffix=".tmp", dir=path.parent
    )
    os.close(handle)
    try:
        yield Path(temporary)
        if durable:
            _fsync(temporary)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    if durable:
        with contextlib.suppress(OSError):  # folders cannot be fsynced everywhere
            _fsync(path.parent)


def remove_stale(folder: str | Path) -> list[Path]:
    """Delete the temporaries of ``atomic_path`` in ``folder`` whose writer no longer runs.

    A writer killed mid-write (SIGKILL, power loss) leaves its temporary behind. Only those made
    on this host by a process that has exited are removed; a live writer's (another run's, or
    this process's) are kept. Does nothing off POSIX. Returns the removed paths.
    """
    if os.name != "posix":
        return []
    removed = []
    with contextlib.suppress(OSError), os.scandir(folder) as entries:
        for entry in entries:
            match = _TEMPORARY.fullmatch(entry.name)
            if match is None or match["host"] != _host_tag() or _running(int(match["pid"])):
                continue
            with contextlib.suppress(OSError):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
                logger.info("removed %s, left by a killed write", entry.path)
    return removed


def _host_tag() -> str:
    return f"{zlib.crc32(socket.gethostname().encode()):08x}"


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    with contextlib.suppress(OSError, IndexError):  # an unreaped zombie has exited
        stat = Path(f"/proc/{pid}/stat").read_text()
        return stat[stat.rindex(")") + 2] != "Z"
    return True


def _fsync(path: str | Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def write_coords(path: str | Path, tiles: Tiles) -> Path:
    """Write ``tiles`` to an HDF5 coordinates file (atomically) and return its path."""
    path = Path(path)
    level_dim = (
        round(tiles.slide_dimensions[0] / tiles.level_downsample),
        round(tiles.slide_dimensions[1] / tiles.level_downsample),
    )
    with atomic_path(path) as temporary, h5py.File(temporary, "w") as h5:
        coords = h5.create_dataset("coords", data=np.asarray(tiles.coords, dtype=np.int64))
        attrs = {
            # What CLAM and TRIDENT read.
            "patch_size": tiles.patch_size,
            "patch_level": tiles.level,
            "downsample": np.array([tiles.level_downsample] * 2, dtype=np.float64),
            "level_dim": np.array(level_dim, dtype=np.int64),
            "level0_dim": np.array(tiles.slide_dimensions, dtype=np.int64),
            "patch_size_level0": tiles.patch_size_level0,
            "name": Path(tiles.slide_path).stem if tiles.slide_path else "",
            # Ours.
            "target_mpp": tiles.mpp,
            "slide_mpp": tiles.slide_mpp,
            "overlap": tiles.overlap,
            "min_tissue": tiles.min_tissue,
            "slide_path": tiles.slide_path or "",
            "gpfm_version": package_version(),
            "format_version": COORDS_FORMAT_VERSION,
        }
        coords.attrs.update(attrs)
        h5.create_dataset(
            "tissue_fraction", data=np.asarray(tiles.tissue_fraction, dtype=np.float32)
        )
    return path


def read_coords(path: str | Path) -> Tiles:
    """Read a coordinates file written by ``write_coords``.

    Raises:
        SlideError: the file is missing, not HDF5, or lacks the attributes we need.
    """
    path = Path(path)
    try:
        with h5py.File(path, "r") as h5:
            coords = h5["coords"]
            attrs = dict(coords.attrs)
            data = np.asarray(coords[:], dtype=np.int64).reshape(-1, 2)
            fractions = (
                np.asarray(h5["tissue_fraction"][:], dtype=np.float32)
                if "tissue_fraction" in h5
                else np.ones(len(data), dtype=np.float32)
            )
    except (OSError, KeyError) as error:
        raise SlideError(f"{path}: not a coordinates file ({error})") from error
    missing = [
        k for k in ("patch_size", "patch_size_level0", "target_mpp", "slide_mpp") if k not in attrs
    ]
    if missing:
        raise SlideError(
            f"{path}: coordinates file lacks attributes {missing}; re-tile the slide with "
            "gpfm-slide tile to write them"
        )
    level_dim = attrs.get("level0_dim")
    downsample = attrs.get("downsample", [1.0, 1.0])
    return Tiles(
        coords=data,
        tissue_fraction=fractions,
        mpp=float(attrs["target_mpp"]),
        patch_size=int(attrs["patch_size"]),
        patch_size_level0=int(attrs["patch_size_level0"]),
        level=int(attrs.get("patch_level", 0)),
        level_downsample=float(np.asarray(downsample).ravel()[0]),
        slide_mpp=float(attrs["slide_mpp"]),
        slide_dimensions=(
            (int(level_dim[0]), int(level_dim[1])) if level_dim is not None else (0, 0)
        ),
        overlap=float(attrs.get("overlap", 0.0)),
        min_tissue=float(attrs.get("min_tissue", 0.0)),
        slide_path=str(attrs.get("slide_path", "")) or None,
    )


__all__ = ["atomic_path", "read_coords", "remove_stale", "write_coords"]
