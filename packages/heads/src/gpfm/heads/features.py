"""Feature files: one HDF5 per slide per encoder (``features/<encoder>/<slide_id>.h5``).

Dataset ``features`` (N, D) with one row per tile, dataset ``coords`` (N, 2) int64 of the tiles'
top-left (x, y) in level-0 pixels, and file attributes ``encoder``, ``embed_dim``,
``weights_sha256``, ``mpp`` (µm/px the tiles were read at), ``patch_size`` (px given to the
encoder), ``gpfm_version`` and ``format_version``. Attributes of the coordinates file (such as
``patch_size_level0``) may ride along on the ``coords`` dataset, where CLAM and TRIDENT look.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from gpfm.heads.errors import FeatureFileError, InvalidInputError

FEATURES_FORMAT_VERSION = 1


def package_version() -> str:
    """The installed version of gpfm-heads (``0+unknown`` in a source tree)."""
    try:
        return version("gpfm-heads")
    except PackageNotFoundError:  # running from a source tree
        return "0+unknown"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    An interrupted write never leaves a half file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(handle)
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


@dataclass(frozen=True)
class FeatureFile:
    """The content of one feature file.

    Attributes:
        features: (N, D) tile features, in the dtype stored.
        coords: (N, 2) int64 top-left (x, y) of each tile in level-0 pixels.
        encoder: name of the encoder that made the features.
        attrs: every file attribute (``embed_dim``, ``mpp``, ``patch_size``, ...).
        coords_attrs: attributes of the ``coords`` dataset (e.g. ``patch_size_level0``).
    """

    features: np.ndarray
    coords: np.ndarray
    encoder: str
    attrs: dict[str, Any] = field(default_factory=dict)
    coords_attrs: dict[str, Any] = field(default_factory=dict)

    @property
    def embed_dim(self) -> int:
        """D, the feature dimension."""
        return int(self.features.shape[1])

    def __len__(self) -> int:
        return int(self.features.shape[0])


def write_features(
    path: str | Path,
    features: np.ndarray,
    coords: np.ndarray,
    *,
    encoder: str,
    mpp: float | None = None,
    patch_size: int | None = None,
    weights_sha256: str = "",
    coords_attrs: Mapping[str, Any] | None = None,
    attrs: Mapping[str, Any] | None = None,
) -> Path:
    """Write one slide's tile features to an HDF5 feature file, atomically, and return its path.

    Args:
        path: destination ``.h5`` file; parent folders are created.
        features: (N, D) float features, one row per tile (float16/32/64 kept as given).
        coords: (N, 2) top-left (x, y) of each tile in level-0 pixels.
        encoder: encoder name recorded in the ``encoder`` attribute.
        mpp: µm/px at which the tiles were read (stored as NaN when None).
        patch_size: tile side in pixels as given to the encoder (stored as -1 when None).
        weights_sha256: checksum of the encoder weights, for provenance.
        coords_attrs: attributes stored on the ``coords`` dataset (CLAM/TRIDENT readers look
            there, e.g. ``patch_size_level0``, ``patch_level``).
        attrs: further file attributes.

    Raises:
        InvalidInputError: shapes of ``features`` and ``coords`` do not match.
    """
    features = np.asarray(features)
    coords = np.asarray(coords)
    if features.ndim != 2 or not np.issubdtype(features.dtype, np.floating):
        raise InvalidInputError(
            f"{path}: features must be a 2-D float array (N, D), got {features.dtype} "
            f"{features.shape}"
        )
    if coords.shape != (features.shape[0], 2):
        raise InvalidInputError(
            f"{path}: coords must have shape (N, 2) = ({features.shape[0]}, 2) to match the "
            f"features, got {coords.shape}"
        )
    path = Path(path)
    with atomic_path(path) as temporary, h5py.File(temporary, "w") as h5:
        h5.create_dataset("features", data=features)
        coords_dataset = h5.create_dataset("coords", data=coords.astype(np.int64))
        coords_dataset.attrs.update(dict(coords_attrs or {}))
        h5.attrs.update(
            {
                "encoder": encoder,
                "embed_dim": int(features.shape[1]),
                "weights_sha256": weights_sha256,
                "mpp": float("nan") if mpp is None else float(mpp),
                "patch_size": -1 if patch_size is None else int(patch_size),
                "gpfm_version": package_version(),
                "format_version": FEATURES_FORMAT_VERSION,
                **dict(attrs or {}),
            }
        )
    return path


def _features_dataset(h5: h5py.File, path: Path) -> h5py.Dataset:
    if "features" not in h5 or not isinstance(h5["features"], h5py.Dataset):
        raise FeatureFileError(
            f"{path}: no `features` dataset; a feature file holds `features` (N, D) and `coords` "
            "(N, 2) — write it with gpfm.heads.write_features or re-run feature extraction"
        )
    dataset = h5["features"]
    if dataset.ndim != 2:
        raise FeatureFileError(
            f"{path}: `features` has shape {dataset.shape}; expected (N, D), one row per tile "
            "(TRIDENT-style (1, N, D) files: squeeze the first axis and rewrite)"
        )
    if dataset.shape[0] == 0:
        raise FeatureFileError(f"{path}: `features` is empty (0 tiles); drop this slide")
    embed_dim = h5.attrs.get("embed_dim")
    if embed_dim is not None and int(embed_dim) != dataset.shape[1]:
        raise FeatureFileError(
            f"{path}: attribute embed_dim={int(embed_dim)} but `features` has "
            f"{dataset.shape[1]} columns; the file is inconsistent, re-extract it"
        )
    return dataset


def _open(path: Path) -> h5py.File:
    if not path.exists():
        raise FeatureFileError(f"{path}: feature file not found; check the path or extract it")
    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise FeatureFileError(f"{path}: not a readable HDF5 file ({error})") from error


def read_bag(path: str | Path, out: np.ndarray | None = None) -> np.ndarray:
    """Read the (N, D) ``features`` of one file as float32, without reading ``coords``.

    Args:
        path: feature file.
        out: optional preallocated float32 (N, D) array to read into.
    """
    path = Path(path)
    with _open(path) as h5:
        dataset = _features_dataset(h5, path)
        if out is None:
            out = np.empty(dataset.shape, dtype=np.float32)
        dataset.read_direct(out)
    return out


def bag_shape(path: str | Path) -> tuple[int, int]:
    """(N, D) of a feature file, read from its header only."""
    path = Path(path)
    with _open(path) as h5:
        shape = _features_dataset(h5, path).shape
    return int(shape[0]), int(shape[1])


def read_features(path: str | Path) -> FeatureFile:
    """Read a whole feature file (features, coords and attributes).

    Raises:
        FeatureFileError: the file is missing, not HDF5, or lacks ``features`` or ``coords``.
    """
    path = Path(path)
    with _open(path) as h5:
        features = _features_dataset(h5, path)[()]
        if "coords" not in h5:
            raise FeatureFileError(
                f"{path}: no `coords` dataset; write the tiles' level-0 (x, y) with the features "
                "(gpfm.heads.write_features(..., coords=...))"
            )
        coords_dataset = h5["coords"]
        coords = np.asarray(coords_dataset[()], dtype=np.int64)
        if coords.shape != (features.shape[0], 2):
            raise FeatureFileError(
                f"{path}: `coords` has shape {coords.shape} but there are {features.shape[0]} "
                "feature rows; expected (N, 2)"
            )
        attrs = {key: _plain(value) for key, value in h5.attrs.items()}
        coords_attrs = {key: _plain(value) for key, value in coords_dataset.attrs.items()}
    return FeatureFile(
        features=features,
        coords=coords,
        encoder=str(attrs.get("encoder", "")),
        attrs=attrs,
        coords_attrs=coords_attrs,
    )


def _plain(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    return value


__all__ = ["FeatureFile", "bag_shape", "read_bag", "read_features", "write_features"]
