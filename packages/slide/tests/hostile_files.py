"""Hostile slide files for the fuzz and kill tests: damaged, truncated and lying, made on the fly.

Every maker writes one file and returns its path; ``CASES`` lists the fuzz cases by name. Nothing
here knows what gpfm.slide should answer: the tests check that.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import imagecodecs
import numpy as np
import tifffile

# TIFF tag codes and field types used by the hand-written files.
_SHORT, _LONG, _RATIONAL, _ASCII = 3, 4, 5, 2
EXTENSIONS = [
    ".svs", ".tif", ".tiff", ".ndpi", ".scn", ".bif", ".mrxs", ".vms", ".dcm",
    ".ome.tif", ".png", ".jpg", ".jpeg", "",
]  # fmt: skip


def tiled_tiff(
    path: Path,
    width: int,
    height: int,
    tile: int,
    tiles: list[bytes] | None = None,
    *,
    description: str | None = None,
    x_resolution: tuple[int, int] | None = None,
    resolution_unit: int = 3,
) -> Path:
    """A one-level tiled, JPEG-compressed (YCbCr) classic TIFF written byte by byte.

    ``tiles`` are the stored tiles' bytes, row-major; missing ones (or all, when None) are
    written as empty (offset 0, byte count 0), which readers treat as never scanned. The header
    says ``width`` x ``height`` whatever the tiles hold: that is how a lying file is made.
    """
    count = math.ceil(width / max(1, tile)) * math.ceil(height / max(1, tile))
    tiles = list(tiles or [])
    tiles += [b""] * (count - len(tiles))
    entries: list[tuple[int, int, list[int] | bytes]] = [
        (254, _LONG, [0]),
        (256, _LONG, [width]),
        (257, _LONG, [height]),
        (258, _SHORT, [8, 8, 8]),
        (259, _SHORT, [7]),
        (262, _SHORT, [6]),
        (277, _SHORT, [3]),
        (284, _SHORT, [1]),
        (322, _LONG, [tile]),
        (323, _LONG, [tile]),
        (324, _LONG, [0] * count),  # offsets, filled in below
        (325, _LONG, [len(t) for t in tiles]),
        (530, _SHORT, [2, 2]),
    ]
    if description is not None:
        entries.append((270, _ASCII, description.encode() + b"\0"))
    if x_resolution is not None:
        entries += [(282, _RATIONAL, list(x_resolution)), (283, _RATIONAL, list(x_resolution))]
        entries.append((296, _SHORT, [resolution_unit]))
    entries.sort(key=lambda entry: entry[0])
    raws = [_raw(kind, values) for _, kind, values in entries]
    tiles_start = 8 + 2 + 12 * len(entries) + 4 + sum(len(r) for r in raws if len(r) > 4)
    offsets, position = [], tiles_start
    for data in tiles:
        offsets.append(position if data else 0)
        position += len(data)
    raws = [
        _raw(_LONG, offsets) if code == 324 else raw
        for (code, _, _), raw in zip(entries, raws, strict=True)
    ]
    head = bytearray(b"II*\0" + struct.pack("<IH", 8, len(entries)))
    external = bytearray()
    for (code, kind, values), raw in zip(entries, raws, strict=True):
        number = len(values) // 2 if kind == _RATIONAL else len(values)
        head += struct.pack("<HHI", code, kind, number)
        if len(raw) <= 4:
            head += raw.ljust(4, b"\0")
        else:
            head += struct.pack("<I", 8 + 2 + 12 * len(entries) + 4 + len(external))
            external += raw
    head += struct.pack("<I", 0)
    path.write_bytes(bytes(head + external) + b"".join(tiles))
    return path


def _raw(kind: int, values: list[int] | bytes) -> bytes:
    if isinstance(values, bytes):
        return values
    code = {_SHORT: "H", _LONG: "I", _RATIONAL: "I"}[kind]
    return struct.pack(f"<{len(values)}{code}", *values)


def _flip(data: bytearray, rng: np.random.Generator, start: int, stop: int, count: int) -> None:
    for position in rng.integers(start, max(start + 1, stop), count):
        data[int(position)] ^= int(rng.integers(1, 256))


def _with_tags(base: Path, path: Path, patch: Callable[[bytearray, dict[str, Any]], None]) -> Path:
    """A copy of ``base`` with ``patch(data, tags of level 0)`` applied to its bytes."""
    data = bytearray(base.read_bytes())
    with tifffile.TiffFile(base) as tiff:
        page = tiff.pages[0]
        tags = {tag.name: tag for tag in page.tags}
        tags["_offsets"], tags["_counts"] = page.dataoffsets, page.databytecounts
        patch(data, tags)
    path.write_bytes(bytes(data))
    return path


def _set_long(data: bytearray, tag: Any, value: int, index: int = 0) -> None:
    if tag.count * (4 if tag.dtype == 4 else 2) > 4:  # values stored elsewhere
        struct.pack_into("<I" if tag.dtype == 4 else "<H", data, tag.valueoffset + 4 * index, value)
    else:
        struct.pack_into("<HHI", data, tag.offset + 2, 4, 1, value)


def make_cases(base: Path, folder: Path) -> dict[str, Callable[[], Path]]:
    """Every fuzz case: name -> a function that writes the damaged file and returns its path.

    ``base`` is a small pyramidal JPEG TIFF (``make_synthetic_slide``); the cases are made
    from it, from random bytes and from hand-written TIFFs, with fixed seeds.
    """
    cases: dict[str, Callable[[], Path]] = {}
    size = base.stat().st_size

    def add(name: str, make: Callable[[Path], Path], suffix: str = ".tiff") -> None:
        cases[name] = lambda: make(folder / f"{name}{suffix}")

    for number, suffix in enumerate(EXTENSIONS):
        noise = np.random.default_rng(number).bytes(4096)
        add(f"random{suffix or '-no-extension'}", lambda p, n=noise: _write(p, n), suffix)
    add("empty", lambda p: _write(p, b""), ".svs")
    add("tiff-magic-then-noise", lambda p: _write(p, b"II*\0" + bytes(4092)), ".tif")
    for fraction in (0.0005, 0.002, 0.01, 0.05, 0.2, 0.5, 0.8, 0.95, 0.999):
        add(
            f"truncated-{fraction}",
            lambda p, f=fraction: _write(p, base.read_bytes()[: int(size * f)]),
        )
    for number in range(16):

        def flip_tiles(data: bytearray, tags: dict[str, Any], seed: int = number) -> None:
            local = np.random.default_rng(seed)
            offsets, counts = tags["_offsets"], tags["_counts"]
            for index in local.choice(len(offsets), 1 + seed % 4, replace=False):
                start = int(offsets[index])
                _flip(data, local, start, start + int(counts[index]), 1 + seed % 8)

        add(f"flipped-tile-bytes-{number}", lambda p, f=flip_tiles: _with_tags(base, p, f))

    def cut_tile(data: bytearray, tags: dict[str, Any], keep: float) -> None:
        index = len(tags["_counts"]) // 2
        _set_long(data, tags["TileByteCounts"], int(tags["_counts"][index] * keep), index)

    for keep in (0.0, 0.1, 0.5, 0.9):
        add(
            f"short-tile-{keep}",
            lambda p, k=keep: _with_tags(base, p, lambda d, t: cut_tile(d, t, k)),
        )
    add(
        "tile-offset-past-end",
        lambda p: _with_tags(base, p, lambda d, t: _set_long(d, t["TileOffsets"], 2**31, 1)),
    )
    add(
        "tile-bytes-zeroed",
        lambda p: _with_tags(base, p, lambda d, t: _zero_tile(d, t, 2)),
    )
    for number in range(8):

        def flip_header(data: bytearray, tags: dict[str, Any], seed: int = number) -> None:
            local = np.random.default_rng(100 + seed)
            _flip(data, local, 0, min(int(tags["_offsets"][0]), len(data)), 1 + seed % 3)

        add(f"flipped-header-bytes-{number}", lambda p, f=flip_header: _with_tags(base, p, f))
    for tile in (16384, 65520):
        add(
            f"lying-1e6-px-tiles-{tile}",
            lambda p, t=tile: tiled_tiff(p, 10**6, 10**6, t, x_resolution=(20000, 1)),
        )
    add("lying-4e9-px-wide", lambda p: tiled_tiff(p, 2**32 - 1, 256, 65520))
    add(
        "lying-size-over-real-tiles",
        lambda p: _with_tags(
            base,
            p,
            lambda d, t: (
                _set_long(d, t["ImageWidth"], 10**6),
                _set_long(d, t["ImageLength"], 10**6),
            ),
        ),
    )
    add("tile-size-zero", lambda p: tiled_tiff(p, 512, 512, 0))
    jpeg = _glass_jpeg()
    for text in ("-nan", "nan", "abc", "1e999", "", "0", "-0.5", "inf", "0.25.3", "٣"):
        description = (
            f"Aperio Image Library v12.0.5\r\n512x512 (256x256) JPEG/YCbCr|AppMag = 20|MPP = {text}"
        )
        add(
            f"aperio-mpp-{text or 'empty'}",
            lambda p, d=description: tiled_tiff(p, 512, 512, 256, [jpeg] * 4, description=d),
            ".svs",
        )
    for x_resolution in ((0, 0), (1, 0), (0, 1), (2**32 - 1, 1), (1, 2**32 - 1)):
        name = f"x-resolution-{x_resolution[0]}-{x_resolution[1]}"
        add(
            name, lambda p, r=x_resolution: tiled_tiff(p, 512, 512, 256, [jpeg] * 4, x_resolution=r)
        )
    add(
        "resolution-unit-99",
        lambda p: tiled_tiff(
            p, 512, 512, 256, [jpeg] * 4, x_resolution=(20000, 1), resolution_unit=99
        ),
    )
    return cases


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _zero_tile(data: bytearray, tags: dict[str, Any], index: int) -> None:
    start = int(tags["_offsets"][index])
    data[start : start + int(tags["_counts"][index])] = bytes(int(tags["_counts"][index]))


def _glass_jpeg() -> bytes:
    rgb = np.full((256, 256, 3), 236, np.uint8)
    rgb[64:192, 64:192] = (200, 110, 170)  # some 'tissue'
    return bytes(
        imagecodecs.jpeg8_encode(
            rgb, level=80, colorspace="RGB", outcolorspace="YCBCR", subsampling=(2, 2)
        )
    )
