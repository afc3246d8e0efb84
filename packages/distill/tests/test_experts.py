"""Experts see GPFM's inputs and give GPFM's targets (birkhoffkiki/GPFM 4f8be2b)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gpfm.backbone import load_encoder
from gpfm.distill import DistillConfigError, expert_from_encoder, random_vit_expert


def test_shared_preprocessing_hands_the_global_crops_over_unchanged():
    # ssl_meta_arch.py:210-221: every expert gets `global_crops` as they are.
    seen = {}
    expert = random_vit_expert("vit_tiny_patch16", seed=0, depth=1, img_size=64)
    original = expert.model.forward

    def spy(x, *args, **kwargs):
        seen["x"] = x
        return original(x, *args, **kwargs)

    expert.model.forward = spy
    crops = torch.randn(2, 3, 96, 96)
    expert(crops)
    assert torch.equal(seen["x"], crops)


def test_own_preprocessing_resizes_to_the_experts_input():
    expert = random_vit_expert("vit_tiny_patch16", seed=0, preprocessing="own", img_size=64)
    assert expert.input_size == 64


@pytest.fixture(scope="module")
def conch():
    torch.manual_seed(0)
    return load_encoder("conch", random_init=True).eval()


def test_conch_target_is_the_projected_normalised_embedding(conch):
    # fms.py:48-58: CONCH's visual forward applies proj_contrast; GPFM then L2-normalises.
    expert = expert_from_encoder(conch)
    crops = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        out = expert(crops)
        visual = conch.model
        pooled = visual.ln_contrast(
            visual.attn_pool_contrast(visual.trunk.forward_features(crops))[:, 0]
        )
        expected = F.normalize(pooled @ visual.proj_contrast, dim=-1)
    torch.testing.assert_close(out["cls"], expected, rtol=1e-5, atol=1e-6)
    assert out["patch"] is None
    # the zoo's CONCH feature stays the unprojected embedding its authors recommend
    with torch.no_grad():
        zoo = expert_from_encoder(conch, target="embedding")(crops)["cls"]
        torch.testing.assert_close(zoo, conch(crops))
    assert not torch.allclose(zoo, out["cls"])


def test_vit_expert_targets_are_class_and_patch_tokens():
    torch.manual_seed(0)
    encoder = load_encoder("vit_tiny_patch16", random_init=True).eval()
    expert = expert_from_encoder(encoder)
    crops = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        out = expert(crops)
        tokens = encoder.forward_tokens(crops)
    torch.testing.assert_close(out["cls"], tokens["cls"])
    torch.testing.assert_close(out["patch"], tokens["patch"])


def test_unknown_preprocessing_is_refused_by_name():
    torch.manual_seed(0)
    encoder = load_encoder("vit_tiny_patch16", random_init=True)
    with pytest.raises(DistillConfigError, match="preprocessing"):
        expert_from_encoder(encoder, preprocessing="resize")  # type: ignore[arg-type]
