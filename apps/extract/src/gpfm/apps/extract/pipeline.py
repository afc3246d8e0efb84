"""One read of a slide's tiles feeding several encoders.

Tiles are decoded by gpfm-slide's ``TileReader`` (each native tile of the file once) in chunks of
up to 64 tiles. On the CPU, each chunk is turned into every encoder's input (its own
``transform``, once per distinct preprocessing) on the same decoding threads, while its pixels
are still in cache; the uint8 chunk arrays are then written again by later chunks. On a GPU,
a chunk stays uint8, pinned, crosses to the device (a quarter of the bytes of float32 inputs)
and is transformed there. The calling thread only joins chunks into batches and runs the
models, so reading and preprocessing overlap compute and no per-tile Python runs between the
decoder and the model.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor

from gpfm.backbone import Encoder
from gpfm.slide import Slide, TileReader, Tiles

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

_MAX_CHUNK = 64  # tiles per unit of the reader's thread work


def transformed(encoder: Encoder, tiles: Tensor) -> Tensor:
    """``encoder.transform`` applied to a (B, 3, H, W) uint8 batch at once (same as per tile)."""
    batch: Tensor = encoder.transform(tiles)
    return batch.as_subclass(Tensor)


class PixelTable:
    """``encoder.transform`` as a per-channel lookup table, for tiles it does not resize.

    When the resize and crop leave a tile of the model's input size as it is, what remains
    (scale to [0, 1], normalise) maps each channel's 0-255 value to one float: a table of
    3 x 256 values, made by the transform itself and so bit-identical to it, replaces several
    passes over the batch by one lookup. ``for_encoder`` returns None when the transform does
    more than that (or when a probe batch does not come out identical).
    """

    def __init__(self, table: np.ndarray) -> None:
        self.table = table  # (3, 256) float32

    @classmethod
    def for_encoder(cls, encoder: Encoder, tile_size: int) -> PixelTable | None:
        # Every 0-255 value in every channel, at the tile size, through the real transform.
        values = np.arange(tile_size * tile_size, dtype=np.int64) % 256
        probe = np.broadcast_to(
            values.reshape(tile_size, tile_size).astype(np.uint8), (3, tile_size, tile_size)
        )
        try:
            out = transformed(encoder, torch.from_numpy(probe.copy())[None])
        except Exception:
            return None
        if out.shape != (1, 3, tile_size, tile_size) or out.dtype != torch.float32:
            return None
        flat = out[0].reshape(3, -1).numpy()
        table = cls(np.ascontiguousarray(flat[:, :256]))
        # Elementwise only if every pixel of a value got that value's number.
        expected = table.table[:, values]
        if tile_size * tile_size < 256 or not np.array_equal(flat, expected):
            return None
        return table

    def __call__(self, pixels: np.ndarray, pin: bool = False, out: Tensor | None = None) -> Tensor:
        """(B, H, W, 3) uint8 -> (B, 3, H, W) float32, as the transform gives it (in pinned
        memory if ``pin``; written into ``out`` if given, a tensor of that shape)."""
        pixels = np.ascontiguousarray(pixels)
        count, height, width = pixels.shape[:3]
        batch = out
        if batch is None:
            batch = torch.empty((count, 3, height, width), dtype=torch.float32, pin_memory=pin)
        out_array = batch.numpy()
        planes = np.empty((3, height, width), np.uint8)
        tables = [self.table[channel].reshape(256, 1) for channel in range(3)]
        for index in range(count):  # OpenCV's split and LUT: SIMD, without the GIL
            cv2.split(pixels[index], [planes[0], planes[1], planes[2]])
            for channel in range(3):
                cv2.LUT(planes[channel], tables[channel], dst=out_array[index, channel])
        return batch


def _preprocessing_key(encoder: Encoder) -> object:
    preprocessing = getattr(encoder, "preprocessing", None)
    return preprocessing if preprocessing is not None else id(encoder)


_PIXELS = "pixels"  # the key of uint8 tiles sent to the device as they are


class _Inputs:
    """Turns a chunk of uint8 tiles into each distinct preprocessing's input (on reader threads).

    Inputs made by a ``PixelTable`` are written into tensors handed back by ``recycle`` once the
    models are done with them: fresh memory costs page faults, as much as the lookup itself.

    With ``on_device``, a chunk stays uint8 (pinned for the GPU) and each preprocessing runs on
    the device after the transfer (``on_device_inputs``): a quarter of the bytes cross to it,
    and the CPU only decodes.
    """

    def __init__(
        self, encoders: Sequence[Encoder], tile_size: int, pin: bool, on_device: bool = False
    ) -> None:
        self.pin = pin
        self.on_device = on_device
        # Encoders with the same preprocessing share one prepared batch.
        self.groups: dict[object, Encoder] = {}
        for encoder in encoders:
            self.groups.setdefault(_preprocessing_key(encoder), encoder)
        self.tables = {
            key: None if on_device else PixelTable.for_encoder(e, tile_size)
            for key, e in self.groups.items()
        }
        self._spares: dict[object, list[Tensor]] = {key: [] for key in self.groups}
        self._lock = threading.Lock()

    @property
    def copies(self) -> bool:
        """True when no input shares memory with the tiles (a table or pinning makes new ones)."""
        if self.on_device:
            return self.pin
        return all(table is not None for table in self.tables.values())

    def on_device_inputs(self, pixels: Tensor) -> dict[object, Tensor]:
        """Each preprocessing's input from (B, H, W, 3) uint8 tiles already on the device."""
        chw = pixels.permute(0, 3, 1, 2)
        return {key: transformed(encoder, chw) for key, encoder in self.groups.items()}

    def __call__(self, pixels: np.ndarray) -> tuple[int, dict[object, Tensor]]:
        if self.on_device:
            tiles = torch.from_numpy(pixels)
            return len(pixels), {_PIXELS: tiles.pin_memory() if self.pin else tiles}
        inputs = {}
        for key, encoder in self.groups.items():
            table = self.tables[key]
            if table is not None:
                inputs[key] = table(pixels, pin=self.pin, out=self._spare(key, len(pixels)))
                continue
            batch = transformed(encoder, torch.from_numpy(pixels).permute(0, 3, 1, 2))
            batch = batch.contiguous()
            inputs[key] = batch.pin_memory() if self.pin else batch
        return len(pixels), inputs

    def _spare(self, key: object, count: int) -> Tensor | None:
        with self._lock:
            spares = self._spares[key]
            return spares.pop() if spares and len(spares[-1]) == count else None

    def recycle(self, inputs: dict[object, Tensor]) -> None:
        """Hand back inputs of ``__call__`` that nothing uses any more."""
        with self._lock:
            for key, batch in inputs.items():
                if self.tables.get(key) is not None:
                    self._spares[key].append(batch)


@torch.inference_mode()
def encode_tiles(
    slide: Slide,
    tiles: Tiles,
    encoders: Sequence[Encoder],
    *,
    batch_size: int = 64,
    num_workers: int | None = None,
    precision: str = "fp32",
    prefetch: int = 3,
    on_batch: Callable[[int], None] | None = None,
    preprocess_on_device: bool | None = None,
) -> list[np.ndarray]:
    """Features of every tile for each encoder, reading and decoding the tiles once.

    Args:
        slide: the opened slide.
        tiles: its tiles (``tile`` or ``read_coords``).
        encoders: ready encoders, all on one device.
        batch_size: tiles per forward pass.
        num_workers: decoding threads of the tile reader (default: CPU count, at most 8).
        precision: "fp32", or "bf16"/"fp16" autocast (on the encoders' device).
        prefetch: prepared batches kept ahead of the models.
        on_batch: called with the number of tiles after each batch (progress bars).
        preprocess_on_device: run the encoders' transforms on their device, after uint8 tiles
            cross to it (a quarter of the bytes of float32 inputs), rather than on the
            decoding threads (default: on a GPU, yes; on the CPU, no). Features are the same
            up to the device's arithmetic.

    Returns:
        One (N, D) float32 array per encoder, in the order of ``encoders`` and of the tiles.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if not encoders:
        raise ValueError("no encoders given")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    device = encoders[0].device
    pin = device.type == "cuda"
    chunk_size = _chunk_size(batch_size)
    parts = batch_size // chunk_size
    workers = num_workers or min(8, os.cpu_count() or 1)
    reader = TileReader(
        slide,
        tiles,
        num_workers=workers,
        prefetch=max(1, math.ceil(prefetch * parts / workers)),
        chunk_size=chunk_size,
    )
    on_device = device.type == "cuda" if preprocess_on_device is None else preprocess_on_device
    prepare = _Inputs(encoders, tiles.patch_size, pin, on_device)
    keys = [_preprocessing_key(encoder) for encoder in encoders]
    outputs: list[list[np.ndarray]] = [[] for _ in encoders]
    autocast: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if precision != "fp32":
        autocast = torch.autocast(device.type, dtype=PRECISIONS[precision])
    chunks = reader.map_chunks(prepare, recycle=prepare.copies)
    for count, inputs, parts_used in _batches(chunks, parts, prepare, device, pin):
        for encoder, key, collected in zip(encoders, keys, outputs, strict=True):
            with autocast:
                features = encoder(inputs[key])
            collected.append(features.float().cpu().numpy())  # waits for the device
        del inputs
        for used in parts_used:
            prepare.recycle(used)
        if on_batch is not None:
            on_batch(count)
    return [
        np.concatenate(parts) if parts else np.zeros((0, encoder.embed_dim), np.float32)
        for parts, encoder in zip(outputs, encoders, strict=True)
    ]


def _chunk_size(batch_size: int) -> int:
    """Tiles per chunk of the reader: a batch is made of whole chunks, one when it is small,
    else a few of 32-64 tiles (thread work not too coarse, bounded memory in flight)."""
    if batch_size <= _MAX_CHUNK:
        return batch_size
    divisors = [
        size for size in range(_MAX_CHUNK, _MAX_CHUNK // 2 - 1, -1) if batch_size % size == 0
    ]
    return divisors[0] if divisors else batch_size


def _batches(
    chunks: Iterator[tuple[int, tuple[int, dict[object, Tensor]]]],
    parts: int,
    prepare: _Inputs,
    device: torch.device,
    pin: bool,
) -> Iterator[tuple[int, dict[object, Tensor], list[dict[object, Tensor]]]]:
    """Batches of ``parts`` consecutive chunks each, on ``device``, keyed by preprocessing, with
    the chunks' own inputs (free to reuse once the batch is through the models)."""
    pending: list[dict[object, Tensor]] = []
    count = 0
    for _, (size, inputs) in chunks:
        pending.append(inputs)
        count += size
        if len(pending) == parts:
            yield count, _joined(pending, prepare, device, pin), pending
            pending, count = [], 0
    if pending:
        yield count, _joined(pending, prepare, device, pin), pending


def _joined(
    pending: list[dict[object, Tensor]], prepare: _Inputs, device: torch.device, pin: bool
) -> dict[object, Tensor]:
    joined = {}
    for key in pending[0]:
        parts = [inputs[key].to(device, non_blocking=pin) for inputs in pending]
        joined[key] = parts[0] if len(parts) == 1 else torch.cat(parts)
    if prepare.on_device:
        joined = prepare.on_device_inputs(joined[_PIXELS])
    if device.type == "cuda":
        joined = {
            key: batch.contiguous(memory_format=torch.channels_last)
            for key, batch in joined.items()
        }
    return joined
