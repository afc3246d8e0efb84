"""The encoder zoo: every entry's architecture, the registry, errors, and tiny encoders at work."""

import hashlib

import numpy as np
import pytest
import torch
from timm.layers import SwiGLUPacked
from timm.models.vision_transformer import VisionTransformer as TimmViT
from torch import nn

from gpfm.backbone.checkpoint import CheckpointError
from gpfm.backbone.vit import VIT_ARCHITECTURES, count_parameters
from gpfm.backbone.zoo import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MissingWeightsError,
    Preprocessing,
    UnknownEncoderError,
    get_encoder_spec,
    list_encoders,
    load_encoder,
    register_encoder,
    unregister_encoder,
)

ZOO = [
    "gpfm",
    "uni",
    "uni2-h",
    "conch",
    "phikon",
    "phikon-v2",
    "virchow2",
    "prov-gigapath",
    "h-optimus-0",
    "ctranspath",
    "plip",
    "chief",
    "resnet50-imagenet",
    "dinov2-vits14",
    "dinov2-vitb14",
    "dinov2-vitl14",
]
EMBED_DIMS = {
    "gpfm": 1024,
    "uni": 1024,
    "uni2-h": 1536,
    "conch": 512,
    "phikon": 768,
    "phikon-v2": 1024,
    "virchow2": 2560,
    "prov-gigapath": 1536,
    "h-optimus-0": 1536,
    "ctranspath": 768,
    "plip": 512,
    "chief": 768,
    "resnet50-imagenet": 1024,
    "dinov2-vits14": 384,
    "dinov2-vitb14": 768,
    "dinov2-vitl14": 1024,
}


def timm_reference_parameters(architecture: str) -> int:
    """Parameters of timm's ViT configured like our named architecture (built on meta)."""
    config = VIT_ARCHITECTURES[architecture]
    kwargs = {
        "img_size": 224,
        "patch_size": config["patch_size"],
        "embed_dim": config["embed_dim"],
        "depth": config["depth"],
        "num_heads": config["num_heads"],
        "init_values": 1e-5,
        "num_classes": 0,
    }
    if config["ffn_layer"] == "swiglu":
        kwargs |= {"mlp_layer": SwiGLUPacked, "act_layer": nn.SiLU, "mlp_ratio": 2.66667 * 2}
    with torch.device("meta"):
        return count_parameters(TimmViT(**kwargs))


def test_the_zoo_holds_every_model_of_the_benchmark_and_every_vit_architecture():
    names = list_encoders()
    assert set(ZOO) <= set(names)
    assert set(VIT_ARCHITECTURES) <= set(names)
    assert names == sorted(names)


@pytest.mark.parametrize("name", sorted(set(ZOO) | set(VIT_ARCHITECTURES)))
def test_entry_builds_on_meta_with_its_published_size_and_embedding(name):
    encoder = load_encoder(name, device="meta")
    spec = get_encoder_spec(name)
    parameters = count_parameters(encoder.model)
    published = spec.published_params or timm_reference_parameters(name)
    assert parameters == pytest.approx(published, rel=0.01), spec.params_source
    expected_dim = EMBED_DIMS.get(name) or VIT_ARCHITECTURES[name]["embed_dim"]
    assert encoder.embed_dim == expected_dim
    side = encoder.input_size
    batch = torch.empty(2, 3, side, side, device="meta")
    assert encoder(batch).shape == (2, expected_dim)
    if encoder.has_tokens:
        tokens = encoder.forward_tokens(batch)
        width = tokens["cls"].shape[-1]
        assert tokens["cls"].shape == (2, width)
        assert tokens["patch"].shape[0] == 2 and tokens["patch"].shape[1] >= 49
        assert tokens["patch"].shape[2] == tokens["registers"].shape[2] == width


def test_published_sizes_say_where_they_come_from():
    for name in ZOO:
        spec = get_encoder_spec(name)
        assert spec.published_params and spec.params_source, name
        assert spec.description, name


def test_the_giant_models_are_the_sizes_their_authors_print():
    # Prov-GigaPath's demo prints its exact count; ours must be that model, not an approximation.
    gigapath = load_encoder("prov-gigapath", device="meta")
    assert count_parameters(gigapath.model) == 1_134_953_984
    virchow2 = load_encoder("virchow2", device="meta")
    assert virchow2.embed_dim == 2 * virchow2.model.embed_dim  # class token + mean patch token


def test_a_zoo_model_without_weights_is_an_error_naming_weights_and_the_hub_id():
    with pytest.raises(MissingWeightsError) as error:
        load_encoder("uni")
    message = str(error.value)
    assert "weights=" in message and "hf-hub:MahmoodLab/UNI" in message
    assert "random_init=True" in message


def test_a_model_not_on_the_hub_says_where_its_weights_are_published():
    with pytest.raises(MissingWeightsError, match="weights=") as error:
        load_encoder("ctranspath")
    assert "TransPath" in str(error.value) and "hf-hub" not in str(error.value)


def test_an_unknown_name_lists_the_registered_encoders():
    with pytest.raises(UnknownEncoderError, match="conch"):
        load_encoder("not-a-model")


def test_weights_and_random_init_cannot_both_be_given(tmp_path):
    path = tmp_path / "w.pth"
    torch.save({}, path)
    with pytest.raises(ValueError, match="not both"):
        load_encoder("vit_tiny_patch16", weights=path, random_init=True)
    with pytest.raises(ValueError, match="meta"):
        load_encoder("vit_tiny_patch16", weights=path, device="meta")


def test_a_random_tiny_encoder_embeds_uint8_tiles_of_any_size():
    encoder = load_encoder("vit_tiny_patch16", random_init=True)
    assert not encoder.training and encoder.weights_sha256 is None
    tiles = [torch.randint(0, 256, (3, 300, 260), dtype=torch.uint8) for _ in range(3)]
    batch = torch.stack([encoder.transform(tile) for tile in tiles])
    assert batch.shape == (3, 3, 224, 224) and batch.dtype == torch.float32
    with torch.no_grad():
        features = encoder(batch)
        tokens = encoder.forward_tokens(batch)
    assert features.shape == (3, 192)
    torch.testing.assert_close(features, tokens["cls"])
    assert tokens["patch"].shape == (3, 196, 192) and tokens["registers"].shape == (3, 0, 192)


def test_the_embedding_of_a_tile_does_not_depend_on_its_batch():
    torch.manual_seed(0)
    encoder = load_encoder("vit_tiny_patch14", random_init=True)
    batch = torch.randn(3, 3, 112, 112)  # the ViT takes any multiple of its patch size
    with torch.no_grad():
        together = encoder(batch)
        alone = torch.cat([encoder(batch[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


def test_an_encoder_in_bfloat16_casts_its_input():
    encoder = load_encoder("vit_tiny_patch16", random_init=True, dtype=torch.bfloat16)
    assert encoder.dtype == torch.bfloat16
    batch = encoder.transform(torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8))
    with torch.no_grad():
        assert encoder(batch).dtype == torch.bfloat16


def test_the_encoder_refuses_untransformed_tiles():
    encoder = load_encoder("vit_tiny_patch16", random_init=True)
    with pytest.raises(TypeError, match="transform"):
        encoder(torch.zeros(1, 3, 224, 224, dtype=torch.uint8))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        encoder(torch.zeros(3, 224, 224))


def test_a_cnn_has_no_tokens():
    encoder = load_encoder("resnet50-imagenet", device="meta")
    assert not encoder.has_tokens
    with pytest.raises(TypeError, match="no tokens"):
        encoder.forward_tokens(torch.empty(1, 3, 224, 224, device="meta"))


class TinyCNN(nn.Module):
    """A user's own model: forward gives the embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, kernel_size=4, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))


def _strip_user_prefix(checkpoint, model):
    return {k.removeprefix("net."): v for k, v in checkpoint.items()}


def test_a_user_adds_a_model_with_one_decorated_function(tmp_path):
    @register_encoder(
        "my-tiny-cnn",
        embed_dim=8,
        preprocessing=Preprocessing(64, 64, IMAGENET_MEAN, IMAGENET_STD),
        convert=_strip_user_prefix,
        hub_id="me/tiny-cnn",
    )
    def my_tiny_cnn() -> nn.Module:
        return TinyCNN()

    try:
        assert "my-tiny-cnn" in list_encoders()
        source = TinyCNN()
        torch.save({f"net.{k}": v for k, v in source.state_dict().items()}, tmp_path / "cnn.pth")
        encoder = load_encoder("my-tiny-cnn", weights=tmp_path / "cnn.pth")
        tile = np.random.default_rng(0).integers(0, 256, (100, 120, 3), dtype=np.uint8)
        batch = encoder.transform(tile)[None]
        assert batch.shape == (1, 3, 64, 64)
        with torch.no_grad():
            torch.testing.assert_close(encoder(batch), source(batch))
        with pytest.raises(MissingWeightsError, match="hf-hub:me/tiny-cnn"):
            load_encoder("my-tiny-cnn")
        with pytest.raises(ValueError, match="already registered"):
            register_encoder("my-tiny-cnn", embed_dim=8, preprocessing=encoder.preprocessing)(
                TinyCNN
            )
    finally:
        unregister_encoder("my-tiny-cnn")
    assert "my-tiny-cnn" not in list_encoders()


def test_weights_that_do_not_fit_the_architecture_are_listed(tmp_path):
    small = load_encoder("vit_tiny_patch16", random_init=True)
    state = small.model.state_dict()
    del state["norm.weight"]
    state["extra.weight"] = torch.zeros(1)
    torch.save(state, tmp_path / "tiny.pth")
    with pytest.raises(CheckpointError, match=r"missing \['norm.weight'\].*unexpected \['extra"):
        load_encoder("vit_tiny_patch16", weights=tmp_path / "tiny.pth")
    torch.save(small.model.state_dict(), tmp_path / "tiny_full.pth")
    with pytest.raises(CheckpointError, match=r"shape mismatches \['blocks.0"):
        load_encoder("vit_small_patch16", weights=tmp_path / "tiny_full.pth")


def test_loaded_weights_are_the_ones_in_the_file_and_their_hash_is_kept(tmp_path):
    source = load_encoder("vit_tiny_patch16", random_init=True)
    torch.save(source.model.state_dict(), tmp_path / "tiny.pth")
    loaded = load_encoder("vit_tiny_patch16", weights=tmp_path / "tiny.pth")
    batch = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(loaded(batch), source(batch))
    assert loaded.weights_sha256 == hashlib.sha256((tmp_path / "tiny.pth").read_bytes()).hexdigest()
