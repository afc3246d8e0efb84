"""Tiles as torch Datasets: ``PatchDataset`` for one slide, ``MultiSlidePatchDataset`` for a
sample of tiles from each of many slides (e.g. pretraining on a cohort)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from gpfm.slide.errors import SlideError
from gpfm.slide.reader import read_tile
from gpfm.slide.slide import Slide, open_slide
from gpfm.slide.storage import read_coords
from gpfm.slide.tiling import Tiles

logger = logging.getLogger(__name__)

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".mrxs", ".scn", ".vms", ".bif", ".dcm")
"""Where a slide is searched for by its coords file's name, in this order."""


class PatchDataset(Dataset[Any]):
    """Tiles of one slide, ``patch_size``-square RGB at the tiles' target mpp.

    Items are ``transform(tile)`` where ``tile`` is a (patch_size, patch_size, 3) uint8 numpy
    array, or, without a transform, a (3, patch_size, patch_size) uint8 tensor. Safe with
    DataLoader worker processes: each process opens the slide itself on first use, with the
    slide mpp recorded in ``tiles`` (so an ``mpp=`` override made when tiling is kept).

    Args:
        slide_path: the slide file.
        tiles: its tiles (from ``tile`` or ``read_coords``).
        transform: applied to each uint8 HxWx3 tile (e.g. a torchvision v2 transform).
        backend: force a slide backend (see ``open_slide``).
    """

    def __init__(
        self,
        slide_path: str | Path,
        tiles: Tiles,
        transform: Callable[[np.ndarray], Any] | None = None,
        backend: str | None = None,
    ) -> None:
        self.slide_path = Path(slide_path)
        self.tiles = tiles
        self.transform = transform
        self.backend = backend
        self._slide: Slide | None = None
        self._pid: int | None = None

    def _open(self) -> Slide:
        # A handle inherited through fork is shared with the parent: open our own per process.
        if self._slide is None or self._pid != os.getpid():
            self._slide = open_slide(
                self.slide_path, mpp=self.tiles.slide_mpp, backend=self.backend
            )
            self._pid = os.getpid()
        return self._slide

    def __len__(self) -> int:
        return len(self.tiles)

    def __getitem__(self, index: int) -> Any:
        if not -len(self) <= index < len(self):
            raise IndexError(f"tile {index} out of range for {len(self)} tiles")
        tile = read_tile(self._open(), self.tiles, index % len(self))
        if self.transform is not None:
            return self.transform(tile)
        return torch.from_numpy(np.ascontiguousarray(tile.transpose(2, 0, 1)))

    def coords(self, index: int) -> tuple[int, int]:
        """Top-left (x, y) of tile ``index`` in level-0 pixels."""
        x, y = self.tiles.coords[index]
        return int(x), int(y)

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_slide"] = None  # slide handles do not pickle; workers reopen
        state["_pid"] = None
        return state

    def close(self) -> None:
        if self._slide is not None:
            self._slide.close()
            self._slide = None


class MultiSlidePatchDataset(ConcatDataset[Any]):
    """Up to ``per_slide`` tiles drawn at random (seeded) from each slide's coords file.

    Each slide is found where its coords file records it (``Tiles.slide_path``), else in
    ``slides_dir`` under the coords file's name with a slide suffix (``SLIDE_SUFFIXES``).
    Items are those of ``PatchDataset``; the same ``seed`` draws the same tiles.

    Args:
        coords: a folder of coords files (``*.h5``, from ``gpfm-slide tile``) or a list of them.
        per_slide: tiles drawn from each slide (all of them when it has fewer).
        seed: seeds the draw.
        slides_dir: where slides are, if the coords files do not record a path that exists.
        transform: applied to each uint8 HxWx3 tile.

    Raises:
        SlideError: no coords files, no tiles at all, or a slide that cannot be found.
    """

    def __init__(
        self,
        coords: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
        per_slide: int,
        seed: int = 0,
        slides_dir: str | os.PathLike[str] | None = None,
        transform: Callable[[np.ndarray], Any] | None = None,
    ) -> None:
        if per_slide < 1:
            raise ValueError(f"per_slide must be at least 1, got {per_slide}")
        if isinstance(coords, str | os.PathLike):
            folder = Path(coords)
            files = sorted(folder.glob("*.h5"))
            if not files:
                raise SlideError(f"{folder}: no coords files (*.h5); run gpfm-slide tile first")
        else:
            files = [Path(path) for path in coords]
        rng = np.random.default_rng(seed)
        datasets: list[PatchDataset] = []
        for path in files:
            tiles = read_coords(path)
            if len(tiles) == 0:
                logger.warning("%s: no tiles; skipped", path)
                continue
            chosen = np.sort(rng.choice(len(tiles), size=min(per_slide, len(tiles)), replace=False))
            subset = replace(
                tiles, coords=tiles.coords[chosen], tissue_fraction=tiles.tissue_fraction[chosen]
            )
            slide = find_slide(tiles, path, slides_dir)
            datasets.append(PatchDataset(slide, subset, transform))
        if not datasets:
            raise SlideError(f"no tiles in {len(files)} coords files")
        super().__init__(datasets)
        self.slides: list[PatchDataset] = datasets
        logger.info("%d slides, %d patches", len(datasets), len(self))


def find_slide(
    tiles: Tiles, coords_path: str | os.PathLike[str], slides_dir: str | os.PathLike[str] | None
) -> Path:
    """The slide of a coords file: its recorded path, else ``slides_dir/<stem><suffix>``.

    Raises:
        SlideError: neither exists; the message says to pass ``slides_dir``.
    """
    if tiles.slide_path and Path(tiles.slide_path).is_file():
        return Path(tiles.slide_path)
    stem = Path(coords_path).stem
    if slides_dir:
        for suffix in SLIDE_SUFFIXES:
            candidate = Path(slides_dir) / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
    raise SlideError(
        f"{coords_path}: its slide ({tiles.slide_path or stem}) was not found; pass the folder "
        "that holds it as slides_dir"
    )
