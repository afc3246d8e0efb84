"""``gpfm-extract``: features of slides from one or several foundation models.

    gpfm-extract INPUT... --out OUT --encoder NAME[,NAME...] [--weights NAME=PATH ...]
                 [--coords DIR] [--mpp 0.5] [--patch-size 224] [--min-tissue 0.5]
                 [--batch-size 64] [--num-workers N] [--precision fp32|bf16|fp16]
                 [--slide-mpp MPP] [--random-init]
    accelerate launch -m gpfm.apps.extract INPUT... --out OUT --encoder ...

INPUT is a folder of slides, slide files, or a CSV with ``slide_path`` (optional ``slide_id``,
``mpp``). Each slide is read once and every encoder gets its tiles. A run started again skips the
slides already done; failures are recorded in ``OUT/manifest.jsonl``, the other slides go on, and
the exit status is 1 if anything failed.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from gpfm.apps.extract.inputs import InputError
from gpfm.apps.extract.pipeline import PRECISIONS
from gpfm.apps.extract.run import MANIFEST, extract


def _weights(values: Sequence[str]) -> dict[str, str]:
    pairs = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise argparse.ArgumentTypeError(f"--weights takes NAME=PATH, got {value!r}")
        pairs[name] = path
    return pairs


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gpfm-extract", description=__doc__.split("\n")[0])
    parser.add_argument("inputs", nargs="+", type=Path, help="slide folder, files or CSV")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument(
        "--encoder", required=True, help="zoo names or exported folders, comma-separated"
    )
    parser.add_argument(
        "--weights", action="append", default=[], metavar="NAME=PATH", help="weights per encoder"
    )
    parser.add_argument("--coords", type=Path, help="a gpfm-slide tile coords folder to reuse")
    parser.add_argument("--mpp", type=float, default=0.5, help="tile resolution, µm/px")
    parser.add_argument("--patch-size", type=int, default=224, help="tile side, px at --mpp")
    parser.add_argument("--min-tissue", type=float, default=0.5, help="tissue fraction to keep")
    parser.add_argument("--tissue-mpp", type=float, default=8.0, help="tissue mask µm/px")
    parser.add_argument("--batch-size", type=int, default=64, help="tiles per forward pass")
    parser.add_argument("--num-workers", type=int, default=None, help="tile-decoding threads")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default="fp32")
    parser.add_argument(
        "--slide-mpp", type=float, default=None, help="level-0 µm/px of slides that lack one"
    )
    parser.add_argument(
        "--random-init",
        action="store_true",
        help="zoo encoders without --weights get seeded random weights (tests, demos)",
    )
    parser.add_argument("--device", default=None, help="default: this process's GPU, else CPU")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    parser.add_argument("-v", "--verbose", action="store_true", help="log details")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    from gpfm.backbone import UnknownEncoderError

    try:
        weights = _weights(args.weights)
        summary = extract(
            args.inputs,
            args.out,
            args.encoder,
            weights,
            coords=args.coords,
            mpp=args.mpp,
            patch_size=args.patch_size,
            min_tissue=args.min_tissue,
            tissue_mpp=args.tissue_mpp,
            slide_mpp=args.slide_mpp,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            precision=args.precision,
            random_init=args.random_init,
            device=args.device,
            progress=not args.no_progress,
        )
    except (UnknownEncoderError, InputError, argparse.ArgumentTypeError, ValueError) as error:
        print(f"gpfm-extract: error: {error}", file=sys.stderr)
        return 2
    print(f"gpfm-extract: {summary}; see {args.out / MANIFEST}", file=sys.stderr)
    return 0 if summary.ok else 1


if __name__ == "__main__":
    sys.exit(main())
