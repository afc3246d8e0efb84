"""``gpfm-slide``: inspect slides and tile them into coordinates files.

    gpfm-slide info SLIDE...
    gpfm-slide tile SLIDE... --out DIR [--mpp 0.5] [--patch-size 224] [--overlap 0]
                             [--min-tissue 0.5] [--slide-mpp MPP] [--native-level] [--force]

``tile`` writes, per slide, ``coords/<id>.h5``, ``tissue/<id>.geojson`` and ``qc/<id>.png``, and
appends one JSON line per slide to ``manifest.jsonl`` (status done, failed or skipped). A second
run skips the slides already done with the same settings; failures are recorded, the other slides
go on, and the exit status is 1 if any slide failed.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from gpfm.slide.errors import SlideError
from gpfm.slide.qc import write_qc_image
from gpfm.slide.slide import open_slide
from gpfm.slide.storage import atomic_path, package_version, write_coords
from gpfm.slide.tiling import tile
from gpfm.slide.tissue import segment_tissue

logger = logging.getLogger("gpfm.slide.cli")

MANIFEST = "manifest.jsonl"


def slide_id(path: Path) -> str:
    """The identifier of a slide file: its name without the format's suffixes."""
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _info(args: argparse.Namespace) -> int:
    failed = 0
    for path in args.slides:
        try:
            with open_slide(path, mpp=args.slide_mpp, backend=args.backend) as slide:
                record: dict[str, Any] = {
                    "path": str(path),
                    "backend": slide.backend,
                    "dimensions": list(slide.dimensions),
                    "mpp": slide.mpp,
                    "level_count": slide.level_count,
                    "level_dimensions": [list(d) for d in slide.level_dimensions],
                    "level_downsamples": [round(d, 4) for d in slide.level_downsamples],
                    "native_tile_size": slide.native_tile_size(0),
                    "vendor": slide.properties.get("openslide.vendor"),
                }
        except (SlideError, ValueError) as error:
            failed += 1
            record = {"path": str(path), "error": str(error)}
        if args.json:
            print(json.dumps(record))
        elif "error" in record:
            print(f"{path}: ERROR {record['error']}")
        else:
            width, height = record["dimensions"]
            print(
                f"{path}: {width} x {height} px, {record['mpp']:.4g} µm/px, "
                f"{record['level_count']} levels {record['level_dimensions']}, "
                f"backend {record['backend']}, native tiles {record['native_tile_size']}"
            )
    return 1 if failed else 0


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "mpp": args.mpp,
        "patch_size": args.patch_size,
        "overlap": args.overlap,
        "min_tissue": args.min_tissue,
        "slide_mpp": args.slide_mpp,
        "tissue_mpp": args.tissue_mpp,
        "backend": args.backend,
        # Only when set, so that runs made before the option existed still count as done.
        **({"native_level": True} if args.native_level else {}),
    }


def read_manifest(path: Path) -> dict[str, dict[str, Any]]:
    """The latest manifest record of each slide id (a torn last line is ignored)."""
    latest: dict[str, dict[str, Any]] = {}
    if not path.exists():
        return latest
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if record.get("status") in ("done", "failed"):
            latest[record["slide_id"]] = record
    return latest


def _tile_one(path: Path, out: Path, identifier: str, args: argparse.Namespace) -> dict[str, Any]:
    timings: dict[str, float] = {}
    start = time.perf_counter()
    with open_slide(path, mpp=args.slide_mpp, backend=args.backend) as slide:
        timings["open_s"] = time.perf_counter() - start
        mark = time.perf_counter()
        tissue = segment_tissue(slide, mpp=args.tissue_mpp)
        timings["tissue_s"] = time.perf_counter() - mark
        mark = time.perf_counter()
        tiles = tile(
            slide,
            mpp=args.mpp,
            patch_size=args.patch_size,
            overlap=args.overlap,
            min_tissue=args.min_tissue,
            tissue=tissue,
            native_level=args.native_level,
        )
        timings["tile_s"] = time.perf_counter() - mark
        mark = time.perf_counter()
        outputs = {
            "coords": out / "coords" / f"{identifier}.h5",
            "tissue": out / "tissue" / f"{identifier}.geojson",
            "qc": out / "qc" / f"{identifier}.png",
        }
        write_coords(outputs["coords"], tiles)
        with atomic_path(outputs["tissue"]) as temporary:
            temporary.write_text(json.dumps(tissue.to_geojson()))
        write_qc_image(outputs["qc"], slide, tiles, tissue)
        timings["write_s"] = time.perf_counter() - mark
        return {
            "num_tiles": len(tiles),
            "slide_mpp": slide.mpp,
            "dimensions": list(slide.dimensions),
            "tissue_fraction": round(tissue.tissue_fraction, 4),
            "outputs": {k: str(v.relative_to(out)) for k, v in outputs.items()},
            "timings": {k: round(v, 3) for k, v in timings.items()},
        }


def _tile(args: argparse.Namespace) -> int:
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    slides = [Path(p) for p in args.slides]
    ids = [slide_id(p) for p in slides]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        print(f"error: several slides share the id(s) {duplicates}; rename them", file=sys.stderr)
        return 2
    settings = _settings(args)
    with atomic_path(out / "tile_config.json") as temporary:
        config = {**settings, "gpfm_version": package_version()}
        temporary.write_text(json.dumps(config, indent=2))
    manifest_path = out / MANIFEST
    previous = read_manifest(manifest_path)
    failures = 0
    with manifest_path.open("a") as manifest:
        for path, identifier in zip(tqdm(slides, desc="tiling", unit="slide"), ids, strict=True):
            record: dict[str, Any] = {"slide_id": identifier, "path": str(path)}
            done = previous.get(identifier)
            if (
                not args.force
                and done is not None
                and done.get("status") == "done"
                and done.get("settings") == settings
                and (out / done["outputs"]["coords"]).exists()
            ):
                record.update(status="skipped", reason="done by an earlier run")
            else:
                try:
                    record.update(
                        status="done", settings=settings, **_tile_one(path, out, identifier, args)
                    )
                    tqdm.write(
                        f"{identifier}: {record['num_tiles']} tiles, "
                        f"{100 * record['tissue_fraction']:.1f}% tissue"
                    )
                except Exception as error:  # one bad slide must not stop the batch
                    failures += 1
                    logger.debug("%s", traceback.format_exc())
                    record.update(status="failed", error=f"{type(error).__name__}: {error}")
                    tqdm.write(f"failed: {path}: {error}", file=sys.stderr)
            manifest.write(json.dumps(record) + "\n")
            manifest.flush()
    if failures:
        print(f"{failures} of {len(slides)} slides failed; see {manifest_path}", file=sys.stderr)
    return 1 if failures else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpfm-slide", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("slides", nargs="+", type=Path, help="slide files")
        sub.add_argument(
            "--slide-mpp",
            type=float,
            default=None,
            help="level-0 µm/px of the slides, overriding (or supplying) their metadata",
        )
        sub.add_argument("--backend", choices=["openslide", "tifffile", "pillow"], default=None)

    info = commands.add_parser("info", help="print each slide's geometry and resolution")
    common(info)
    info.add_argument("--json", action="store_true", help="one JSON object per line")
    info.set_defaults(run=_info)

    tiles = commands.add_parser(
        "tile",
        help="find tissue and write tile coordinates",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    common(tiles)
    tiles.add_argument("--out", type=Path, required=True, help="output folder")
    tiles.add_argument("--mpp", type=float, default=0.5, help="tile resolution, µm/px")
    tiles.add_argument("--patch-size", type=int, default=224, help="tile side, px at --mpp")
    tiles.add_argument("--overlap", type=float, default=0.0, help="fraction of the tile shared")
    tiles.add_argument("--min-tissue", type=float, default=0.5, help="tissue fraction to keep")
    tiles.add_argument("--tissue-mpp", type=float, default=8.0, help="tissue mask µm/px")
    tiles.add_argument(
        "--native-level",
        action="store_true",
        help="tile the pyramid level nearest to --mpp without resizing, recording its true "
        "µm/px (coordinates files CLAM reads exactly)",
    )
    tiles.add_argument("--force", action="store_true", help="redo slides already done")
    tiles.set_defaults(run=_tile)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
