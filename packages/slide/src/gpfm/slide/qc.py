"""Quality-control image: the slide thumbnail with its tissue outline and tile grid drawn on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from gpfm.slide.slide import Slide
from gpfm.slide.storage import atomic_path
from gpfm.slide.tiling import Tiles
from gpfm.slide.tissue import TissueMask

_OUTLINE = (0, 160, 0)
_GRID = (20, 60, 220)


def qc_image(
    slide: Slide, tiles: Tiles, tissue: TissueMask | None = None, max_size: int = 1600
) -> Image.Image:
    """The thumbnail (long side at most ``max_size`` px) with tissue outline and tile boxes."""
    thumbnail = slide.thumbnail(max_size)
    image = Image.fromarray(thumbnail)
    draw = ImageDraw.Draw(image)
    # Thumbnail pixels per level-0 pixel, per axis (the thumbnail rounds each side up).
    scale_x = thumbnail.shape[1] / slide.dimensions[0]
    scale_y = thumbnail.shape[0] / slide.dimensions[1]
    side_x = tiles.patch_size_level0 * scale_x
    side_y = tiles.patch_size_level0 * scale_y
    for x, y in np.asarray(tiles.coords, dtype=np.float64):
        draw.rectangle(
            (x * scale_x, y * scale_y, x * scale_x + side_x, y * scale_y + side_y),
            outline=_GRID,
        )
    if tissue is not None:
        width = max(1, round(max(image.size) / 400))
        for feature in tissue.to_geojson()["features"]:
            for ring in feature["geometry"]["coordinates"]:
                points = [(px * scale_x, py * scale_y) for px, py in ring]
                draw.line(points, fill=_OUTLINE, width=width)
    return image


def write_qc_image(
    path: str | Path,
    slide: Slide,
    tiles: Tiles,
    tissue: TissueMask | None = None,
    max_size: int = 1600,
) -> Path:
    """Write ``qc_image`` as a PNG (atomically) and return its path."""
    path = Path(path)
    image = qc_image(slide, tiles, tissue, max_size)
    with atomic_path(path) as temporary:
        image.save(temporary, format="PNG")
    return path
