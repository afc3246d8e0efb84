"""Small synthetic slides, a tiny encoder's weights file, and the shared real slides."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gpfm.backbone import load_encoder, save_safetensors
from gpfm.slide import make_synthetic_slide

SHARED_SLIDES = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "slides"
TINY = "vit_tiny_patch16"


@pytest.fixture(scope="session")
def slides_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two small pyramidal JPEG TIFFs at 0.5 µm/px with tissue (about 10 tiles each)."""
    folder = tmp_path_factory.mktemp("slides")
    make_synthetic_slide(folder / "alpha.tiff", 1400, 1100, 0.5, seed=1)
    make_synthetic_slide(folder / "beta.tiff", 1200, 1000, 0.5, seed=2)
    return folder


def _weights(folder: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    encoder = load_encoder(TINY, random_init=True)
    return save_safetensors(encoder.model.state_dict(), folder / f"tiny-{seed}.safetensors")


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A weights file of the tiny ViT (a real SHA-256, the same in every process)."""
    return _weights(tmp_path_factory.mktemp("weights"), seed=1)


@pytest.fixture(scope="session")
def other_tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _weights(tmp_path_factory.mktemp("weights-other"), seed=2)


@pytest.fixture
def shared_slides() -> Path:
    if not SHARED_SLIDES.is_dir():
        pytest.skip("the shared sample slides are not present")
    return SHARED_SLIDES
