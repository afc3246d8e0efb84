import pytest
import timm
import torch

from gpfm.backbone.attention import resolve_backend, xformers_available
from gpfm.backbone.checkpoint import load_checkpoint_strict
from gpfm.backbone.vit import VIT_ARCHITECTURES, count_parameters, create_vit

torch.manual_seed(0)
CUDA_XFORMERS = torch.cuda.is_available() and xformers_available()


def tiny(**overrides):
    options = {"depth": 2, "img_size": 56, **overrides}
    return create_vit("vit_tiny_patch14", **options).eval()


def test_every_named_architecture_builds_on_meta_with_its_size():
    expected_millions = {"tiny": 5.5, "small": 21.6, "base": 85.8, "large": 303.2, "giant": 1134.8}
    with torch.device("meta"):
        for name, config in VIT_ARCHITECTURES.items():
            model = create_vit(name)
            size = name.split("_")[1]
            assert model.embed_dim == config["embed_dim"]
            assert count_parameters(model) / 1e6 == pytest.approx(expected_millions[size], rel=0.01)


def test_features_are_cls_patch_and_registers_after_the_final_norm():
    model = tiny(num_register_tokens=4)
    features = model(torch.randn(2, 3, 56, 56))
    assert features["cls"].shape == (2, 192)
    assert features["patch"].shape == (2, 16, 192)
    assert features["registers"].shape == (2, 4, 192)
    tokens = torch.cat([features["cls"][:, None], features["patch"]], 1)
    # Each token went through the final LayerNorm (its affine part is still the identity here).
    # (Fresh registers are ~0 vectors, which a LayerNorm leaves ~0, so they are not checked.)
    assert tokens.mean(-1).abs().max() < 1e-4
    assert (tokens.var(-1, unbiased=False) - 1).abs().max() < 1e-2


def test_other_input_sizes_interpolate_position_embeddings():
    model = tiny()
    assert model(torch.randn(1, 3, 98, 98))["patch"].shape == (1, 49, 192)
    assert model(torch.randn(1, 3, 112, 70))["patch"].shape == (1, 8 * 5, 192)
    # 512 px at patch 14: a 36 x 36 grid, the last 8 px unseen.
    assert model(torch.randn(1, 3, 512, 512))["patch"].shape == (1, 36 * 36, 192)


def test_fixed_size_model_refuses_other_sizes():
    with pytest.raises(ValueError, match="dynamic_img_size"):
        tiny(dynamic_img_size=False)(torch.randn(1, 3, 98, 98))


def test_list_of_crops_equals_running_each_alone():
    model = tiny()
    crops = [torch.randn(2, 3, 56, 56), torch.randn(3, 3, 42, 42), torch.randn(1, 3, 56, 56)]
    together = model(crops)
    for crop, features in zip(crops, together, strict=True):
        alone = model(crop)
        for name in ("cls", "patch"):
            torch.testing.assert_close(features[name], alone[name], atol=1e-5, rtol=1e-5)


def test_masked_patches_are_replaced_by_the_mask_token():
    model = tiny()
    with torch.no_grad():
        model.mask_token.normal_()
    images = torch.randn(2, 3, 56, 56)
    masks = torch.zeros(2, 16, dtype=torch.bool)
    masks[0, :5] = True
    masked = model(images, masks=masks)
    plain = model(images)
    assert not torch.allclose(masked["patch"][0], plain["patch"][0])
    torch.testing.assert_close(masked["patch"][1], plain["patch"][1])
    # Whatever the image under a masked patch, the token entering the blocks is the same.
    other = images.clone()
    other[0, :, :14, :14] = 0
    tokens = model.prepare_tokens(other, masks)
    torch.testing.assert_close(tokens, model.prepare_tokens(images, masks))


def test_masks_in_a_list_of_crops():
    model = tiny()
    crops = [torch.randn(2, 3, 56, 56), torch.randn(2, 3, 56, 56), torch.randn(2, 3, 28, 28)]
    masks = [torch.ones(2, 16, dtype=torch.bool), None, None]
    out = model(crops, masks=masks)
    torch.testing.assert_close(out[1]["cls"], model(crops[1])["cls"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        out[0]["cls"], model(crops[0], masks=masks[0])["cls"], atol=1e-5, rtol=1e-5
    )
    with pytest.raises(ValueError, match="masks"):
        model(crops, masks=[None])


def test_stochastic_depth_only_in_training():
    model = tiny(drop_path_rate=0.5)
    images = torch.randn(4, 3, 56, 56)
    torch.testing.assert_close(model(images)["cls"], model(images)["cls"])
    model.train()
    torch.manual_seed(1)
    first = model(images)["cls"]
    torch.manual_seed(2)
    assert not torch.allclose(first, model(images)["cls"])


@pytest.mark.parametrize("ffn_layer", ["mlp", "swiglu"])
def test_attention_backends_agree(monkeypatch, ffn_layer):
    model = tiny(ffn_layer=ffn_layer, num_register_tokens=2)
    images = torch.randn(2, 3, 56, 56)
    outputs = {}
    for backend in ("sdpa", "math"):
        monkeypatch.setenv("GPFM_ATTENTION", backend)
        outputs[backend] = model(images)
    for name in ("cls", "patch", "registers"):
        torch.testing.assert_close(
            outputs["sdpa"][name], outputs["math"][name], atol=1e-5, rtol=1e-5
        )


@pytest.mark.skipif(not CUDA_XFORMERS, reason="xformers runs only on CUDA")
def test_xformers_agrees_with_math_on_cuda(monkeypatch):
    model = tiny().cuda()
    images = torch.randn(2, 3, 56, 56, device="cuda")
    outputs = {}
    for backend in ("xformers", "math"):
        monkeypatch.setenv("GPFM_ATTENTION", backend)
        outputs[backend] = model(images)["cls"]
    torch.testing.assert_close(outputs["xformers"], outputs["math"], atol=1e-5, rtol=1e-5)


def test_backend_choice(monkeypatch):
    monkeypatch.delenv("GPFM_ATTENTION", raising=False)
    assert resolve_backend(None, torch.device("cpu")) == "sdpa"
    assert resolve_backend("math", torch.device("cpu")) == "math"
    monkeypatch.setenv("GPFM_ATTENTION", "math")
    assert resolve_backend(None, torch.device("cpu")) == "math"
    with pytest.raises(ValueError, match="xformers"):
        resolve_backend("xformers", torch.device("cpu"))
    with pytest.raises(ValueError, match="one of"):
        resolve_backend("flash", torch.device("cpu"))


def test_package_imports_without_xformers():
    import importlib

    assert importlib.import_module("gpfm.backbone.vit")


def _compare_with_timm(ours, theirs, size):
    load_checkpoint_strict(ours, theirs.state_dict())
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        expected = theirs.forward_features(images)
        got = ours(images)
    torch.testing.assert_close(got["cls"], expected[:, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got["patch"], expected[:, 1:], atol=1e-5, rtol=1e-5)


def test_same_numbers_as_timm_dinov2_small():
    theirs = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=224).eval()
    _compare_with_timm(create_vit("vit_small_patch14").eval(), theirs, 224)


def test_same_numbers_as_timm_vit_base_patch16():
    theirs = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
    _compare_with_timm(create_vit("vit_base_patch16", init_values=None).eval(), theirs, 224)
