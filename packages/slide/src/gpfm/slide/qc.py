"""Quality-control image: the slide thumbnail with its tissue outline and tile grid drawn on.

Tiles are drawn as boxes; with overlap, boxes would cover each other, so each tile is a dot at its
centre instead. A legend in the top-left corner says which is which.
"""

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
    centres = tiles.overlap > 0
    radius = max(1.0, tiles.step_level0 * min(scale_x, scale_y) / 6)
    for x, y in np.asarray(tiles.coords, dtype=np.float64):
        if centres:
            cx, cy = x * scale_x + side_x / 2, y * scale_y + side_y / 2
            draw.ellipse((cx - radius, cy - radius, cx + radius, cy + radius), fill=_GRID)
        else:
            draw.rectangle(
                (x * scale_x, y * scale_y, x * scale_x + side_x, y * scale_y + side_y),
                outline=_GRID,
            )
    width = max(1, round(max(image.size) / 400))
    if tissue is not None:
        for feature in tissue.to_geojson()["features"]:
            for ring in feature["geometry"]["coordinates"]:
                points = [(px * scale_x, py * scale_y) for px, py in ring]
                draw.line(points, fill=_OUTLINE, width=width)
    _legend(draw, tiles, centres, width)
    return image


def _legend(draw: ImageDraw.ImageDraw, tiles: Tiles, centres: bool, width: int) -> None:
    """Two lines in the top-left corner: the outline's colour, and what a tile mark is."""
    mark = "dot = tile centre" if centres else "box = tile"
    lines = [
        (_OUTLINE, "line = tissue outline"),
        (_GRID, f"{mark} ({len(tiles)} tiles, {tiles.patch_size} px at {tiles.mpp:g} um/px)"),
    ]
    height = 14
    box_width = 8 + 7 * max(len(text) for _, text in lines)
    draw.rectangle((2, 2, 2 + box_width, 6 + height * len(lines)), fill=(255, 255, 255))
    for row, (colour, text) in enumerate(lines):
        top = 5 + row * height
        draw.rectangle((6, top + 3, 14, top + 9), fill=colour)
        draw.text((18, top), text, fill=colour)


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
