# ruff: noqa: N806 - the reference is transcribed with its own names
"""Position embeddings at other input sizes follow DINOv2's / GPFM's own rule.

The reference is transcribed from birkhoffkiki/GPFM at commit 4f8be2b,
``pretrain/dinov2/models/vision_transformer.py:165-187`` (``interpolate_pos_encoding``), itself
facebookresearch/dinov2's: bicubic resizing with ``scale_factor = (g + 0.1) / sqrt(N)``.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from gpfm.backbone import create_vit, load_checkpoint_strict
from gpfm.backbone.checkpoint import resample_pos_embed


def reference_interpolate_pos_encoding(pos_embed, patch_size, x, w, h):
    # vision_transformer.py:165-187 (x: tokens incl. class token; w, h: the image's H and W)
    previous_dtype = x.dtype
    npatch = x.shape[1] - 1
    N = pos_embed.shape[1] - 1
    if npatch == N and w == h:
        return pos_embed
    pos_embed = pos_embed.float()
    class_pos_embed = pos_embed[:, 0]
    patch_pos_embed = pos_embed[:, 1:]
    dim = x.shape[-1]
    w0 = w // patch_size
    h0 = h // patch_size
    w0, h0 = w0 + 0.1, h0 + 0.1
    patch_pos_embed = nn.functional.interpolate(
        patch_pos_embed.reshape(1, int(math.sqrt(N)), int(math.sqrt(N)), dim).permute(0, 3, 1, 2),
        scale_factor=(w0 / math.sqrt(N), h0 / math.sqrt(N)),
        mode="bicubic",
    )
    assert int(w0) == patch_pos_embed.shape[-2] and int(h0) == patch_pos_embed.shape[-1]
    patch_pos_embed = patch_pos_embed.permute(0, 2, 3, 1).view(1, -1, dim)
    return torch.cat((class_pos_embed.unsqueeze(0), patch_pos_embed), dim=1).to(previous_dtype)


def _reference_tokens_before_blocks(model, images):
    # prepare_tokens_with_masks (vision_transformer.py:189-198) without masks
    _batch, _channels, w, h = images.shape  # (B, nc, w, h) in the reference
    x = model.patch_embed(images)
    x = torch.cat((model.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
    return x + reference_interpolate_pos_encoding(model.pos_embed, model.patch_size, x, w, h)


@pytest.mark.parametrize(("img_size", "input_size"), [(224, 98), (518, 224), (224, 224)])
def test_tokens_equal_the_reference_at_other_sizes(img_size, input_size):
    torch.manual_seed(0)
    model = create_vit("vit_small_patch14", img_size=img_size, depth=1).eval()
    images = torch.randn(2, 3, input_size, input_size)
    with torch.no_grad():
        ours = model.prepare_tokens(images)
        reference = _reference_tokens_before_blocks(model, images)
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-6)


def test_the_dinov2_rule_differs_from_resizing_to_a_size():
    # The difference the rule makes: what a `size=` resize would have given instead.
    torch.manual_seed(0)
    model = create_vit("vit_small_patch14", img_size=518, depth=1)
    sized = create_vit("vit_small_patch14", img_size=518, depth=1, pos_embed_rule="size")
    sized.load_state_dict(model.state_dict())
    with torch.no_grad():
        a, b = model.interpolate_pos_embed(16, 16), sized.interpolate_pos_embed(16, 16)
    assert (a - b).abs().max() > 1e-3


def test_a_518_px_checkpoint_loaded_at_224_px_equals_the_reference_at_224():
    torch.manual_seed(0)
    meta_model = create_vit("vit_small_patch14", img_size=518, depth=1).eval()
    ours = create_vit("vit_small_patch14", img_size=224, depth=1).eval()
    load_checkpoint_strict(ours, meta_model.state_dict())
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        reference = _reference_tokens_before_blocks(meta_model, images)
        torch.testing.assert_close(ours.prepare_tokens(images), reference, rtol=0, atol=1e-6)
        torch.testing.assert_close(
            ours(images)["cls"], meta_model(images)["cls"], rtol=0, atol=1e-5
        )


def test_resample_rejects_an_unknown_rule():
    with pytest.raises(ValueError, match="rule"):
        resample_pos_embed(torch.zeros(1, 17, 8), 2, rule="nearest")  # type: ignore[arg-type]
