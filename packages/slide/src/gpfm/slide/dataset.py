"""``PatchDataset``: the tiles of one slide as a torch Dataset."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from gpfm.slide.reader import read_tile
from gpfm.slide.slide import Slide, open_slide
from gpfm.slide.tiling import Tiles


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
