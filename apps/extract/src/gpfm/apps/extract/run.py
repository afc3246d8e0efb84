"""``extract``: slides -> tissue -> tiles -> features of several encoders, resumable.

Per slide, in ``OUT``: ``coords/<id>.h5`` (when tiling here), ``qc/<id>.png``,
``features/<encoder>/<id>.h5`` per encoder, one line in ``manifest.jsonl``; ``locks/<id>.lock``
while a process works on it. Every file is written atomically, the QC image before the coords
and the coords before the features, so a run killed at any moment leaves only whole files, and a
run started again redoes exactly what is missing.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from tqdm import tqdm

from gpfm.apps.extract.inputs import SlideInput, find_slides
from gpfm.apps.extract.locks import release, try_lock
from gpfm.apps.extract.pipeline import PRECISIONS, encode_tiles
from gpfm.backbone import Encoder, load_encoder
from gpfm.backbone.errors import BackboneError
from gpfm.heads import write_features
from gpfm.slide import (
    Slide,
    Tiles,
    open_slide,
    read_coords,
    segment_tissue,
    tile,
    write_coords,
    write_qc_image,
)
from gpfm.slide.storage import append_json_line, atomic_path, coords_attributes

logger = logging.getLogger("gpfm.apps.extract")

MANIFEST = "manifest.jsonl"
UNKNOWN_WEIGHTS = "none"  # how feature files record weights of unknown provenance


@dataclass(frozen=True)
class Settings:
    """How tiles are made and read; recorded in ``extract_config.json``."""

    mpp: float = 0.5
    patch_size: int = 224
    min_tissue: float = 0.5
    tissue_mpp: float = 8.0
    slide_mpp: float | None = None
    coords_dir: str | None = None
    batch_size: int = 64
    num_workers: int | None = None
    precision: str = "fp32"


@dataclass
class Summary:
    """What a run did: one manifest record per slide it handled, and the encoders that failed."""

    records: list[dict[str, Any]] = field(default_factory=list)
    encoder_errors: dict[str, str] = field(default_factory=dict)

    def count(self, status: str) -> int:
        return sum(record["status"] == status for record in self.records)

    @property
    def ok(self) -> bool:
        return not self.encoder_errors and self.count("failed") == 0

    def __str__(self) -> str:
        text = (
            f"{self.count('done')} done, {self.count('skipped')} skipped, "
            f"{self.count('failed')} failed"
        )
        if self.encoder_errors:
            text += f"; encoders not loaded: {', '.join(self.encoder_errors)}"
        return text


def load_encoders(
    names: Sequence[str | Encoder],
    weights: Mapping[str, str | os.PathLike[str]] | None,
    device: torch.device,
    random_init: bool,
) -> tuple[list[Encoder], dict[str, str]]:
    """Encoders by name (zoo name or exported folder); failures as ``{name: reason}``.

    Random weights (``random_init``) are seeded, so every process and every run gets the same.

    Raises:
        UnknownEncoderError: a name that is not in the zoo (the message lists the known ones).
    """
    from gpfm.backbone import UnknownEncoderError

    weights = dict(weights or {})
    unknown = set(weights) - {n for n in names if isinstance(n, str)}
    if unknown:
        raise ValueError(f"--weights given for {sorted(unknown)}, which is not in --encoder")
    encoders: list[Encoder] = []
    errors: dict[str, str] = {}
    for name in names:
        if isinstance(name, Encoder):
            encoders.append(name)
            continue
        try:
            with torch.random.fork_rng(devices=[]):  # the caller's random state is left alone
                torch.manual_seed(0)
                encoder = load_encoder(
                    name,
                    weights=weights.get(name),
                    device=device,
                    random_init=random_init and name not in weights,
                )
        except UnknownEncoderError:
            raise
        except (BackboneError, OSError, ValueError) as error:
            errors[name] = f"{type(error).__name__}: {error}"
            continue
        encoders.append(encoder.eval())
    return encoders, errors


def features_path(out: Path, encoder: Encoder, slide_id: str) -> Path:
    """Where a slide's features from ``encoder`` go: ``features/<encoder>/<slide_id>.h5``."""
    return out / "features" / encoder.name / f"{slide_id}.h5"


def features_valid(path: Path, encoder: Encoder, tiles: Tiles) -> bool:
    """True when ``path`` holds this encoder's features (same weights) for exactly ``tiles``."""
    if not path.is_file():
        return False
    try:
        with h5py.File(path, "r") as h5:
            attrs = h5.attrs
            return bool(
                attrs.get("encoder") == encoder.name
                and attrs.get("weights_sha256") == (encoder.weights_sha256 or UNKNOWN_WEIGHTS)
                and int(attrs.get("patch_size", -1)) == tiles.patch_size
                and math.isclose(float(attrs.get("mpp", math.nan)), tiles.mpp, rel_tol=1e-9)
                and h5["features"].shape == (len(tiles), encoder.embed_dim)
                and np.array_equal(h5["coords"][:], tiles.coords)
            )
    except Exception as error:  # unreadable: redo it
        logger.info("%s: not a valid feature file (%r); extracting again", path, error)
        return False


def _own_tiles_valid(tiles: Tiles, settings: Settings, slide_mpp: float | None) -> bool:
    return (
        math.isclose(tiles.mpp, settings.mpp)
        and tiles.patch_size == settings.patch_size
        and math.isclose(tiles.min_tissue, settings.min_tissue)
        and (slide_mpp is None or math.isclose(tiles.slide_mpp, slide_mpp))
    )


class _SlideJob:
    """Extraction of one slide into ``out`` (the steps of the module docstring)."""

    def __init__(
        self,
        item: SlideInput,
        out: Path,
        encoders: Sequence[Encoder],
        settings: Settings,
        on_tiles: Callable[[int, int], None] | None,
    ) -> None:
        self.item = item
        self.out = out
        self.encoders = encoders
        self.settings = settings
        self.on_tiles = on_tiles
        self.slide_mpp = item.mpp if item.mpp is not None else settings.slide_mpp
        self.coords_path = (
            Path(settings.coords_dir) / f"{item.slide_id}.h5"
            if settings.coords_dir
            else out / "coords" / f"{item.slide_id}.h5"
        )
        self.qc_path = out / "qc" / f"{item.slide_id}.png"
        self.timings: dict[str, float] = {}

    def existing_tiles(self, slide: Slide | None = None) -> Tiles | None:
        """The tiles already made for this slide, if they fit the settings."""
        if not self.coords_path.is_file():
            if self.settings.coords_dir:
                raise FileNotFoundError(
                    f"{self.coords_path}: no coords file for slide {self.item.slide_id} in "
                    "--coords; tile it with gpfm-slide tile, or leave --coords out"
                )
            return None
        tiles = read_coords(self.coords_path, slide)
        if self.settings.coords_dir or _own_tiles_valid(tiles, self.settings, self.slide_mpp):
            return tiles
        return None

    def done(self) -> bool:
        """Whether every encoder's features of this slide exist and validate (never raises)."""
        try:
            return not self.pending(self.existing_tiles())
        except Exception:  # e.g. a CLAM coords file needs the slide: decide when it is open
            return False

    def pending(self, tiles: Tiles | None) -> list[Encoder]:
        """The encoders whose features of this slide are missing or stale."""
        if tiles is None:
            return list(self.encoders)
        return [
            e
            for e in self.encoders
            if not features_valid(features_path(self.out, e, self.item.slide_id), e, tiles)
        ]

    def _timed(self, name: str, start: float) -> None:
        self.timings[name] = round(time.perf_counter() - start, 3)

    def _make_tiles(self, slide: Slide) -> Tiles:
        settings = self.settings
        mark = time.perf_counter()
        tissue = segment_tissue(slide, mpp=settings.tissue_mpp)
        self._timed("tissue_s", mark)
        mark = time.perf_counter()
        tiles = tile(
            slide,
            mpp=settings.mpp,
            patch_size=settings.patch_size,
            min_tissue=settings.min_tissue,
            tissue=tissue,
        )
        self._timed("tile_s", mark)
        if len(tiles):
            # QC first: an existing coords file means its QC image exists too.
            write_qc_image(self.qc_path, slide, tiles, tissue)
            write_coords(self.coords_path, tiles)
        return tiles

    def run(self) -> dict[str, Any]:
        start = time.perf_counter()
        with open_slide(self.item.path, mpp=self.slide_mpp) as slide:
            self._timed("open_s", start)
            tiles = self.existing_tiles(slide)
            if tiles is None:
                tiles = self._make_tiles(slide)
            elif not self.qc_path.is_file():
                write_qc_image(self.qc_path, slide, tiles)
            if len(tiles) == 0:
                raise ValueError(
                    f"no tissue tiles (min_tissue={self.settings.min_tissue}, "
                    f"{self.settings.patch_size} px at {self.settings.mpp} µm/px): the slide is "
                    "blank, or lower --min-tissue"
                )
            todo = self.pending(tiles)
            mark = time.perf_counter()
            features: list[np.ndarray] = []
            if todo:
                features = encode_tiles(
                    slide,
                    tiles,
                    todo,
                    batch_size=self.settings.batch_size,
                    num_workers=self.settings.num_workers,
                    precision=self.settings.precision,
                    on_batch=None if self.on_tiles is None else self._progress(len(tiles)),
                )
            seconds = time.perf_counter() - mark
            self._timed("encode_s", mark)
        mark = time.perf_counter()
        outputs = {}
        for encoder, rows in zip(todo, features, strict=True):
            path = features_path(self.out, encoder, self.item.slide_id)
            write_features(
                path,
                rows,
                tiles.coords,
                encoder=encoder.name,
                mpp=tiles.mpp,
                patch_size=tiles.patch_size,
                weights_sha256=encoder.weights_sha256,
                coords_attrs=coords_attributes(tiles),
            )
            outputs[encoder.name] = str(path.relative_to(self.out))
        self._timed("write_s", mark)
        self._timed("total_s", start)
        return {
            "num_tiles": len(tiles),
            "tiles_per_s": round(len(tiles) / max(seconds, 1e-9), 1),
            "encoders": [e.name for e in todo],
            "already_done": [e.name for e in self.encoders if e not in todo],
            "slide_mpp": tiles.slide_mpp,
            "outputs": outputs,
            "timings": self.timings,
        }

    def _progress(self, total: int) -> Callable[[int], None]:
        on_tiles = self.on_tiles
        assert on_tiles is not None
        on_tiles(0, total)
        return lambda count: on_tiles(count, total)


def _distribution() -> tuple[int, int]:
    """(this process's index, number of processes) under ``accelerate launch``/torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def extract(
    inputs: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    out: str | os.PathLike[str],
    encoders: Sequence[str | Encoder] | str,
    weights: Mapping[str, str | os.PathLike[str]] | None = None,
    *,
    coords: str | os.PathLike[str] | None = None,
    mpp: float = 0.5,
    patch_size: int = 224,
    min_tissue: float = 0.5,
    tissue_mpp: float = 8.0,
    slide_mpp: float | None = None,
    batch_size: int = 64,
    num_workers: int | None = None,
    precision: str = "fp32",
    random_init: bool = False,
    device: str | torch.device | None = None,
    process_index: int | None = None,
    num_processes: int | None = None,
    progress: bool = False,
) -> Summary:
    """Extract the features of slides with one or several encoders into ``out``.

    Args:
        inputs: a folder, slide files, or a CSV with ``slide_path`` (optional ``slide_id``,
            ``mpp``).
        out: the output folder (see the module docstring for its layout).
        encoders: zoo names, exported encoder folders or ready ``Encoder`` objects (a string
            may list several, comma-separated).
        weights: ``{encoder name: weights file, folder or hf-hub:id}``.
        coords: a ``gpfm-slide tile`` output's ``coords`` folder to use instead of tiling.
        mpp: tile resolution in µm/px.
        patch_size: tile side in pixels at ``mpp``.
        min_tissue: tissue fraction a tile needs to be kept.
        tissue_mpp: resolution of the tissue mask, µm/px.
        slide_mpp: level-0 µm/px of slides whose files record none (or a wrong one).
        batch_size: tiles per forward pass.
        num_workers: tile-decoding threads (default: CPU count, at most 8).
        precision: "fp32", "bf16" or "fp16" (autocast).
        random_init: zoo encoders without weights get seeded random ones (tests, demos).
        device: where the models run (default: CUDA device of this process if any, else CPU).
        process_index, num_processes: this process's share of the slides (default: from the
            ``accelerate launch``/torchrun environment); slide ``i`` goes to process
            ``i % num_processes``.
        progress: show progress bars (slides, and the current slide's tiles).

    Returns:
        The summary (one manifest record per slide this process handled).

    Raises:
        UnknownEncoderError: an encoder name that is not in the zoo.
        InputError: ``inputs`` names no slide, or two slides share an id.
    """
    out = Path(out)
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    rank, world = _distribution()
    rank = rank if process_index is None else process_index
    world = world if num_processes is None else num_processes
    if device is None:
        local = int(os.environ.get("LOCAL_RANK", 0))
        device = f"cuda:{local}" if torch.cuda.is_available() else "cpu"
    names: Sequence[str | Encoder] = (
        [n.strip() for n in encoders.split(",") if n.strip()]
        if isinstance(encoders, str)
        else encoders
    )
    items = find_slides([inputs] if isinstance(inputs, str | os.PathLike) else inputs)
    settings = Settings(
        mpp=mpp,
        patch_size=patch_size,
        min_tissue=min_tissue,
        tissue_mpp=tissue_mpp,
        slide_mpp=slide_mpp,
        coords_dir=None if coords is None else str(coords),
        batch_size=batch_size,
        num_workers=num_workers,
        precision=precision,
    )
    loaded, errors = load_encoders(names, weights, torch.device(device), random_init)
    summary = Summary(encoder_errors=errors)
    out.mkdir(parents=True, exist_ok=True)
    manifest = out / MANIFEST
    if rank == 0:
        with atomic_path(out / "extract_config.json") as temporary:
            config = {**asdict(settings), "encoders": [e.name for e in loaded]}
            temporary.write_text(json.dumps(config, indent=2))
    for name, reason in errors.items():
        append_json_line(manifest, {"encoder": name, "status": "failed", "error": reason})
        logger.error("encoder %s not loaded: %s", name, reason)
    if not loaded:
        return summary
    mine = items[rank::world]
    slide_bar = tqdm(mine, desc="slides", unit="slide", disable=not progress, position=0)
    tile_bar = tqdm(desc="tiles", unit="tile", disable=not progress, position=1, leave=False)

    def on_tiles(count: int, total: int) -> None:
        if tile_bar.total != total:
            tile_bar.reset(total=total)
        tile_bar.update(count)

    for item in slide_bar:
        slide_bar.set_postfix_str(item.slide_id)
        record = _one_slide(item, out, loaded, settings, on_tiles if progress else None)
        record["process"] = rank
        append_json_line(manifest, record)
        summary.records.append(record)
        if record["status"] == "failed":
            tqdm.write(f"failed: {item.path}: {record['error']}", file=sys.stderr)
    tile_bar.close()
    return summary


def _one_slide(
    item: SlideInput,
    out: Path,
    encoders: Sequence[Encoder],
    settings: Settings,
    on_tiles: Callable[[int, int], None] | None,
) -> dict[str, Any]:
    record: dict[str, Any] = {"slide_id": item.slide_id, "path": str(item.path)}
    job = _SlideJob(item, out, encoders, settings, on_tiles)
    lock = out / "locks" / f"{item.slide_id}.lock"
    try:
        if job.done():
            return {**record, "status": "skipped", "reason": "done by an earlier run"}
        if not try_lock(lock):
            return {**record, "status": "skipped", "reason": f"locked by another run ({lock})"}
        try:
            # Checked again under the lock: another run may have finished it meanwhile.
            if job.done():
                return {**record, "status": "skipped", "reason": "done by an earlier run"}
            return {**record, "status": "done", **job.run()}
        finally:
            release(lock)
    except Exception as error:  # one bad slide must not stop the batch
        logger.debug("%s", traceback.format_exc())
        return {
            **record,
            "status": "failed",
            "error": f"{type(error).__name__}: {error}",
            "timings": job.timings,
        }
