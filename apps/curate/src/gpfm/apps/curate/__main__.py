"""``gpfm-curate``: build the pretraining corpus from many slides as a Hugging Face dataset.

    gpfm-curate SLIDES_CSV --out STORE --patches-per-slide N [--mpp 0.5 | --level L]
                [--patch-size 512] [--balance-by tissue_type[,cohort]] [--mix lung=2,...]
                [--strategy uniform|stratified] [--min-tissue 0.25] [--min-sharpness 20]
                [--max-hash-distance 4] [--workers N] [--arrow] [--seed 0]
    accelerate launch -m gpfm.apps.curate SLIDES_CSV --out STORE ...

SLIDES_CSV has the columns slide_path, cohort, tissue_type (optional: mpp, slide_id). A run
started again resumes where the last one stopped and ends with the same store; failed slides
are recorded in STORE/manifest.jsonl and the store's card, and the exit status is 1.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from gpfm.apps.curate.inputs import InputError
from gpfm.apps.curate.run import MANIFEST, CurateError, CurateSettings, curate
from gpfm.slide.quality import QualityThresholds
from gpfm.slide.sampling import SAMPLING_STRATEGIES


def _mix(text: str) -> dict[str, float]:
    mix = {}
    for item in text.split(","):
        group, sep, weight = item.partition("=")
        try:
            mix[group.strip()] = float(weight)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"--mix takes GROUP=WEIGHT,..., got {item!r}"
            ) from None
        if not sep or not group.strip():
            raise argparse.ArgumentTypeError(f"--mix takes GROUP=WEIGHT,..., got {item!r}")
    return mix


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpfm-curate", description=__doc__.split("\n")[0])
    parser.add_argument("slides", type=Path, help="CSV: slide_path, cohort, tissue_type[, mpp]")
    parser.add_argument("--out", type=Path, required=True, help="the store folder")
    parser.add_argument("--patches-per-slide", type=int, required=True, help="N (on average)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--mpp", type=float, default=None, help="µm/px (default 0.5)")
    where.add_argument("--level", type=int, default=None, help="pyramid level, read as is")
    parser.add_argument("--patch-size", type=int, default=512, help="patch side, px")
    parser.add_argument(
        "--balance-by", default="", help="tissue_type, cohort or both (comma-separated)"
    )
    parser.add_argument("--mix", type=_mix, default=None, help="GROUP=WEIGHT,... (default equal)")
    parser.add_argument("--strategy", choices=SAMPLING_STRATEGIES, default="uniform")
    parser.add_argument(
        "--mask-min-tissue", type=float, default=0.5, help="tile tissue fraction on the mask"
    )
    defaults = QualityThresholds()
    parser.add_argument(
        "--min-tissue", type=float, default=defaults.min_tissue, help="blank below this"
    )
    parser.add_argument("--min-saturation", type=int, default=defaults.min_saturation)
    parser.add_argument(
        "--min-sharpness",
        type=float,
        default=defaults.min_sharpness,
        help="blurred below this variance of the Laplacian",
    )
    parser.add_argument(
        "--max-hash-distance",
        type=int,
        default=defaults.max_hash_distance,
        help="near-duplicate within this many bits (-1: off)",
    )
    parser.add_argument("--jpeg-quality", type=int, default=90)
    parser.add_argument("--rows-per-shard", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="processes, one slide each")
    parser.add_argument(
        "--arrow", action="store_true", help="also write the save_to_disk layout (2x size)"
    )
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        settings = CurateSettings(
            patches_per_slide=args.patches_per_slide,
            mpp=None if args.level is not None else (args.mpp or 0.5),
            level=args.level,
            patch_size=args.patch_size,
            mask_min_tissue=args.mask_min_tissue,
            strategy=args.strategy,
            balance_by=tuple(c.strip() for c in args.balance_by.split(",") if c.strip()),
            mix=args.mix,
            quality=QualityThresholds(
                min_tissue=args.min_tissue,
                min_saturation=args.min_saturation,
                min_sharpness=args.min_sharpness,
                max_hash_distance=args.max_hash_distance,
            ),
            jpeg_quality=args.jpeg_quality,
            seed=args.seed,
            rows_per_shard=args.rows_per_shard,
        )
        summary = curate(
            args.slides,
            args.out,
            settings,
            workers=args.workers,
            arrow=args.arrow,
            progress=not args.no_progress,
        )
    except (InputError, CurateError, ValueError) as error:
        print(f"gpfm-curate: error: {error}", file=sys.stderr)
        return 2
    print(f"gpfm-curate: {summary}; see {args.out / MANIFEST}", file=sys.stderr)
    return 1 if summary.count("failed") else 0


if __name__ == "__main__":
    sys.exit(main())
