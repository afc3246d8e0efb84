"""A folder exported by training is an encoder: written by export_encoder, read by load_encoder."""

import json

import pytest
import torch

from gpfm.backbone.checkpoint import CheckpointError
from gpfm.backbone.vit import create_vit
from gpfm.backbone.weights import ChecksumMismatchError, WeightsError, file_sha256
from gpfm.backbone.zoo import (
    OPENAI_CLIP_MEAN,
    OPENAI_CLIP_STD,
    Preprocessing,
    export_encoder,
    load_encoder,
    read_encoder_config,
)


def trained_vit(**overrides):
    torch.manual_seed(0)
    options = {"depth": 2, "img_size": 112, "num_register_tokens": 2, **overrides}
    model = create_vit("vit_tiny_patch14", **options).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    return model


def test_an_exported_folder_loads_by_its_path_and_embeds_like_the_model(tmp_path):
    model = trained_vit()
    folder = export_encoder(
        model,
        tmp_path / "run-7",
        name="run-7",
        architecture="vit_tiny_patch14",
        metadata={"step": 1200, "config": {"lr": 4e-4}},
    )
    assert sorted(p.name for p in folder.iterdir()) == ["encoder.json", "model.safetensors"]
    encoder = load_encoder(folder)
    assert encoder.name == "run-7" and encoder.embed_dim == 192 and encoder.input_size == 112
    assert encoder.weights_sha256 == file_sha256(folder / "model.safetensors")
    tiles = torch.randint(0, 256, (2, 3, 150, 150), dtype=torch.uint8)
    batch = encoder.transform(tiles)
    with torch.no_grad():
        torch.testing.assert_close(encoder(batch), model(batch)["cls"])
        assert encoder.forward_tokens(batch)["registers"].shape == (2, 2, 192)
    config = read_encoder_config(folder)
    assert config["metadata"] == {"step": 1200, "config": {"lr": 4e-4}}
    assert config["vit"]["num_register_tokens"] == 2 and config["vit"]["img_size"] == 112


def test_the_class_plus_mean_embedding_and_own_preprocessing_are_kept(tmp_path):
    model = trained_vit(ffn_layer="swiglu", init_values=None)
    preprocessing = Preprocessing(128, 112, OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, "bicubic")
    folder = export_encoder(
        model, tmp_path / "e", name="e", preprocessing=preprocessing, embedding="cls+mean"
    )
    encoder = load_encoder(folder)
    assert encoder.embed_dim == 384 and encoder.preprocessing == preprocessing
    batch = torch.randn(1, 3, 112, 112)
    with torch.no_grad():
        features = model(batch)
        expected = torch.cat([features["cls"], features["patch"].mean(1)], dim=-1)
        torch.testing.assert_close(encoder(batch), expected)


def test_an_exported_folder_is_also_weights_for_its_architecture_name(tmp_path):
    model = create_vit("vit_tiny_patch16").eval()
    folder = export_encoder(model, tmp_path / "e", name="e", architecture="vit_tiny_patch16")
    encoder = load_encoder("vit_tiny_patch16", weights=folder)
    batch = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(encoder(batch), model(batch)["cls"])
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_encoder("vit_small_patch16", weights=folder)


def test_weights_changed_after_export_are_refused(tmp_path):
    folder = export_encoder(trained_vit(), tmp_path / "e", name="e")
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ChecksumMismatchError, match="SHA-256"):
        load_encoder(folder)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"format": "something-else"}, "'format' must be 'gpfm-encoder'"),
        ({"format_version": 99}, "format_version"),
        ({"embedding": "mean"}, "'embedding' must be one of"),
        ({"vit": {"img_size": 112, "heads": 3}}, r"unknown 'vit' arguments \['heads'\]"),
        ({"preprocessing": {"resize": 224}}, "'preprocessing'"),
        ({"weights": "missing.safetensors"}, "missing.safetensors"),
    ],
)
def test_a_malformed_encoder_json_says_what_is_wrong(tmp_path, change, message):
    folder = export_encoder(trained_vit(), tmp_path / "e", name="e")
    config = json.loads((folder / "encoder.json").read_text())
    (folder / "encoder.json").write_text(json.dumps(config | change))
    with pytest.raises(WeightsError, match=message):
        load_encoder(folder)


def test_a_folder_without_encoder_json_is_not_taken_for_an_encoder(tmp_path):
    with pytest.raises(WeightsError, match=r"has no encoder\.json"):
        read_encoder_config(tmp_path)


def test_only_our_vit_can_be_exported(tmp_path):
    with pytest.raises(TypeError, match="VisionTransformer"):
        export_encoder(torch.nn.Linear(2, 2), tmp_path, name="x")  # type: ignore[arg-type]
