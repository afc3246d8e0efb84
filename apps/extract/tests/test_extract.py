"""gpfm-extract end to end: features, several encoders in one read, failures, locks."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from gpfm.apps.extract import extract, find_slides
from gpfm.apps.extract.__main__ import main
from gpfm.apps.extract.inputs import InputError
from gpfm.apps.extract.pipeline import PixelTable
from gpfm.backbone import load_encoder, register_encoder
from gpfm.backbone.zoo import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    Preprocessing,
)
from gpfm.heads import read_features
from gpfm.slide import open_slide, read_coords, read_tile
from gpfm.slide.reader import TileReader

TINY = "vit_tiny_patch16"


def manifest(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


def reference_features(slide_path: Path, coords_path: Path, encoder) -> np.ndarray:
    """The encoder on each tile read alone with ``read_tile`` (no fast reader, no batching)."""
    tiles = read_coords(coords_path)
    with open_slide(slide_path, mpp=tiles.slide_mpp) as slide, torch.inference_mode():
        batch = torch.stack(
            [encoder.transform(read_tile(slide, tiles, i)) for i in range(len(tiles))]
        )
        return encoder(batch).numpy()


def test_features_equal_the_encoder_on_tiles_read_one_by_one(slides_dir, tiny_weights, tmp_path):
    out = tmp_path / "out"
    summary = extract(slides_dir, out, [TINY], {TINY: tiny_weights}, batch_size=4)
    assert summary.ok and summary.count("done") == 2
    encoder = load_encoder(TINY, weights=tiny_weights)
    for slide in sorted(slides_dir.glob("*.tiff")):
        stored = read_features(out / "features" / TINY / f"{slide.stem}.h5")
        coords = out / "coords" / f"{slide.stem}.h5"
        assert np.array_equal(stored.coords, read_coords(coords).coords)
        np.testing.assert_allclose(
            stored.features, reference_features(slide, coords, encoder), atol=1e-5
        )
        assert stored.attrs["weights_sha256"] == encoder.weights_sha256
        assert stored.attrs["mpp"] == 0.5 and stored.attrs["patch_size"] == 224
        assert stored.coords_attrs["patch_size_level0"] == 224
        assert (out / "qc" / f"{slide.stem}.png").is_file()
    records = manifest(out)
    assert {r["status"] for r in records} == {"done"}
    assert all(r["tiles_per_s"] > 0 and r["num_tiles"] > 0 for r in records)


def test_real_svs_features_equal_the_encoder_on_read_tile(shared_slides, tiny_weights, tmp_path):
    slide = shared_slides / "CMU-1-Small-Region.svs"
    out = tmp_path / "out"
    summary = extract([slide], out, [TINY], {TINY: tiny_weights}, mpp=1.0, batch_size=16)
    assert summary.ok
    encoder = load_encoder(TINY, weights=tiny_weights)
    stored = read_features(out / "features" / TINY / "CMU-1-Small-Region.h5")
    expected = reference_features(slide, out / "coords" / "CMU-1-Small-Region.h5", encoder)
    assert len(stored) > 10
    np.testing.assert_allclose(stored.features, expected, atol=1e-5)


def test_two_encoders_in_one_read_equal_two_runs_and_decode_each_tile_once(
    slides_dir, tiny_weights, other_tiny_weights, tmp_path, monkeypatch
):
    decodes: list[tuple[int, int]] = []
    original = TileReader._decode_block

    def counting(self, col, row):
        decodes.append((col, row))
        return original(self, col, row)

    monkeypatch.setattr(TileReader, "_decode_block", counting)
    small = "vit_tiny_patch14"
    from gpfm.backbone import save_safetensors

    torch.manual_seed(3)
    small_weights = save_safetensors(
        load_encoder(small, random_init=True).model.state_dict(), tmp_path / "small.safetensors"
    )
    slide = slides_dir / "alpha.tiff"
    both = extract(
        [slide], tmp_path / "both", [TINY, small], {TINY: tiny_weights, small: small_weights}
    )
    assert both.ok
    decodes_both = len(decodes)
    decodes.clear()
    extract([slide], tmp_path / "one", [TINY], {TINY: tiny_weights})
    assert len(decodes) == decodes_both == len(set(decodes))  # every native tile once
    extract([slide], tmp_path / "other", [small], {small: small_weights})
    for name, alone in ((TINY, "one"), (small, "other")):
        together = (tmp_path / "both" / "features" / name / "alpha.h5").read_bytes()
        assert together == (tmp_path / alone / "features" / name / "alpha.h5").read_bytes()
    del other_tiny_weights


def test_second_run_skips_and_changed_weights_redo(
    slides_dir, tiny_weights, other_tiny_weights, tmp_path
):
    out = tmp_path / "out"
    extract(slides_dir, out, [TINY], {TINY: tiny_weights})
    first = (out / "features" / TINY / "alpha.h5").read_bytes()
    again = extract(slides_dir, out, [TINY], {TINY: tiny_weights})
    assert again.count("skipped") == 2 and again.ok
    assert (out / "features" / TINY / "alpha.h5").read_bytes() == first
    changed = extract(slides_dir, out, [TINY], {TINY: other_tiny_weights})
    assert changed.count("done") == 2  # the weights hash no longer matches
    assert (out / "features" / TINY / "alpha.h5").read_bytes() != first
    # A truncated feature file does not validate either.
    (out / "features" / TINY / "beta.h5").write_bytes(b"not hdf5")
    repaired = extract(slides_dir, out, [TINY], {TINY: other_tiny_weights})
    assert [r["slide_id"] for r in repaired.records if r["status"] == "done"] == ["beta"]


def test_coords_of_gpfm_slide_tile_are_reused(slides_dir, tiny_weights, tmp_path):
    from gpfm.slide.cli import main as slide_cli

    assert slide_cli(["tile", str(slides_dir / "beta.tiff"), "--out", str(tmp_path / "t"),
                      "--mpp", "1.0", "--patch-size", "112"]) == 0  # fmt: skip
    out = tmp_path / "out"
    summary = extract(
        [slides_dir / "beta.tiff"],
        out,
        [TINY],
        {TINY: tiny_weights},
        coords=tmp_path / "t" / "coords",
    )
    assert summary.ok
    stored = read_features(out / "features" / TINY / "beta.h5")
    tiles = read_coords(tmp_path / "t" / "coords" / "beta.h5")
    assert np.array_equal(stored.coords, tiles.coords)
    assert stored.attrs["patch_size"] == 112 and stored.attrs["mpp"] == 1.0
    assert not (out / "coords").exists()


def test_broken_slides_are_recorded_and_the_others_go_on(
    shared_slides, slides_dir, tiny_weights, tmp_path
):
    blank = tmp_path / "blank.png"
    Image.new("RGB", (600, 600), (245, 245, 245)).save(blank)
    table = tmp_path / "slides.csv"
    with table.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["slide_path", "slide_id", "mpp"])
        for name in ("broken.svs", "unopenable.tiff", "unreadable.svs", "kidney-48-5.tif"):
            writer.writerow([shared_slides / name, "", ""])
        writer.writerow([blank, "blank", "0.5"])
        writer.writerow([slides_dir / "beta.tiff", "good", ""])
    out = tmp_path / "out"
    status = main([str(table), "--out", str(out), "--encoder", TINY, "--weights",
                   f"{TINY}={tiny_weights}", "--no-progress"])  # fmt: skip
    assert status == 1
    records = {r["slide_id"]: r for r in manifest(out)}
    assert records["good"]["status"] == "done"
    for name in ("broken", "unopenable", "unreadable", "kidney-48-5", "blank"):
        assert records[name]["status"] == "failed", name
    assert "UnsupportedSlideError" in records["broken"]["error"]
    assert "MissingResolutionError" in records["kidney-48-5"]["error"]
    assert "no tissue" in records["blank"]["error"]
    assert "SlideReadError" in records["unreadable"]["error"]


def test_unknown_and_unloadable_encoders(slides_dir, tiny_weights, tmp_path, capsys):
    out = tmp_path / "out"
    assert main([str(slides_dir), "--out", str(out), "--encoder", "no-such-model"]) == 2
    assert "vit_tiny_patch16" in capsys.readouterr().err  # the known names are listed
    # UNI without weights, and the patch-16 weights given to the patch-14 ViT.
    status = main([str(slides_dir / "beta.tiff"), "--out", str(out), "--encoder",
                   f"uni,vit_tiny_patch14,{TINY}", "--weights",
                   f"vit_tiny_patch14={tiny_weights}", "--weights", f"{TINY}={tiny_weights}",
                   "--no-progress"])  # fmt: skip
    assert status == 1
    records = manifest(out)
    failed = {r["encoder"]: r["error"] for r in records if "encoder" in r}
    assert "weights" in failed["uni"].lower()
    assert "do not match" in failed["vit_tiny_patch14"]
    assert [r["status"] for r in records if "slide_id" in r] == ["done"]


def test_locks_of_live_runs_are_respected_and_stale_ones_recovered(
    slides_dir, tiny_weights, tmp_path
):
    out = tmp_path / "out"
    locks = out / "locks"
    locks.mkdir(parents=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    import socket

    host = socket.gethostname()
    (locks / "alpha.lock").write_text(json.dumps({"host": host, "pid": sleeper.pid}))
    (locks / "beta.lock").write_text(json.dumps({"host": host, "pid": int(dead.stdout)}))
    try:
        summary = extract(slides_dir, out, [TINY], {TINY: tiny_weights})
    finally:
        sleeper.kill()
        sleeper.wait()
    status = {r["slide_id"]: r["status"] for r in summary.records}
    assert status == {"alpha": "skipped", "beta": "done"}
    assert not (locks / "beta.lock").exists()
    assert (locks / "alpha.lock").exists()


def test_inputs_from_a_csv_and_duplicate_ids(slides_dir, tmp_path):
    table = tmp_path / "list.csv"
    table.write_text(f"slide_path,slide_id,mpp\n{slides_dir / 'alpha.tiff'},A,0.25\nbeta.tiff,,\n")
    (tmp_path / "beta.tiff").write_bytes(b"")
    found = find_slides([table])
    assert [(s.slide_id, s.mpp) for s in found] == [("A", 0.25), ("beta", None)]
    assert found[1].path == tmp_path / "beta.tiff"
    with pytest.raises(InputError, match="share the id"):
        find_slides([slides_dir, slides_dir / "alpha.tiff"])
    (tmp_path / "bad.csv").write_text("path\nx\n")
    with pytest.raises(InputError, match="slide_path"):
        find_slides([tmp_path / "bad.csv"])


def _run_cli(args: list[str], **kwargs) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "gpfm.apps.extract", *args, "--no-progress"],
                            env=env, stderr=subprocess.PIPE, **kwargs)  # fmt: skip


def _outputs(out: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out)): p.read_bytes()
        for folder in ("features", "coords", "qc")
        for p in sorted((out / folder).rglob("*"))
        if p.is_file()
    }


def _wait_for(process: subprocess.Popen, path_glob: tuple[Path, str], timeout: float = 120) -> None:
    import time

    folder, pattern = path_glob
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        if folder.exists() and any(folder.rglob(pattern)):
            return
        time.sleep(0.02)


@pytest.mark.slow
def test_a_run_killed_at_several_points_ends_with_the_files_of_one_run(
    slides_dir, tiny_weights, tmp_path
):
    args = [str(slides_dir), "--encoder", TINY, "--weights", f"{TINY}={tiny_weights}",
            "--batch-size", "4"]  # fmt: skip
    reference = tmp_path / "reference"
    assert _run_cli([*args, "--out", str(reference)]).wait() == 0
    out = tmp_path / "out"
    # Killed once the first QC image exists (tiling done, coords maybe not), then once the
    # first feature file exists (one slide done, the other not started or half way).
    for folder, pattern in (("qc", "*.png"), ("features", "*.h5")):
        process = _run_cli([*args, "--out", str(out)])
        _wait_for(process, (out / folder, pattern))
        process.kill()
        process.wait()
    assert _run_cli([*args, "--out", str(out)]).wait() == 0
    assert _outputs(out) == _outputs(reference)
    assert not list((out / "locks").glob("*.lock"))
    statuses = [r["status"] for r in manifest(out)]
    assert statuses.count("done") == 2 or "skipped" in statuses


@pytest.mark.slow
def test_accelerate_launch_two_processes_write_the_files_of_one(slides_dir, tiny_weights, tmp_path):
    args = [str(slides_dir), "--encoder", TINY, "--weights", f"{TINY}={tiny_weights}"]
    single = tmp_path / "single"
    assert _run_cli([*args, "--out", str(single)]).wait() == 0
    launched = tmp_path / "launched"
    # accelerate's --cpu starts several processes only through mpirun; its torchrun launcher
    # (--multi_gpu) starts them without it, here on the CPU (no GPU visible).
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(
        [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
         "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
         "-m", "gpfm.apps.extract", *args, "--out", str(launched), "--no-progress"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert _outputs(launched) == _outputs(single)
    processes = {r["slide_id"]: r["process"] for r in manifest(launched)}
    assert sorted(processes.values()) == [0, 1]  # each process did one slide


@pytest.mark.parametrize(
    ("resize", "crop", "mean", "std", "exact"),
    [
        ((224, 224), None, IMAGENET_MEAN, IMAGENET_STD, True),
        (224, 224, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, True),
        (256, 224, IMAGENET_MEAN, IMAGENET_STD, False),  # resizes: no table
    ],
)
def test_pixel_table_is_the_transform_bit_for_bit(resize, crop, mean, std, exact):
    transform = Preprocessing(resize, crop, mean, std, "bicubic").transform()
    encoder = SimpleNamespace(transform=transform)
    table = PixelTable.for_encoder(encoder, 224)
    assert (table is not None) == exact
    if table is not None:
        pixels = np.random.default_rng(0).integers(0, 256, (3, 224, 224, 3), dtype=np.uint8)
        expected = torch.stack([transform(tile) for tile in pixels])
        assert torch.equal(table(pixels), expected)


class _PatchMean(torch.nn.Module):
    """A 16 px patch embedding averaged over the tile: cheap, and sensitive to every pixel."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Conv2d(3, 8, 16, stride=16)

    def forward(self, batch: torch.Tensor) -> torch.Tensor:
        return self.embed(batch).mean(dim=(2, 3))


@pytest.fixture
def patch_mean_encoder():
    """``test-patch-mean`` in the zoo for one test only, so the zoo's own listings stay true."""
    from gpfm.backbone.zoo import registry

    register_encoder(
        "test-patch-mean",
        embed_dim=8,
        preprocessing=Preprocessing((224, 224), None, IMAGENET_MEAN, IMAGENET_STD, "bilinear"),
        requires_weights=False,
        description="a patch embedding averaged over the tile (tests only)",
        replace=True,
    )(_PatchMean)
    yield "test-patch-mean"
    registry._REGISTRY.pop("test-patch-mean", None)


@pytest.mark.parametrize("batch_size", [8, 7])
def test_batches_joined_from_several_chunks_give_the_same_features(
    slides_dir, monkeypatch, batch_size, patch_mean_encoder
):
    from gpfm.apps.extract import pipeline
    from gpfm.slide import tile

    monkeypatch.setattr(pipeline, "_MAX_CHUNK", 4)  # batches of 8: two chunks of 4
    torch.manual_seed(0)
    encoder = load_encoder(patch_mean_encoder)
    with open_slide(slides_dir / "alpha.tiff") as slide:
        tiles = tile(slide, mpp=0.5, patch_size=224, min_tissue=0)
        (features,) = pipeline.encode_tiles(slide, tiles, [encoder], batch_size=batch_size)
        with torch.inference_mode():
            pixels = [encoder.transform(read_tile(slide, tiles, i)) for i in range(len(tiles))]
            expected = encoder(torch.stack(pixels)).numpy()
    assert len(tiles) > 2 * batch_size
    np.testing.assert_allclose(features, expected, atol=1e-5)


def test_preprocessing_on_the_device_gives_the_same_features(slides_dir, patch_mean_encoder):
    # On a GPU the tiles cross as uint8 and the transforms run there; forced here on the CPU,
    # where the tiles are not copied (not pinned), so the reader must not write over them.
    from gpfm.apps.extract import pipeline
    from gpfm.backbone.zoo import registry
    from gpfm.slide import tile

    torch.manual_seed(0)
    same_size = load_encoder(patch_mean_encoder)
    entry = registry._REGISTRY[patch_mean_encoder]
    resizing = Preprocessing(256, 224, IMAGENET_MEAN, IMAGENET_STD, "bilinear")
    register_encoder(
        "test-patch-mean-resized", embed_dim=8, preprocessing=resizing, requires_weights=False,
        description="the same, after a resize and crop (tests only)", replace=True,
    )(entry.factory)  # fmt: skip
    try:
        resized = load_encoder("test-patch-mean-resized")
        with open_slide(slides_dir / "alpha.tiff") as slide:
            tiles = tile(slide, mpp=0.5, patch_size=224, min_tissue=0)
            encoders = [same_size, resized]
            on_threads = pipeline.encode_tiles(slide, tiles, encoders, batch_size=8)
            on_device = pipeline.encode_tiles(
                slide, tiles, encoders, batch_size=8, preprocess_on_device=True
            )
    finally:
        registry._REGISTRY.pop("test-patch-mean-resized", None)
    assert len(tiles) > 16
    # The inputs themselves are bit for bit the same.
    pixels = np.random.default_rng(0).integers(0, 256, (4, 224, 224, 3), dtype=np.uint8)
    key = pipeline._preprocessing_key(same_size)
    on_cpu = pipeline._Inputs([same_size], 224, pin=False)(pixels)[1][key]
    moved = pipeline._Inputs([same_size], 224, pin=False, on_device=True)
    assert torch.equal(moved.on_device_inputs(torch.from_numpy(pixels))[key], on_cpu)
    for threads, device in zip(on_threads, on_device, strict=True):
        # The same inputs; the device path's are in channels-last memory, which changes the
        # order of the convolution's sums.
        np.testing.assert_allclose(device, threads, rtol=1e-5, atol=1e-6)
