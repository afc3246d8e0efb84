"""The patch store: JPEG patches with their provenance in sharded Parquet, a Hugging Face dataset.

Layout of a store folder (or of a Hugging Face Hub dataset repository)::

    README.md           dataset card: YAML header (configs, features), the mix, how it was made
    store.json          index: format version, columns, shards with their row counts
    data/shard-00000.parquet ...

Each row is one patch: ``image`` (``{"bytes": JPEG, "path": None}``, what ``datasets`` calls an
``Image`` feature), ``slide_id``, ``x``, ``y`` (top-left in level-0 pixels), ``level`` (the
pyramid level read), ``mpp`` (µm/px of the patch), ``patch_size`` (px), ``cohort``,
``tissue_type``, and the quality measures it passed: ``tissue_fraction`` (of its pixels),
``sharpness`` (variance of the Laplacian) and ``phash`` (64-bit perceptual hash, hex). The
Parquet schema carries the ``datasets`` features, so ``datasets.load_dataset("parquet",
data_files="STORE/data/*.parquet")`` returns PIL images in ``image``.

Needs pyarrow: ``pip install 'gpfm-slide[store]'``.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpfm.slide.errors import StoreError
from gpfm.slide.storage import atomic_path

if TYPE_CHECKING:
    import pyarrow as pa

logger = logging.getLogger(__name__)

STORE_FORMAT_VERSION = 1
INDEX_FILE = "store.json"
CARD_FILE = "README.md"
DATA_DIR = "data"
ROW_GROUP_SIZE = 256  # rows; a reader fetches this many JPEGs at once

# Column -> (arrow type name, ``datasets`` feature). The image column is a struct, as datasets
# stores its ``Image`` feature.
_COLUMNS: dict[str, tuple[str, dict[str, Any]]] = {
    "image": ("image", {"_type": "Image"}),
    "slide_id": ("string", {"dtype": "string", "_type": "Value"}),
    "x": ("int64", {"dtype": "int64", "_type": "Value"}),
    "y": ("int64", {"dtype": "int64", "_type": "Value"}),
    "level": ("int32", {"dtype": "int32", "_type": "Value"}),
    "mpp": ("float64", {"dtype": "float64", "_type": "Value"}),
    "patch_size": ("int32", {"dtype": "int32", "_type": "Value"}),
    "cohort": ("string", {"dtype": "string", "_type": "Value"}),
    "tissue_type": ("string", {"dtype": "string", "_type": "Value"}),
    "tissue_fraction": ("float32", {"dtype": "float32", "_type": "Value"}),
    "sharpness": ("float32", {"dtype": "float32", "_type": "Value"}),
    "phash": ("string", {"dtype": "string", "_type": "Value"}),
}
COLUMNS = tuple(_COLUMNS)


def _pyarrow() -> Any:
    try:
        import pyarrow
        import pyarrow.parquet
    except ModuleNotFoundError:
        raise ImportError(
            "the patch store needs pyarrow: pip install 'gpfm-slide[store]'"
        ) from None
    return pyarrow


def schema() -> pa.Schema:
    """The Arrow schema of a store's shards, with the ``datasets`` features as metadata."""
    pa = _pyarrow()
    kinds = {
        "image": pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
        "string": pa.string(),
        "int64": pa.int64(),
        "int32": pa.int32(),
        "float64": pa.float64(),
        "float32": pa.float32(),
    }
    features = {name: feature for name, (_, feature) in _COLUMNS.items()}
    metadata = {b"huggingface": json.dumps({"info": {"features": features}}).encode()}
    fields = [pa.field(name, kinds[kind]) for name, (kind, _) in _COLUMNS.items()]
    return pa.schema(fields, metadata=metadata)


def rows_to_table(rows: Sequence[dict[str, Any]]) -> pa.Table:
    """A table of store rows; each row a dict of ``COLUMNS`` with ``image`` as JPEG bytes."""
    pa = _pyarrow()
    columns: dict[str, list[Any]] = {name: [] for name in COLUMNS}
    for row in rows:
        for name in COLUMNS:
            value = row[name]
            columns[name].append({"bytes": value, "path": None} if name == "image" else value)
    return pa.Table.from_pydict(columns, schema=schema())


def write_table(path: str | os.PathLike[str], table: pa.Table) -> Path:
    """Write ``table`` as one Parquet file, atomically (rows in groups of ``ROW_GROUP_SIZE``)."""
    pq = _pyarrow().parquet
    path = Path(path)
    with atomic_path(path) as temporary:
        # JPEG bytes do not compress; the other columns are small.
        pq.write_table(
            table.cast(schema()),
            temporary,
            row_group_size=ROW_GROUP_SIZE,
            compression="zstd",
            use_dictionary=["slide_id", "cohort", "tissue_type"],
        )
    return path


def read_table(path: str | os.PathLike[str], columns: Sequence[str] | None = None) -> pa.Table:
    """Read one Parquet file of a store (or a part), naming the file when it is damaged."""
    pq = _pyarrow().parquet
    try:
        return pq.read_table(path, columns=list(columns) if columns else None)
    except (OSError, ValueError) as error:
        raise StoreError(
            f"{path}: not a readable Parquet file ({error}); delete it and resume"
        ) from error


@dataclass(frozen=True)
class Shard:
    """One Parquet file of a store: its path relative to the store, and its number of rows."""

    file: str
    rows: int


def write_index(store: str | os.PathLike[str], shards: Iterable[Shard], **extra: Any) -> Path:
    """Write ``store.json`` (atomically): the format, the columns, the shards, ``extra``."""
    index = {
        "format_version": STORE_FORMAT_VERSION,
        "columns": list(COLUMNS),
        "shards": [{"file": s.file, "rows": s.rows} for s in shards],
        **extra,
    }
    path = Path(store) / INDEX_FILE
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(index, indent=2) + "\n")
    return path


class PatchStore:
    """A store to read: a local folder, or a Hub dataset id (``owner/name``) fetched lazily.

    ``shards`` lists the shards with their row counts; ``images(shard)`` returns the JPEG bytes
    of one shard. From the Hub, a shard is downloaded (into the Hugging Face cache) the first
    time it is read, so each process fetches only the shards it reads.
    """

    def __init__(self, location: str | os.PathLike[str], revision: str | None = None) -> None:
        self.location = str(location)
        self.revision = revision
        self.local = Path(location).is_dir()
        index_path = self._fetch(INDEX_FILE)
        try:
            index = json.loads(Path(index_path).read_text())
            version = int(index["format_version"])
            self.shards = [Shard(str(s["file"]), int(s["rows"])) for s in index["shards"]]
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise StoreError(
                f"{index_path}: not a patch store index ({error!r}); rebuild the store with "
                "gpfm-curate"
            ) from None
        if version > STORE_FORMAT_VERSION:
            raise StoreError(
                f"{index_path}: store format {version} is newer than this gpfm-slide reads "
                f"({STORE_FORMAT_VERSION}); upgrade gpfm-slide"
            )
        self.index = index

    def _fetch(self, name: str) -> str:
        if self.local:
            path = Path(self.location) / name
            if not path.is_file():
                raise StoreError(f"{path}: missing; is {self.location} a gpfm-curate store?")
            return str(path)
        if "/" not in self.location or self.location.count("/") > 1:
            raise StoreError(
                f"{self.location}: neither a store folder nor a Hugging Face Hub dataset id "
                "(owner/name)"
            )
        from huggingface_hub import hf_hub_download

        return hf_hub_download(self.location, name, repo_type="dataset", revision=self.revision)

    def __len__(self) -> int:
        return sum(s.rows for s in self.shards)

    def shard_path(self, shard: int) -> str:
        """The local path of shard ``shard`` (downloaded first when the store is on the Hub)."""
        return self._fetch(self.shards[shard].file)

    def images(self, shard: int) -> list[bytes]:
        """The JPEG bytes of every patch of shard ``shard``, in its row order."""
        table = read_table(self.shard_path(shard), columns=["image"])
        column = table.column("image").combine_chunks().field("bytes")
        return column.to_pylist()

    def __repr__(self) -> str:
        return f"PatchStore({self.location!r}: {len(self)} patches in {len(self.shards)} shards)"


__all__ = [
    "CARD_FILE",
    "COLUMNS",
    "DATA_DIR",
    "INDEX_FILE",
    "STORE_FORMAT_VERSION",
    "PatchStore",
    "Shard",
    "StoreError",
    "read_table",
    "rows_to_table",
    "schema",
    "write_index",
    "write_table",
]
