"""gpfm-extract: slides to tile features from one or several encoders, read once, resumable.

    from gpfm.apps.extract import extract
    summary = extract("slides/", "out/", ["uni", "gpfm"], weights={"uni": "uni.bin", ...})

Writes ``out/features/<encoder>/<slide_id>.h5`` (TRIDENT-compatible ``features`` + ``coords``),
``out/coords/<slide_id>.h5``, ``out/qc/<slide_id>.png`` and ``out/manifest.jsonl``. The same run
under ``accelerate launch -m gpfm.apps.extract ...`` splits the slides across processes.
"""

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
