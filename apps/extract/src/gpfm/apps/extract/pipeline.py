"""One read of a slide's tiles feeding several encoders.

Tiles are decoded by gpfm-slide's ``TileReader`` (each native tile of the file once, on threads)
and gathered into uint8 batches on a producer thread, which also applies each encoder's own
``transform`` (once per distinct preprocessing) and pins the batch for the GPU. The calling thread
only runs the models, so reading and preprocessing overlap compute.
"""

from __future__ import annotations

import contextlib
import queue
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

_END = object()


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

    def __call__(self, pixels: np.ndarray) -> Tensor:
        """(B, H, W, 3) uint8 -> (B, 3, H, W) float32, as the transform gives it."""
        planes = np.ascontiguousarray(pixels.transpose(0, 3, 1, 2))
        out = np.empty(planes.shape, np.float32)
        for channel in range(3):
            table = self.table[channel].reshape(256, 1)
            for index in range(planes.shape[0]):  # OpenCV's LUT: SIMD, without the GIL
                cv2.LUT(planes[index, channel], table, dst=out[index, channel])
        return torch.from_numpy(out)


def _preprocessing_key(encoder: Encoder) -> object:
    preprocessing = getattr(encoder, "preprocessing", None)
    return preprocessing if preprocessing is not None else id(encoder)


class _Producer(threading.Thread):
    """Reads tiles into batches and prepares each distinct preprocessing's input."""

    def __init__(
        self,
        reader: TileReader,
        encoders: Sequence[Encoder],
        batch_size: int,
        pin: bool,
        prefetch: int,
    ) -> None:
        super().__init__(name="gpfm-extract-batches", daemon=True)
        self.reader = reader
        self.encoders = encoders
        self.batch_size = batch_size
        self.pin = pin
        self.output: queue.Queue[Any] = queue.Queue(maxsize=prefetch)
        self.stop = threading.Event()
        # Encoders with the same preprocessing share one prepared batch.
        self.groups: dict[object, Encoder] = {}
        for encoder in encoders:
            self.groups.setdefault(_preprocessing_key(encoder), encoder)
        size = reader.tiles.patch_size
        self.tables = {key: PixelTable.for_encoder(e, size) for key, e in self.groups.items()}

    def _put(self, item: Any) -> bool:
        while not self.stop.is_set():
            try:
                self.output.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _prepare(self, pixels: np.ndarray) -> dict[object, Tensor]:
        tiles = torch.from_numpy(pixels).permute(0, 3, 1, 2)
        inputs = {}
        for key, encoder in self.groups.items():
            table = self.tables[key]
            batch = table(pixels) if table is not None else transformed(encoder, tiles)
            batch = batch.contiguous()
            inputs[key] = batch.pin_memory() if self.pin else batch
        return inputs

    def run(self) -> None:
        try:
            size = self.reader.tiles.patch_size
            pixels = np.empty((self.batch_size, size, size, 3), np.uint8)
            count = 0
            for _, tile in self.reader:
                pixels[count] = tile
                count += 1
                if count == self.batch_size:
                    if not self._put((count, self._prepare(pixels))):
                        return
                    pixels = np.empty_like(pixels)
                    count = 0
                if self.stop.is_set():
                    return
            if count and not self._put((count, self._prepare(pixels[:count]))):
                return
            self._put(_END)
        except BaseException as error:  # handed to the consumer, which re-raises it
            self._put(error)


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

    Returns:
        One (N, D) float32 array per encoder, in the order of ``encoders`` and of the tiles.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if not encoders:
        raise ValueError("no encoders given")
    device = encoders[0].device
    pin = device.type == "cuda"
    reader = TileReader(slide, tiles, num_workers=num_workers)
    producer = _Producer(reader, encoders, batch_size, pin, prefetch)
    keys = [_preprocessing_key(encoder) for encoder in encoders]
    outputs: list[list[np.ndarray]] = [[] for _ in encoders]
    autocast: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if precision != "fp32":
        autocast = torch.autocast(device.type, dtype=PRECISIONS[precision])
    producer.start()
    try:
        for count, inputs in _batches(producer):
            for encoder, key, collected in zip(encoders, keys, outputs, strict=True):
                batch = inputs[key].to(device, non_blocking=pin)
                if device.type == "cuda":
                    batch = batch.contiguous(memory_format=torch.channels_last)
                with autocast:
                    features = encoder(batch)
                collected.append(features.float().cpu().numpy())
            if on_batch is not None:
                on_batch(count)
    finally:
        producer.stop.set()
        producer.join()
    return [
        np.concatenate(parts) if parts else np.zeros((0, encoder.embed_dim), np.float32)
        for parts, encoder in zip(outputs, encoders, strict=True)
    ]


def _batches(producer: _Producer) -> Iterator[tuple[int, dict[object, Tensor]]]:
    while True:
        item = producer.output.get()
        if item is _END:
            return
        if isinstance(item, BaseException):
            raise item
        yield item
