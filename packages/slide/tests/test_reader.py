import threading
import time

import numpy as np
import pytest

from gpfm.slide import TileReader, open_slide, read_tile, read_tiles, tile
from gpfm.slide.tiling import Tiles


def _assert_same_as_per_tile_reads(slide, tiles: Tiles, **kwargs) -> TileReader:
    reader = TileReader(slide, tiles, **kwargs)
    seen = []
    for index, pixels in reader:
        assert pixels.shape == (tiles.patch_size, tiles.patch_size, 3)
        assert pixels.dtype == np.uint8
        assert np.array_equal(pixels, read_tile(slide, tiles, index)), index
        seen.append(index)
    assert seen == list(range(len(tiles)))
    return reader


def test_level0_tiles_equal_read_region_and_decode_directly(synthetic):
    with open_slide(synthetic.path) as slide:
        tiles = tile(slide, mpp=0.5, patch_size=224, min_tissue=0.25)
        reader = _assert_same_as_per_tile_reads(slide, tiles, num_workers=2)
        assert reader.direct
        x, y = tiles.coords[3]
        region = slide.read_region((int(x), int(y)), 0, (224, 224))
        assert np.array_equal(read_tile(slide, tiles, 3), region)


def test_tiles_read_from_a_lower_level_and_resized(synthetic):
    with open_slide(synthetic.path) as slide:
        tiles = tile(slide, mpp=1.5, patch_size=100, overlap=0.25, min_tissue=0.1)
        assert tiles.level == 0 and tiles.read_size == 300
        _assert_same_as_per_tile_reads(slide, tiles, num_workers=3)
        coarse = tile(slide, mpp=2.0, patch_size=64, min_tissue=0.1)
        assert coarse.level == 1
        _assert_same_as_per_tile_reads(slide, coarse)


def test_each_native_tile_is_decoded_once(synthetic):
    with open_slide(synthetic.path) as slide:
        tiles = tile(slide, mpp=0.5, patch_size=224, min_tissue=0)
        reader = TileReader(slide, tiles, num_workers=2)
        decoded: list[tuple[int, int]] = []
        decode = reader._decode

        def counting(col: int, row: int) -> np.ndarray:
            decoded.append((col, row))
            return decode(col, row)

        reader._decode = counting
        assert sum(1 for _ in reader) == len(tiles)
    columns, rows = -(-4000 // 256), -(-3000 // 256)
    assert len(decoded) == len(set(decoded)) == columns * rows


def test_two_threads_decode_at_the_same_time(synthetic):
    # Neighbouring chunks share the native tiles on their border; the chunk running beside
    # another must not wait for all of it, or the threads take turns.
    with open_slide(synthetic.path) as slide:
        tiles = tile(slide, mpp=0.5, patch_size=224, min_tissue=0)
        reader = TileReader(slide, tiles, num_workers=2, chunk_size=8)
        decode = reader._decode
        lock = threading.Lock()
        running = [0]
        overlapping = [0]

        def slow(col: int, row: int) -> np.ndarray:
            with lock:
                overlapping[0] += running[0] > 0
                running[0] += 1
            time.sleep(0.002)  # the decoder releases the GIL; so does sleep
            try:
                return decode(col, row)
            finally:
                with lock:
                    running[0] -= 1

        reader._decode = slow
        assert sum(1 for _ in reader) == len(tiles)
    decodes = -(-4000 // 256) * -(-3000 // 256)
    assert overlapping[0] >= decodes // 2, (overlapping[0], decodes)  # taking turns: ~1/3


def test_edge_tiles_overhanging_the_slide_are_white_outside(synthetic):
    with open_slide(synthetic.path) as slide:
        tiles = tile(slide, mpp=0.5, patch_size=300, min_tissue=0)
        last = dict(read_tiles(slide, tiles))[len(tiles) - 1]
    # 4000 = 13 * 300 + 100, 3000 = 10 * 300: the last column keeps 100 px of slide.
    assert (last[:, 100:] == 255).all()


def test_real_svs_tiles_equal_read_region(shared_slides):
    with open_slide(shared_slides / "CMU-1-Small-Region.svs") as slide:
        tiles = tile(slide, mpp=0.5, patch_size=224, overlap=0.1, min_tissue=0.3)
        assert _assert_same_as_per_tile_reads(slide, tiles).direct


@pytest.mark.parametrize("backend", ["tifffile", "pillow"])
def test_fallback_backends_read_tiles_through_the_backend(tmp_path, rgb_image, backend):
    import tifffile
    from PIL import Image

    if backend == "pillow":
        path = tmp_path / "image.png"
        Image.fromarray(rgb_image).save(path)
    else:
        path = tmp_path / "image.tif"
        tifffile.imwrite(path, rgb_image, photometric="rgb", tile=(128, 128))
    with open_slide(path, mpp=0.5, backend=backend) as slide:
        tiles = tile(slide, mpp=0.5, patch_size=96, min_tissue=0)
        reader = _assert_same_as_per_tile_reads(slide, tiles)
        assert not reader.direct
        first = read_tile(slide, tiles, 0)
    assert np.array_equal(first, rgb_image[:96, :96])


def test_read_errors_surface_from_the_reader(shared_slides):
    with open_slide(shared_slides / "unreadable.svs") as slide:
        tiles = tile(slide, mpp=0.499, patch_size=8, min_tissue=0)
        with pytest.raises(Exception, match=r"unreadable\.svs"):
            list(read_tiles(slide, tiles))


def test_chunks_hold_consecutive_tiles_and_recycled_arrays_are_rewritten(synthetic):
    with open_slide(synthetic.path) as slide:
        tiles = tile(slide, mpp=0.5, patch_size=224, min_tissue=0)
        reader = TileReader(slide, tiles, num_workers=2, chunk_size=5)
        starts = []
        for start, chunk in reader.chunks():
            assert chunk.shape[1:] == (224, 224, 3) and 1 <= len(chunk) <= 5
            for offset, pixels in enumerate(chunk):
                assert np.array_equal(pixels, read_tile(slide, tiles, start + offset))
            starts.append(start)
            reader.recycle(chunk)  # later chunks are written into it
    assert starts == list(range(0, len(tiles), 5))
