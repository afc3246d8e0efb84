"""Coordinates files: one HDF5 per slide, read as we mean them by CLAM and TRIDENT as well as by us.

Dataset ``coords`` (N, 2) int64 of top-left (x, y) in level-0 pixels; dataset ``tissue_fraction``
(N,) float32. The attributes on ``coords`` serve three readers at once:

- TRIDENT's own format (``trident/IO.py`` ``coords_to_h5``): ``patch_size`` (px at the target
  resolution), ``level0_magnification`` and ``target_magnification`` (TRIDENT's magnification
  is 10 / µm per px, so we write ``10 / slide_mpp`` and ``10 / target_mpp``), ``overlap`` (px
  at the target resolution), ``level0_width``, ``level0_height``, ``patch_size_level0``, ``name``;
- the CLAM/legacy route (TRIDENT's ``read_coords_legacy``, CLAM's ``Whole_Slide_Bag_FP``):
  ``patch_level``, ``downsample`` (of that level), ``level_dim`` (its size) and
  ``custom_downsample = target_mpp / (slide_mpp x downsample)``, the resize TRIDENT applies after
  reading. CLAM reads ``patch_size`` px at ``patch_level`` and never resizes, so it reads our
  tiles exactly only when ``custom_downsample`` is 1 (tiles from ``tile(..., native_level=True)``);
- ours: ``target_mpp``, ``slide_mpp``, ``overlap_fraction``, ``min_tissue``, ``level0_dim``,
  ``slide_path``, ``gpfm_version``, ``format_version`` (2; version 1 files stored the overlap
  fraction under ``overlap``).

``read_coords`` reads our files and TRIDENT's and CLAM's (with their meanings), and refuses a
damaged or foreign file with ``CoordsFileError`` naming the file and the field.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import socket
import tempfile
import zlib
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from gpfm.slide.errors import CoordsFileError, MissingResolutionError
from gpfm.slide.slide import Slide
from gpfm.slide.tiling import Tiles

COORDS_FORMAT_VERSION = 2

# Bounds no real tiling reaches; beyond them a file is damaged (or hostile: a declared size of
# 10**12 rows must not become an allocation).
_MAX_TILES = 100_000_000
_MAX_TILE_SIDE = 65_536  # px, at the read level and at the target resolution
_MAX_LEVEL0_SIDE = 2**24  # px, a tile's side in level-0 pixels
_MAX_LEVEL = 64
# h5py raises these (and only these, in practice) on damaged files, datasets and attributes.
_H5_ERRORS = (OSError, KeyError, TypeError, ValueError, RuntimeError, AttributeError)
_UNREADABLE = object()
_REQUIRED = object()

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


def append_json_line(path: str | Path, record: dict[str, Any]) -> None:
    """Append ``record`` as one JSON line to ``path`` (created if missing).

    The line goes out in a single write on an ``O_APPEND`` descriptor, so the lines of processes
    appending to the same manifest at once never interleave.
    """
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, (json.dumps(record) + "\n").encode())
    finally:
        os.close(descriptor)


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


def custom_downsample(tiles: Tiles) -> float:
    """The resize factor after reading ``tiles.level``: target µm/px over the level's µm/px.

    1.0 (exactly) when the tiles are read at a native level without resizing.
    """
    factor = tiles.mpp / (tiles.slide_mpp * tiles.level_downsample)
    return 1.0 if tiles.read_size == tiles.patch_size and math.isclose(factor, 1.0) else factor


def coords_attributes(tiles: Tiles) -> dict[str, Any]:
    """The attributes ``write_coords`` stores on the ``coords`` dataset of ``tiles``' file.

    Feature files carry them on their own ``coords`` dataset, where TRIDENT's slide encoders and
    Patho-Bench look (``patch_size_level0``).
    """
    width, height = tiles.slide_dimensions
    level_dim = (round(width / tiles.level_downsample), round(height / tiles.level_downsample))
    return {
        # TRIDENT's format: its magnification is 10 / (µm per px).
        "patch_size": int(tiles.patch_size),
        "patch_size_level0": int(tiles.patch_size_level0),
        "level0_magnification": 10.0 / tiles.slide_mpp,
        "target_magnification": 10.0 / tiles.mpp,
        "overlap": round(tiles.overlap * tiles.patch_size),  # px at the target resolution
        "level0_width": int(width),
        "level0_height": int(height),
        "name": Path(tiles.slide_path).stem if tiles.slide_path else "",
        # CLAM and TRIDENT's legacy route.
        "patch_level": int(tiles.level),
        "downsample": np.array([tiles.level_downsample] * 2, dtype=np.float64),
        "level_dim": np.array(level_dim, dtype=np.int64),
        "custom_downsample": custom_downsample(tiles),
        # Ours.
        "target_mpp": float(tiles.mpp),
        "slide_mpp": float(tiles.slide_mpp),
        "overlap_fraction": float(tiles.overlap),
        "min_tissue": float(tiles.min_tissue),
        "level0_dim": np.array(tiles.slide_dimensions, dtype=np.int64),
        "slide_path": tiles.slide_path or "",
        "gpfm_version": package_version(),
        "format_version": COORDS_FORMAT_VERSION,
    }


def write_coords(path: str | Path, tiles: Tiles) -> Path:
    """Write ``tiles`` to an HDF5 coordinates file (atomically) and return its path."""
    path = Path(path)
    with atomic_path(path) as temporary, h5py.File(temporary, "w") as h5:
        coords = np.asarray(tiles.coords, dtype=np.int64).reshape(-1, 2)
        h5.create_dataset("coords", data=coords).attrs.update(coords_attributes(tiles))
        h5.create_dataset(
            "tissue_fraction", data=np.asarray(tiles.tissue_fraction, dtype=np.float32)
        )
    return path


def read_coords(path: str | Path, slide: Slide | None = None) -> Tiles:
    """Read a coordinates file: ours, TRIDENT's or CLAM's, each with its own meaning.

    Args:
        path: the HDF5 file.
        slide: the opened slide the file belongs to. Needed for CLAM files (which record no
            resolution) and used, when given, to read TRIDENT's tiles at the best pyramid level
            (without it they are read at level 0) and to check that the file fits the slide.

    Returns:
        The tiles, as ``tile`` made them: coordinates in level-0 pixels, the level to read and
        the size to resize to. For TRIDENT files the resolutions are TRIDENT's (10 / magnification
        µm/px); CLAM tiles are ``patch_size`` px of ``patch_level``, resized by
        ``custom_downsample`` when the file has one.

    Raises:
        CoordsFileError: the file is missing, not HDF5, damaged, or a field has the wrong
            shape, type or value (the message names the file and the field).
        MissingResolutionError: a CLAM file read without ``slide``.
    """
    path = Path(path)
    coords, fractions, raw = _load(path)
    attrs = _Attributes(path, raw)
    if "target_mpp" in raw or "format_version" in raw:
        tiles = _ours(attrs, coords, fractions)
    elif "level0_magnification" in raw or "target_magnification" in raw:
        tiles = _trident(attrs, coords, fractions, slide)
    elif "patch_level" in raw:
        tiles = _legacy(attrs, coords, fractions, slide)
    else:
        raise CoordsFileError(
            f"{path}: the `coords` dataset has none of the attributes of a gpfm, TRIDENT or CLAM "
            "coordinates file (target_mpp, level0_magnification, patch_level); re-tile the "
            "slide with gpfm-slide tile"
        )
    _check_fit(path, tiles, slide)
    return tiles


def _load(path: Path) -> tuple[np.ndarray, np.ndarray | None, dict[str, Any]]:
    if not path.is_file():
        raise CoordsFileError(f"{path}: coordinates file not found; check the path or re-tile")
    try:
        with h5py.File(path, "r") as h5:
            node = h5.get("coords")
            if not isinstance(node, h5py.Dataset):
                found = "nothing" if node is None else f"a {type(node).__name__.lower()}"
                raise CoordsFileError(
                    f"{path}: `coords` must be an (N, 2) dataset of level-0 (x, y), found "
                    f"{found}; this is not a coordinates file, re-tile the slide"
                )
            _check_coords_layout(path, node)
            coords = _integral_coords(path, np.asarray(node[()]))
            raw = {}
            for key in node.attrs:
                try:
                    raw[key] = node.attrs[key]
                except _H5_ERRORS:
                    raw[key] = _UNREADABLE
            fractions = _read_fractions(path, h5, len(coords))
    except CoordsFileError:
        raise
    except _H5_ERRORS as error:
        raise CoordsFileError(
            f"{path}: not a readable coordinates file (damaged or not HDF5: {error}); re-tile "
            "the slide"
        ) from error
    return coords, fractions, raw


def _check_coords_layout(path: Path, node: h5py.Dataset) -> None:
    shape, kind = node.shape, node.dtype.kind
    if kind not in "iuf":
        raise CoordsFileError(
            f"{path}: `coords` holds {node.dtype} values; expected integers (level-0 pixels)"
        )
    empty = shape is not None and 0 in shape and len(shape) in (1, 2)
    if not empty and (shape is None or len(shape) != 2 or shape[1] != 2):
        raise CoordsFileError(
            f"{path}: `coords` has shape {shape}; expected (N, 2), one (x, y) per tile"
        )
    if shape is not None and shape[0] > _MAX_TILES:
        raise CoordsFileError(f"{path}: `coords` declares {shape[0]} tiles, beyond any slide")


def _integral_coords(path: Path, values: np.ndarray) -> np.ndarray:
    values = values.reshape(-1, 2)
    if values.dtype.kind == "f":
        # TRIDENT's patcher accepts float coordinates that are whole numbers; so do we.
        if not np.all(np.isfinite(values)) or not np.array_equal(values, np.round(values)):
            raise CoordsFileError(f"{path}: `coords` holds non-integer or non-finite values")
        if values.size and np.abs(values).max() >= 2**53:
            raise CoordsFileError(f"{path}: `coords` holds values beyond any slide")
    elif values.dtype.kind == "u" and values.size and values.max() > np.iinfo(np.int64).max:
        raise CoordsFileError(f"{path}: `coords` holds values beyond any slide")
    coords = values.astype(np.int64)
    if coords.size and coords.min() < 0:
        raise CoordsFileError(f"{path}: `coords` holds negative positions; tiles start inside")
    return coords


def _read_fractions(path: Path, h5: h5py.File, count: int) -> np.ndarray | None:
    node = h5.get("tissue_fraction")
    if node is None:
        return None
    if not isinstance(node, h5py.Dataset) or node.dtype.kind not in "iuf":
        raise CoordsFileError(f"{path}: `tissue_fraction` must be a numeric (N,) dataset")
    if node.shape != (count,):
        raise CoordsFileError(
            f"{path}: `tissue_fraction` has shape {node.shape}; expected ({count},), one value "
            "per row of `coords`"
        )
    return np.asarray(node[()], dtype=np.float32)


class _Attributes:
    """Typed access to the attributes of a ``coords`` dataset; errors name the file and field."""

    def __init__(self, path: Path, raw: dict[str, Any]) -> None:
        self.path = path
        self.raw = raw

    def __contains__(self, key: str) -> bool:
        return key in self.raw

    def error(self, key: str, expected: str) -> CoordsFileError:
        value = self.raw.get(key, _REQUIRED)
        if value is _REQUIRED:
            found = "it is missing"
        elif value is _UNREADABLE:
            found = "it cannot be read"
        else:
            found = f"found {_short(value)}"
        return CoordsFileError(
            f"{self.path}: attribute `{key}` of `coords` must be {expected}; {found}. "
            "Re-tile the slide to rewrite the file"
        )

    def number(
        self,
        key: str,
        default: Any = _REQUIRED,
        *,
        integer: bool = False,
        low: float = -math.inf,
        high: float = math.inf,
        low_open: bool = False,
        first: bool = False,
    ) -> Any:
        """The attribute as an int or float in [low, high] (or (low, high] with ``low_open``).

        ``first`` takes the first element of a 1- or 2-element array (CLAM's (x, y) pairs).
        """
        kind = "an integer" if integer else "a number"
        side = "(" if low_open else "["
        expected = f"{kind} in {side}{low:g}, {high:g}]"
        if key not in self.raw:
            if default is _REQUIRED:
                raise self.error(key, expected)
            return default
        value = self.raw[key]
        array = np.asarray(value) if value is not _UNREADABLE else np.zeros(0, dtype=object)
        if first and array.ndim == 1 and array.size in (1, 2):
            array = array[:1]
        if array.size != 1 or array.ndim > 1 or array.dtype.kind not in "iuf":
            raise self.error(key, expected)
        number = float(array.ravel()[0])
        if (
            not math.isfinite(number)
            or (integer and number != round(number))
            or number > high
            or number < low
            or (low_open and number == low)
        ):
            raise self.error(key, expected)
        return round(number) if integer else number

    def pair(self, key: str) -> tuple[int, int] | None:
        """A (width, height) attribute of two positive integers, or None when absent."""
        if key not in self.raw:
            return None
        array = np.asarray(self.raw[key]) if self.raw[key] is not _UNREADABLE else None
        expected = "two positive integers (width, height)"
        if array is None or array.shape != (2,) or array.dtype.kind not in "iuf":
            raise self.error(key, expected)
        if not all(math.isfinite(v) and v >= 1 and v == round(v) for v in array.tolist()):
            raise self.error(key, expected)
        return int(array[0]), int(array[1])

    def text(self, key: str) -> str:
        value = self.raw.get(key, "")
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        if not isinstance(value, str):
            raise self.error(key, "a string")
        return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _size_fields(attrs: _Attributes) -> tuple[int, int]:
    patch_size = attrs.number("patch_size", integer=True, low=1, high=_MAX_TILE_SIDE)
    level = attrs.number("patch_level", 0, integer=True, low=0, high=_MAX_LEVEL)
    return patch_size, level


def _ours(attrs: _Attributes, coords: np.ndarray, fractions: np.ndarray | None) -> Tiles:
    path = attrs.path
    format_version = attrs.number("format_version", 1, integer=True, low=1, high=2**31)
    if format_version > COORDS_FORMAT_VERSION:
        raise CoordsFileError(
            f"{path}: written by a newer gpfm-slide (coordinates format {format_version}, this "
            f"one reads up to {COORDS_FORMAT_VERSION}); upgrade gpfm-slide"
        )
    missing = [
        key
        for key in ("patch_size", "patch_size_level0", "target_mpp", "slide_mpp")
        if key not in attrs
    ]
    if missing:
        raise CoordsFileError(
            f"{path}: coordinates file lacks attributes {missing}; re-tile the slide with "
            "gpfm-slide tile to write them"
        )
    patch_size, level = _size_fields(attrs)
    overlap_key = "overlap_fraction" if format_version >= 2 else "overlap"
    tiles = Tiles(
        coords=coords,
        tissue_fraction=_fractions_or_ones(fractions, len(coords)),
        mpp=attrs.number("target_mpp", low=0, high=1e6, low_open=True),
        patch_size=patch_size,
        patch_size_level0=attrs.number(
            "patch_size_level0", integer=True, low=1, high=_MAX_LEVEL0_SIDE
        ),
        level=level,
        level_downsample=_level_downsample(attrs),
        slide_mpp=attrs.number("slide_mpp", low=0, high=1e6, low_open=True),
        slide_dimensions=attrs.pair("level0_dim") or (0, 0),
        overlap=attrs.number(overlap_key, 0.0, low=0.0, high=0.999999),
        min_tissue=attrs.number("min_tissue", 0.0, low=0.0, high=1.0),
        slide_path=attrs.text("slide_path") or None,
    )
    return _checked(attrs, tiles)


def _trident(
    attrs: _Attributes, coords: np.ndarray, fractions: np.ndarray | None, slide: Slide | None
) -> Tiles:
    patch_size, _ = _size_fields(attrs)
    # 10 / magnification is µm/px: 1e-3 to 1e4 covers any microscope and keeps sizes finite.
    source = attrs.number("level0_magnification", low=1e-3, high=1e4)
    target = attrs.number("target_magnification", low=1e-3, high=1e4)
    # As TRIDENT's WSIPatcher: pixel size 10 / magnification, tile = round(patch_size x ratio).
    slide_mpp, mpp = 10 / source, 10 / target
    downsample = mpp / slide_mpp
    overlap_px = attrs.number("overlap", 0, integer=True, low=0, high=patch_size - 1)
    width = attrs.number("level0_width", 0, integer=True, low=1, high=2**31)
    height = attrs.number("level0_height", 0, integer=True, low=1, high=2**31)
    level = slide.best_level_for_downsample(downsample) if slide is not None else 0
    tiles = Tiles(
        coords=coords,
        tissue_fraction=_fractions_or_ones(fractions, len(coords)),
        mpp=mpp,
        patch_size=patch_size,
        patch_size_level0=max(1, round(patch_size * downsample)),
        level=level,
        level_downsample=float(slide.level_downsamples[level]) if slide is not None else 1.0,
        slide_mpp=slide_mpp,
        slide_dimensions=(width, height) if width and height else _dimensions_of(slide),
        overlap=overlap_px / patch_size,
        slide_path=str(slide.path) if slide is not None else None,
    )
    return _checked(attrs, tiles)


def _legacy(
    attrs: _Attributes, coords: np.ndarray, fractions: np.ndarray | None, slide: Slide | None
) -> Tiles:
    path = attrs.path
    patch_size, level = _size_fields(attrs)
    extra = attrs.number("custom_downsample", 1.0, low=0, high=1e6, low_open=True)
    if slide is not None:
        if level >= slide.level_count:
            raise attrs.error("patch_level", f"a level of this slide (0-{slide.level_count - 1})")
        level_downsample = float(slide.level_downsamples[level])
    elif "downsample" in attrs:
        level_downsample = _level_downsample(attrs)
    elif level == 0:
        level_downsample = 1.0
    else:
        raise CoordsFileError(
            f"{path}: a CLAM coordinates file at patch_level {level} without a `downsample` "
            "attribute; pass the slide: read_coords(path, slide=open_slide(...))"
        )
    if slide is None:
        raise MissingResolutionError(
            f"{path}: a CLAM coordinates file records no resolution (µm/px); pass the slide it "
            "was made from: read_coords(path, slide=open_slide(...))"
        )
    level_dim = attrs.pair("level_dim")  # CLAM: the size of patch_level
    if level_dim is not None and level_dim != tuple(slide.level_dimensions[level]):
        raise CoordsFileError(
            f"{path}: made for a slide whose level {level} is {level_dim[0]} x {level_dim[1]} "
            f"px, but {slide.path}'s is {slide.level_dimensions[level]}; pass the right slide"
        )
    dimensions = slide.dimensions
    tiles = Tiles(
        coords=coords,
        tissue_fraction=_fractions_or_ones(fractions, len(coords)),
        mpp=slide.mpp * level_downsample * extra,
        patch_size=patch_size,
        patch_size_level0=max(1, round(patch_size * level_downsample * extra)),
        level=level,
        level_downsample=level_downsample,
        slide_mpp=slide.mpp,
        slide_dimensions=(int(dimensions[0]), int(dimensions[1])),
        slide_path=str(slide.path),
    )
    return _checked(attrs, tiles)


def _level_downsample(attrs: _Attributes) -> float:
    # CLAM stores an (x, y) pair; a single number is accepted too.
    return float(attrs.number("downsample", 1.0, low=0, high=1e6, low_open=True, first=True))


def _dimensions_of(slide: Slide | None) -> tuple[int, int]:
    return (0, 0) if slide is None else (int(slide.dimensions[0]), int(slide.dimensions[1]))


def _fractions_or_ones(fractions: np.ndarray | None, count: int) -> np.ndarray:
    return fractions if fractions is not None else np.ones(count, dtype=np.float32)


def _checked(attrs: _Attributes, tiles: Tiles) -> Tiles:
    """Refuse tiles no reader could read: sizes beyond bounds, coordinates outside the slide."""
    if tiles.patch_size_level0 > _MAX_LEVEL0_SIDE:
        raise attrs.error("patch_size", f"a tile of at most {_MAX_LEVEL0_SIDE} level-0 px")
    if tiles.patch_size_level0 / tiles.level_downsample > _MAX_TILE_SIDE:
        raise attrs.error("downsample", f"a level on which a tile is at most {_MAX_TILE_SIDE} px")
    width, height = tiles.slide_dimensions
    if len(tiles) and width and height:
        beyond = (tiles.coords[:, 0] >= width) | (tiles.coords[:, 1] >= height)
        if beyond.any():
            x, y = tiles.coords[int(np.argmax(beyond))]
            raise CoordsFileError(
                f"{attrs.path}: `coords` has a tile at ({x}, {y}), outside the {width} x {height} "
                "px slide the file records; the file is damaged or belongs to another slide"
            )
    return tiles


def _check_fit(path: Path, tiles: Tiles, slide: Slide | None) -> None:
    if slide is None or tiles.slide_dimensions == (0, 0):
        return
    if tuple(tiles.slide_dimensions) != tuple(slide.dimensions):
        width, height = tiles.slide_dimensions
        raise CoordsFileError(
            f"{path}: made for a slide of {width} x {height} px, but {slide.path} is "
            f"{slide.dimensions[0]} x {slide.dimensions[1]} px; pass the right slide"
        )


__all__ = [
    "COORDS_FORMAT_VERSION",
    "append_json_line",
    "atomic_path",
    "coords_attributes",
    "custom_downsample",
    "read_coords",
    "remove_stale",
    "write_coords",
]
