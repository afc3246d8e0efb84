"""``curate``: slides -> sampled, quality-checked JPEG patches -> a sharded Parquet store.

Layout of ``STORE``:

    curate_config.json          the settings (a resumed run must use the same ones)
    slides/<slide_id>.json      what became of each slide (written last: the slide is done)
    parts/<slide_id>.parquet    its patches, until its shard is packed
    data/train-KKKKK-of-NNNNN.parquet, store.json, README.md, stats.json, mosaic.png
    manifest.jsonl              one line per slide a process handled, per run

Every file is written atomically and everything is decided by the slide list, the settings and
the seed, so a killed run started again ends with the same store as an uninterrupted one.
Slides are split across processes (``--workers`` on one machine; ``accelerate launch`` or
torchrun across machines: slide ``i`` goes to process ``i % WORLD_SIZE``); whichever process
finds a shard's slides all done packs it, and whichever finds every shard packed writes the
index, the card and the statistics.
"""

from __future__ import annotations

import json
import logging
import os
import time
import traceback
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from tqdm import tqdm

from gpfm.apps.curate.inputs import SlideEntry, read_slide_list
from gpfm.apps.curate.report import write_report
from gpfm.apps.curate.shards import pack_shard, plan_shards, shard_file, write_arrow_copy
from gpfm.slide import open_slide, segment_tissue, tile
from gpfm.slide.curation import curate_patches
from gpfm.slide.quality import QualityThresholds
from gpfm.slide.sampling import SAMPLING_STRATEGIES, slide_quotas
from gpfm.slide.storage import append_json_line, atomic_path
from gpfm.slide.store import Shard, rows_to_table, write_index, write_table

logger = logging.getLogger("gpfm.apps.curate")

MANIFEST = "manifest.jsonl"
CONFIG_FILE = "curate_config.json"
BALANCE_COLUMNS = ("tissue_type", "cohort")


class CurateError(RuntimeError):
    """The store cannot be made as asked (e.g. it was begun with other settings)."""


@dataclass(frozen=True)
class CurateSettings:
    """How patches are chosen and stored; recorded in ``curate_config.json``.

    ``mpp`` (µm/px) or ``level`` (a pyramid level read without resizing) sets the resolution;
    ``mask_min_tissue`` is the tile's tissue fraction on the low-resolution mask needed to be a
    candidate; ``quality`` says when a candidate is blank, blurred or a near-duplicate.
    """

    patches_per_slide: int
    mpp: float | None = 0.5
    level: int | None = None
    patch_size: int = 512
    mask_min_tissue: float = 0.5
    tissue_mpp: float = 8.0
    strategy: str = "uniform"
    balance_by: tuple[str, ...] = ()
    mix: dict[str, float] | None = None
    quality: QualityThresholds = field(default_factory=QualityThresholds)
    jpeg_quality: int = 90
    seed: int = 0
    rows_per_shard: int = 4096

    def __post_init__(self) -> None:
        if (self.mpp is None) == (self.level is None):
            raise ValueError("give exactly one of mpp (µm/px) and level (a pyramid level)")
        if self.strategy not in SAMPLING_STRATEGIES:
            raise ValueError(f"strategy must be one of {SAMPLING_STRATEGIES}")
        unknown = set(self.balance_by) - set(BALANCE_COLUMNS)
        if unknown:
            raise ValueError(f"balance_by takes {BALANCE_COLUMNS}, got {sorted(unknown)}")
        if self.mix is not None and not self.balance_by:
            raise ValueError("a mix needs balance_by (the columns whose groups it weighs)")

    def to_json(self) -> dict[str, Any]:
        settings = asdict(self)
        settings["balance_by"] = list(self.balance_by)
        return settings


@dataclass
class Summary:
    """What a run did: one record per slide it handled, and whether the store is complete."""

    records: list[dict[str, Any]] = field(default_factory=list)
    complete: bool = False

    def count(self, status: str) -> int:
        return sum(record["status"] == status for record in self.records)

    def __str__(self) -> str:
        state = "store complete" if self.complete else "store not complete yet"
        return (
            f"{self.count('done')} done, {self.count('skipped')} skipped, "
            f"{self.count('failed')} failed; {state}"
        )


def slide_seed(seed: int, slide_id: str) -> int:
    """The sampling seed of one slide: the run's seed and the slide's id, not its position."""
    return int(np.random.SeedSequence([seed, zlib.crc32(slide_id.encode())]).generate_state(1)[0])


def curate_slide(
    entry: SlideEntry, quota: int, settings: CurateSettings, store: Path
) -> dict[str, Any]:
    """Curate one slide into ``parts/<id>.parquet`` and ``slides/<id>.json``; never raises.

    Returns the slide's record (status ``done`` or ``failed``, patches, rejections, timings).
    """
    # The quality checks run one patch per thread of the reader already; OpenCV splitting each
    # patch over threads of its own on top cost ~70% more CPU (512 px, 2 cores).
    cv2.setNumThreads(1)
    record: dict[str, Any] = {
        "slide_id": entry.slide_id,
        "path": str(entry.path),
        "cohort": entry.cohort,
        "tissue_type": entry.tissue_type,
        "quota": quota,
    }
    start = time.perf_counter()
    try:
        rows, details = _patch_rows(entry, quota, settings) if quota else ([], {"tried": 0})
        write_table(store / "parts" / f"{entry.slide_id}.parquet", rows_to_table(rows))
        record.update(status="done", patches=len(rows), **details)
    except Exception as error:  # a bad slide is recorded and the others go on
        logger.debug("%s", traceback.format_exc())
        record.update(status="failed", patches=0, error=f"{type(error).__name__}: {error}")
    record["seconds"] = round(time.perf_counter() - start, 3)
    with atomic_path(store / "slides" / f"{entry.slide_id}.json") as temporary:
        temporary.write_text(json.dumps(record, indent=1))
    return record


def _patch_rows(
    entry: SlideEntry, quota: int, settings: CurateSettings
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    with open_slide(entry.path, mpp=entry.mpp) as slide:
        tissue = segment_tissue(slide, mpp=settings.tissue_mpp)
        if settings.level is not None:
            if not 0 <= settings.level < slide.level_count:
                raise ValueError(
                    f"level {settings.level} does not exist ({slide.level_count} levels)"
                )
            mpp, native = slide.level_mpp(settings.level), True
        else:
            mpp, native = float(settings.mpp or 0.5), False
        tiles = tile(
            slide,
            mpp=mpp,
            patch_size=settings.patch_size,
            min_tissue=settings.mask_min_tissue,
            tissue=tissue,
            native_level=native,
        )
        result = curate_patches(
            slide,
            tiles,
            quota,
            seed=slide_seed(settings.seed, entry.slide_id),
            strategy=settings.strategy,
            thresholds=settings.quality,
            jpeg_quality=settings.jpeg_quality,
        )
    rows = [
        {
            "image": patch.jpeg,
            "slide_id": entry.slide_id,
            "x": patch.x,
            "y": patch.y,
            "level": tiles.level,
            "mpp": tiles.mpp,
            "patch_size": tiles.patch_size,
            "cohort": entry.cohort,
            "tissue_type": entry.tissue_type,
            "tissue_fraction": patch.measures.tissue_fraction,
            "sharpness": patch.measures.sharpness,
            "phash": f"{patch.measures.phash:016x}",
        }
        for patch in result.patches
    ]
    details = {"candidates": len(tiles), "tried": result.tried, "rejected": result.rejected}
    return rows, details


def _check_config(store: Path, settings: CurateSettings, slides: Sequence[SlideEntry]) -> None:
    config = {
        "settings": settings.to_json(),
        "slides": [[e.slide_id, str(e.path), e.cohort, e.tissue_type, e.mpp] for e in slides],
    }
    path = store / CONFIG_FILE
    if path.is_file():
        if json.loads(path.read_text()) != json.loads(json.dumps(config)):
            raise CurateError(
                f"{path}: this store was begun with other settings or another slide list; "
                "resume with the same ones, or curate into a new --out"
            )
        return
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(config, indent=1))


def curate(
    slides_csv: str | os.PathLike[str],
    out: str | os.PathLike[str],
    settings: CurateSettings,
    *,
    workers: int = 1,
    arrow: bool = False,
    process_index: int | None = None,
    num_processes: int | None = None,
    progress: bool = False,
) -> Summary:
    """Build (or resume) the patch store ``out`` from the slides of ``slides_csv``.

    Args:
        slides_csv: CSV with ``slide_path``, ``cohort``, ``tissue_type`` (optional ``mpp``,
            ``slide_id``).
        out: the store folder (see the module docstring).
        settings: what to sample and keep.
        workers: processes on this machine, one slide each at a time.
        arrow: also write the ``datasets.save_to_disk`` layout (doubles the store's size).
        process_index, num_processes: this process's share of the slides (default: from the
            ``accelerate launch``/torchrun environment, ``RANK`` and ``WORLD_SIZE``).
        progress: show a progress bar.

    Raises:
        InputError: a bad slide list. CurateError: ``out`` was begun with other settings.
    """
    store = Path(out)
    entries = read_slide_list(slides_csv)
    groups = [e.group(settings.balance_by) for e in entries]
    quotas = slide_quotas(
        groups, settings.patches_per_slide, settings.mix, balance=bool(settings.balance_by)
    )
    store.mkdir(parents=True, exist_ok=True)
    _check_config(store, settings, entries)
    plan = plan_shards(quotas, settings.seed, settings.rows_per_shard)
    rank = int(os.environ.get("RANK", 0)) if process_index is None else process_index
    world = int(os.environ.get("WORLD_SIZE", 1)) if num_processes is None else num_processes
    summary = Summary()
    todo = []
    for index in range(rank, len(entries), world):
        entry = entries[index]
        if (store / "slides" / f"{entry.slide_id}.json").is_file():
            summary.records.append(
                {"slide_id": entry.slide_id, "status": "skipped", "reason": "done earlier"}
            )
        else:
            todo.append(index)
    bar = tqdm(total=len(todo), desc="slides", unit="slide", disable=not progress)

    def finished(record: dict[str, Any]) -> None:
        record["process"] = rank
        append_json_line(store / MANIFEST, record)
        summary.records.append(record)
        bar.update(1)
        if record["status"] == "failed":
            tqdm.write(f"failed: {record['path']}: {record['error']}")

    _run_slides([(entries[i], quotas[i]) for i in todo], settings, store, workers, finished)
    bar.close()
    shards = _pack_ready(store, plan, entries, settings.seed)
    if shards is not None:
        write_index(store, shards, settings=settings.to_json())
        if arrow:
            write_arrow_copy(store, shards)
        write_report(store, entries, quotas, groups, settings)
        _remove_parts(store, entries)
        summary.complete = True
    return summary


def _run_slides(
    jobs: list[tuple[SlideEntry, int]],
    settings: CurateSettings,
    store: Path,
    workers: int,
    finished: Callable[[dict[str, Any]], None],
) -> None:
    if workers <= 1 or len(jobs) <= 1:
        for entry, quota in jobs:
            finished(curate_slide(entry, quota, settings, store))
        return
    with ProcessPoolExecutor(workers) as pool:
        futures = [pool.submit(curate_slide, e, q, settings, store) for e, q in jobs]
        for future in futures:  # in slide order, so the manifest reads in order
            finished(future.result())


def _pack_ready(
    store: Path, plan: list[list[int]], entries: Sequence[SlideEntry], seed: int
) -> list[Shard] | None:
    """Pack every shard whose slides are all done; the shards when all are packed, else None."""
    shards: list[Shard | None] = []
    for number, members in enumerate(plan):
        name = shard_file(number, len(plan))
        records = [store / "slides" / f"{entries[i].slide_id}.json" for i in members]
        if not all(r.is_file() for r in records):
            shards.append(None)
            continue
        done = [json.loads(r.read_text()) for r in records]
        if not (store / name).is_file():
            parts = [store / "parts" / f"{d['slide_id']}.parquet" for d in done]
            wanted = [p for p, d in zip(parts, done, strict=True) if d["status"] == "done"]
            missing = [p for p in wanted if not p.is_file()]
            if missing and not (store / name).is_file():  # another process may have packed it
                raise CurateError(
                    f"{missing[0]}: the part of a slide recorded as done is missing; delete its "
                    f"record in {store / 'slides'} and run again"
                )
            if not missing:
                pack_shard(store, number, len(plan), wanted, seed)
        shards.append(Shard(name, sum(int(d["patches"]) for d in done)))
    if any(s is None for s in shards):
        return None
    return [s for s in shards if s is not None]


def _remove_parts(store: Path, entries: Sequence[SlideEntry]) -> None:
    for entry in entries:
        (store / "parts" / f"{entry.slide_id}.parquet").unlink(missing_ok=True)
    if (store / "parts").is_dir() and not any((store / "parts").iterdir()):
        (store / "parts").rmdir()
