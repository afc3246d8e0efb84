"""gpfm-curate: slides -> sampled, quality-checked JPEG patches -> a Hugging Face dataset.

curate("slides.csv", "store", CurateSettings(patches_per_slide=256, balance_by=("tissue_type",)))
"""

from gpfm.apps.curate.inputs import InputError, SlideEntry, read_slide_list
from gpfm.apps.curate.run import CurateError, CurateSettings, Summary, curate

__all__ = [
    "CurateError",
    "CurateSettings",
    "InputError",
    "SlideEntry",
    "Summary",
    "curate",
    "read_slide_list",
]
