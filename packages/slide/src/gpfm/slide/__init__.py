"""gpfm.slide: read whole-slide images, find tissue, tile at a physical resolution, read tiles.

slide = open_slide("slide.svs")                 # Slide: geometry, mpp (µm/px), read_region
tissue = segment_tissue(slide)                  # TissueMask: low-res mask, to_geojson()
tiles = tile(slide, mpp=0.5, patch_size=224)    # Tiles: level-0 coords + how to read them
write_coords("coords/slide.h5", tiles)          # HDF5 readable by CLAM and TRIDENT
for index, rgb in read_tiles(slide, tiles): ... # fast reader, each native tile decoded once
PatchDataset("slide.svs", tiles, transform)     # torch Dataset, safe with DataLoader workers
MultiSlidePatchDataset("coords/", per_slide=64) # a seeded sample of tiles from many slides
"""

from typing import TYPE_CHECKING

from gpfm.slide.backends import SlideReader
from gpfm.slide.errors import (
    CoordsFileError,
    MissingResolutionError,
    SlideError,
    SlideReadError,
    UnsupportedSlideError,
)
from gpfm.slide.qc import qc_image, write_qc_image
from gpfm.slide.reader import TileReader, read_tile, read_tiles
from gpfm.slide.slide import Slide, open_slide
from gpfm.slide.storage import read_coords, write_coords
from gpfm.slide.synthetic import SyntheticSlide, make_synthetic_slide
from gpfm.slide.tiling import Tiles, tile
from gpfm.slide.tissue import TissueMask, segment_tissue

if TYPE_CHECKING:
    from gpfm.slide.dataset import MultiSlidePatchDataset, PatchDataset


def __getattr__(name: str) -> object:
    # PatchDataset needs torch; importing it lazily keeps the CLI and plain reading light.
    if name in ("PatchDataset", "MultiSlidePatchDataset"):
        try:
            from gpfm.slide import dataset
        except ModuleNotFoundError as error:
            if error.name != "torch":
                raise
            raise ImportError(
                f"gpfm.slide.{name} needs PyTorch: pip install 'gpfm-slide[torch]'"
            ) from None
        return getattr(dataset, name)
    raise AttributeError(f"module 'gpfm.slide' has no attribute {name!r}")


__all__ = [
    "CoordsFileError",
    "MissingResolutionError",
    "MultiSlidePatchDataset",
    "PatchDataset",
    "Slide",
    "SlideError",
    "SlideReadError",
    "SlideReader",
    "SyntheticSlide",
    "TileReader",
    "Tiles",
    "TissueMask",
    "UnsupportedSlideError",
    "make_synthetic_slide",
    "open_slide",
    "qc_image",
    "read_coords",
    "read_tile",
    "read_tiles",
    "segment_tissue",
    "tile",
    "write_coords",
    "write_qc_image",
]
