"""gpfm-train: pretrain a foundation model with GPFM's unified knowledge distillation.

    gpfm-train CONFIG [key=value ...]                       # one process
    gpfm-train CONFIG --dry-run [key=value ...]             # check and count, run nothing
    accelerate launch -m gpfm.apps.train CONFIG [key=value ...]   # several GPUs or nodes

CONFIG is a YAML file or a bundled configuration: ``tiny_cpu`` (seconds on a CPU),
``small_patches`` (a folder of real patches on a CPU) or ``gpfm_vitl14`` (the paper's
recipe). Overrides use dotted keys, e.g. ``max_steps=100 data.batch_size_per_device=32
experts.0.weights=/models/uni.bin``. A collapse of the self-distillation is reported in words
(``stop_on_collapse=true`` stops there). Outputs in ``output_dir``:
``config.yaml`` (resolved), ``logs/`` (TensorBoard and metrics.csv), ``checkpoints/step_N``
(resumed from automatically) and ``export/`` (the teacher backbone as an encoder).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from gpfm.apps.train.config import bundled_configs, load_config, to_yaml
from gpfm.apps.train.trainer import TrainingError, train
from gpfm.backbone import BackboneError
from gpfm.distill import DistillError
from gpfm.slide import SlideError


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="gpfm-train",
        description=__doc__.split("\n")[0],
        epilog=f"bundled configurations: {', '.join(bundled_configs())}. Every key and its "
        "default: --print-config, or the table in the gpfm-train docs.",
    )
    parser.add_argument("config", help="YAML file or bundled configuration name")
    parser.add_argument("overrides", nargs="*", help="key=value overrides (OmegaConf dot list)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="build everything on the meta device, check the weights references, print the "
        "parameter counts and the resolved configuration, and exit",
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved configuration (every key, defaults included) and exit",
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    args = parser.parse_intermixed_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        config = load_config(args.config, args.overrides)
        if args.print_config:
            print(to_yaml(config), end="")
            return 0
        if args.dry_run:
            from gpfm.apps.train.dryrun import dry_run

            print(dry_run(config))
            return 0
        result = train(config)
    except (TrainingError, BackboneError, DistillError, SlideError, OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    if result.get("already_complete"):
        print(
            f"already complete ({result['step']} of {config.max_steps} steps); nothing to do. "
            f"The teacher is exported in {result['export']}"
        )
    elif result["export"] is not None:
        print(f"trained {result['step']} steps; teacher exported to {result['export']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
