from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile

from gpfm.slide import SyntheticSlide, make_synthetic_slide

REPO = Path(__file__).resolve().parents[3]
SHARED_SLIDES = REPO.parent / "shared" / "data" / "slides"


@pytest.fixture(scope="session")
def shared_slides() -> Path:
    """The real sample slides beside the project (skip when absent)."""
    if not (SHARED_SLIDES / "README.md").exists():
        pytest.skip("sample slides not found at ../shared/data/slides")
    return SHARED_SLIDES


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> SyntheticSlide:
    """A 4000 x 3000 px synthetic H&E slide at 0.5 µm/px with known tissue and tumour."""
    path = tmp_path_factory.mktemp("synthetic") / "synthetic.tiff"
    return make_synthetic_slide(path, 4000, 3000, mpp=0.5, seed=7)


@pytest.fixture
def rgb_image() -> np.ndarray:
    """A 600 x 400 RGB image: white glass with a pink rectangle of 'tissue'."""
    rng = np.random.default_rng(0)
    image = np.full((400, 600, 3), 245, np.uint8)
    image[100:300, 150:450] = (220, 120, 170)
    image[100:300, 150:450] += rng.integers(0, 10, (200, 300, 3), dtype=np.uint8)
    return image


def _write_flat_tiff(path: Path, image: np.ndarray, mpp: float | None = None) -> Path:
    options: dict[str, object] = {"photometric": "rgb", "rowsperstrip": 64}
    if mpp is not None:
        options.update(resolution=(1e4 / mpp, 1e4 / mpp), resolutionunit="CENTIMETER")
    tifffile.imwrite(path, image, **options)
    return path


@pytest.fixture
def write_flat_tiff() -> Callable[..., Path]:
    """Writes a flat (strip-based, untiled) RGB TIFF, with resolution tags in cm given ``mpp``."""
    return _write_flat_tiff
