"""Image files on disk: which suffixes count as images, and a folder's images in a fixed order.

Light on purpose (no model code): gpfm-distill's image datasets use it too.
"""

from __future__ import annotations

import os
from pathlib import Path

from gpfm.backbone.errors import BackboneError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".webp")


class ImageReadError(BackboneError, OSError):
    """An image file that cannot be found or decoded; the message names it."""


def image_files(folder: str | os.PathLike[str], recursive: bool = False) -> list[Path]:
    """The image files in ``folder`` (``IMAGE_SUFFIXES``, any case), sorted by path.

    Raises:
        ImageReadError: no such folder, or no image in it.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ImageReadError(f"{root}: no such folder")
    pattern = "**/*" if recursive else "*"
    files = sorted(p for p in root.glob(pattern) if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ImageReadError(f"{root}: no images ({', '.join(IMAGE_SUFFIXES)})")
    return files
