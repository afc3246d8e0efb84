"""Feature files: one HDF5 per slide per encoder (``features/<encoder>/<slide_id>.h5``).

Dataset ``features`` (N, D) with one row per tile, dataset ``coords`` (N, 2) int64 of the tiles'
top-left (x, y) in level-0 pixels, and file attributes ``encoder``, ``embed_dim``,
``weights_sha256`` (the string ``"none"`` when unknown), ``mpp`` (µm/px the tiles were read at),
``patch_size`` (px given to the encoder), ``gpfm_version`` and ``format_version``.

The ``coords`` dataset carries the attributes of the coordinates file, above all
``patch_size_level0`` (a tile's side in level-0 pixels): TRIDENT's slide encoders
(``trident/slide_encoder_models/load.py``) and Patho-Bench's ``PatchEmbeddingsDataset`` read it
there, as ``dict(f["coords"].attrs)``. ``export_clam`` writes CLAM's ``pt_files/<slide_id>.pt``
layout for its MIL training scripts.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from gpfm.heads.errors import FeatureFileError, InvalidInputError

FEATURES_FORMAT_VERSION = 1
UNKNOWN = "none"  # stored for an unknown ``weights_sha256`` and any None attribute


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
    weights_sha256: str | None = None,
    patch_size_level0: int | None = None,
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
        weights_sha256: checksum of the encoder weights, for provenance; None or "" is stored
            as the string ``"none"`` (HDF5 attributes cannot hold None).
        patch_size_level0: a tile's side in level-0 pixels, stored on the ``coords`` dataset
            where TRIDENT's slide encoders and Patho-Bench read it (they need it).
        coords_attrs: further attributes of the ``coords`` dataset, typically all those of the
            coordinates file (``gpfm.slide.storage.coords_attributes(tiles)``).
        attrs: further file attributes.

    None values in ``coords_attrs`` and ``attrs`` are stored as ``"none"`` too.

    Raises:
        InvalidInputError: shapes of ``features`` and ``coords`` do not match, or
            ``patch_size_level0`` disagrees with the one in ``coords_attrs``.
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
    tile_attrs = _storable(coords_attrs)
    if patch_size_level0 is not None:
        recorded = tile_attrs.get("patch_size_level0")
        if recorded is not None and int(recorded) != int(patch_size_level0):
            raise InvalidInputError(
                f"{path}: patch_size_level0={patch_size_level0} but coords_attrs has "
                f"{recorded}; pass one of them"
            )
        tile_attrs["patch_size_level0"] = int(patch_size_level0)
    path = Path(path)
    with atomic_path(path) as temporary, h5py.File(temporary, "w") as h5:
        h5.create_dataset("features", data=features)
        coords_dataset = h5.create_dataset("coords", data=coords.astype(np.int64))
        coords_dataset.attrs.update(tile_attrs)
        h5.attrs.update(
            {
                "encoder": encoder,
                "embed_dim": int(features.shape[1]),
                "weights_sha256": weights_sha256 or UNKNOWN,
                "mpp": float("nan") if mpp is None else float(mpp),
                "patch_size": -1 if patch_size is None else int(patch_size),
                "gpfm_version": package_version(),
                "format_version": FEATURES_FORMAT_VERSION,
                **_storable(attrs),
            }
        )
    return path


def _storable(attrs: Mapping[str, Any] | None) -> dict[str, Any]:
    # h5py turns None into an object-dtype array it cannot store.
    return {key: UNKNOWN if value is None else value for key, value in (attrs or {}).items()}


def export_clam(
    feature_files: Iterable[str | Path], folder: str | Path, *, h5_files: bool = False
) -> list[Path]:
    """Export feature files to CLAM's layout: ``<folder>/pt_files/<slide_id>.pt``.

    Each ``.pt`` holds the (N, D) float32 ``torch.Tensor`` of one slide's features, as CLAM's
    ``extract_features_fp.py`` saves it and its ``Generic_MIL_Dataset`` loads it (the slide id
    is the feature file's name without ``.h5``). With ``h5_files=True`` each feature file is
    also copied to ``<folder>/h5_files/<slide_id>.h5`` (it already has the ``features`` and
    ``coords`` datasets CLAM reads there). Writes are atomic.

    Returns:
        The ``.pt`` paths, in the order of ``feature_files``.
    """
    import torch

    folder = Path(folder)
    written = []
    for source in map(Path, feature_files):
        features = read_bag(source)  # float32, checked
        target = folder / "pt_files" / f"{source.stem}.pt"
        with atomic_path(target) as temporary:
            torch.save(torch.from_numpy(features), temporary)
        if h5_files:
            with atomic_path(folder / "h5_files" / f"{source.stem}.h5") as temporary:
                shutil.copyfile(source, temporary)
        written.append(target)
    return written


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


def read_bag(path: str | os.PathLike[str], out: np.ndarray | None = None) -> np.ndarray:
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


def bag_shape(path: str | os.PathLike[str]) -> tuple[int, int]:
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


__all__ = [
    "FeatureFile",
    "bag_shape",
    "export_clam",
    "read_bag",
    "read_features",
    "write_features",
]
