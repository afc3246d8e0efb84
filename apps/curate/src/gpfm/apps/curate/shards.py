"""Which slides go into which shard, packing a shard from its slides' parts, and the optional
``datasets.save_to_disk`` layout beside the Parquet shards.

The plan depends only on the slide list, the quotas and the seed: slides in a seeded random
order, cut into consecutive groups of about ``rows_per_shard`` patches, so each shard mixes
cohorts and tissue types. A shard is packed (its slides' rows concatenated in plan order, then
shuffled with a seed of its own) once every one of its slides is done or failed; the result is
the same file whichever process packs it and whenever.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from gpfm.slide.storage import atomic_path
from gpfm.slide.store import DATA_DIR, Shard, read_table, schema, write_table

ARROW_DIR = "arrow"


def plan_shards(quotas: list[int], seed: int, rows_per_shard: int) -> list[list[int]]:
    """Slide indices per shard: a seeded order cut where a shard reaches ``rows_per_shard``."""
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be at least 1, got {rows_per_shard}")
    order = np.random.default_rng([seed, 0x5A4D]).permutation(len(quotas)).tolist()
    shards: list[list[int]] = [[]]
    rows = 0
    for index in order:
        if rows >= rows_per_shard:
            shards.append([])
            rows = 0
        shards[-1].append(index)
        rows += quotas[index]
    return shards if shards[0] else []


def shard_file(index: int, count: int) -> str:
    """A shard's path in the store, named as the Hub names a split's shards."""
    return f"{DATA_DIR}/train-{index:05d}-of-{count:05d}.parquet"


def pack_shard(store: Path, index: int, count: int, parts: list[Path], seed: int) -> Shard:
    """Concatenate the slides' ``parts`` (in plan order), shuffle, write shard ``index``."""
    pa = __import__("pyarrow")
    tables = [read_table(p) for p in parts]
    table = pa.concat_tables(tables) if tables else schema().empty_table()
    order = np.random.default_rng([seed, 0x5A4E, index]).permutation(table.num_rows)
    name = shard_file(index, count)
    write_table(store / name, table.take(pa.array(order, type=pa.int64())))
    return Shard(name, table.num_rows)


def write_arrow_copy(store: Path, shards: list[Shard]) -> Path:
    """The store again in ``datasets``' ``save_to_disk`` layout, so ``load_from_disk(store)``
    works: Arrow stream files under ``arrow/``, ``state.json`` and ``dataset_info.json``."""
    pa = __import__("pyarrow")
    files = []
    for number, shard in enumerate(shards):
        name = f"{ARROW_DIR}/data-{number:05d}-of-{len(shards):05d}.arrow"
        table = read_table(store / shard.file).cast(schema())
        with (
            atomic_path(store / name) as temporary,
            pa.OSFile(str(temporary), "wb") as sink,
            pa.ipc.new_stream(sink, schema()) as out,
        ):
            out.write_table(table, max_chunksize=256)
        files.append({"filename": name})
    features = json.loads(schema().metadata[b"huggingface"])["info"]["features"]
    with atomic_path(store / "dataset_info.json") as temporary:
        temporary.write_text(json.dumps({"features": features, "splits": {}}, indent=2))
    state: dict[str, Any] = {
        "_data_files": files,
        "_fingerprint": f"gpfm-curate-{len(shards)}-{sum(s.rows for s in shards)}",
        "_format_columns": None,
        "_format_kwargs": {},
        "_format_type": None,
        "_output_all_columns": False,
        "_split": "train",
    }
    with atomic_path(store / "state.json") as temporary:
        temporary.write_text(json.dumps(state, indent=2))
    return store / "state.json"
