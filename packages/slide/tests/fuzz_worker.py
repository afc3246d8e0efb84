"""Runs fuzz cases, each in a forked child with a memory and time limit; one JSON line per case.

    python fuzz_worker.py BASE_TIFF FOLDER SHARD SHARDS

The worker imports gpfm.slide once, then forks a child per case (the worker runs no threads, so
forking is safe). The child caps its address space (RLIMIT_AS) and CPU time, opens the damaged
file and, if that works, reads a thumbnail, segments tissue, tiles, and reads every tile both
with ``read_tile`` (the reference) and ``read_tiles`` (the fast path). The worker kills a child
that outlives the wall-clock limit. Used by test_fuzz.py; not a test module itself.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import hostile_files
import numpy as np

from gpfm.slide import SlideError, open_slide, read_tile, read_tiles, segment_tissue, tile
from gpfm.slide.errors import MissingResolutionError

MEMORY_BYTES = 1536 * 2**20  # address space a case may add to the worker's
SECONDS = 30


def _error(error: Exception, path: Path) -> dict[str, Any]:
    return {
        "error": type(error).__name__,
        "names_file": path.name in str(error),
        "message": str(error)[:300],
    }


def check(path: Path) -> dict[str, Any]:
    """What gpfm.slide makes of the file at ``path``; {"crash": ...} for an untyped failure."""
    result: dict[str, Any] = {}
    try:
        try:
            slide = open_slide(path)
        except MissingResolutionError as error:
            result["open"] = _error(error, path)
            slide = open_slide(path, mpp=0.5)
    except SlideError as error:
        result["open"] = _error(error, path)
        return result
    with slide:
        try:
            slide.thumbnail(256)
            tissue = segment_tissue(slide)
            tiles = tile(slide, mpp=slide.mpp, patch_size=256, min_tissue=0, tissue=tissue)
        except SlideError as error:
            result["read"] = _error(error, path)
            return result
        reference: list[Any] = []
        for index in range(len(tiles)):
            try:
                reference.append(read_tile(slide, tiles, index))
            except SlideError as error:
                reference.append(error)
        fast: dict[int, np.ndarray] = {}
        fast_error = None
        try:
            for index, pixels in read_tiles(slide, tiles, num_workers=2):
                fast[index] = pixels
        except SlideError as error:
            fast_error = error
        refused = [i for i, r in enumerate(reference) if isinstance(r, Exception)]
        same = all(
            not isinstance(reference[i], Exception) and np.array_equal(pixels, reference[i])
            for i, pixels in fast.items()
        )
        complete = fast_error is None and len(fast) == len(tiles)
        result["tiles"] = {
            "count": len(tiles),
            "refused_by_reference": len(refused),
            "agree": same and (complete if not refused else fast_error is not None),
            "fast_error": None if fast_error is None else _error(fast_error, path),
        }
    return result


def _child(path: Path, write_end: int) -> None:
    status = Path("/proc/self/status").read_text().splitlines()
    vm = int(next(line for line in status if line.startswith("VmSize")).split()[1]) * 1024
    resource.setrlimit(resource.RLIMIT_AS, (vm + MEMORY_BYTES, vm + MEMORY_BYTES))
    resource.setrlimit(resource.RLIMIT_CPU, (SECONDS, SECONDS))
    try:
        result = check(path)
    except BaseException as error:  # what the tests must never see
        result = {
            "crash": f"{type(error).__name__}: {error}",
            "trace": traceback.format_exc()[-1500:],
        }
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    os.write(write_end, json.dumps(result).encode())


def run_case(name: str, path: Path) -> dict[str, Any]:
    read_end, write_end = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            _child(path, write_end)
        finally:
            os._exit(0)
    os.close(write_end)
    status = None
    while time.monotonic() - start < SECONDS:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.01)
    else:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(read_end)
        return {"case": name, "crash": f"timeout after {SECONDS} s"}
    chunks = []
    while chunk := os.read(read_end, 1 << 16):
        chunks.append(chunk)
    os.close(read_end)
    if not chunks:
        return {"case": name, "crash": f"child died (wait status {status})"}
    result = json.loads(b"".join(chunks))
    result.update(case=name, seconds=round(time.monotonic() - start, 2))
    return result


def main() -> None:
    base, folder, shard, shards = (
        Path(sys.argv[1]),
        Path(sys.argv[2]),
        int(sys.argv[3]),
        int(sys.argv[4]),
    )
    cases = hostile_files.make_cases(base, folder)
    for number, (name, make) in enumerate(sorted(cases.items())):
        if number % shards == shard:
            print(json.dumps(run_case(name, make())), flush=True)


if __name__ == "__main__":
    main()
