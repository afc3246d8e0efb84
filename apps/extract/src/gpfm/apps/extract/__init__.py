"""gpfm-extract: slides to tile features from one or several encoders, read once, resumable.

    from gpfm.apps.extract import extract
    summary = extract("slides/", "out/", ["uni", "gpfm"], weights={"uni": "uni.bin", ...})

Writes ``out/features/<encoder>/<slide_id>.h5`` (TRIDENT-compatible ``features`` + ``coords``),
``out/coords/<slide_id>.h5``, ``out/qc/<slide_id>.png`` and ``out/manifest.jsonl``. The same run
under ``accelerate launch -m gpfm.apps.extract ...`` splits the slides across processes.
"""

import os
import sys

# Threads of OpenMP (torch's CPU forward) that finish their work spin for a while before they
# sleep. With a cheap encoder on CPU that spinning takes the cores from the tile decoder: on 2
# cores a mean-of-pixels encoder ran at 0.68 of ``read_tiles`` alone, 0.97 with passive waiting,
# which costs a compute-bound ViT nothing measurable. It only takes effect before torch loads,
# and a value the user set is kept.
if "torch" not in sys.modules:
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from gpfm.apps.extract.inputs import InputError, SlideInput, find_slides
from gpfm.apps.extract.pipeline import encode_tiles
from gpfm.apps.extract.run import Summary, extract, features_valid

__all__ = [
    "InputError",
    "SlideInput",
    "Summary",
    "encode_tiles",
    "extract",
    "features_valid",
    "find_slides",
]
