import pytest
import torch

from gpfm.backbone.checkpoint import (
    CheckpointError,
    convert_checkpoint,
    detect_layout,
    load_checkpoint_strict,
    read_checkpoint,
    save_safetensors,
)
from gpfm.backbone.vit import create_vit


def tiny(**overrides):
    return create_vit("vit_tiny_patch14", depth=4, img_size=56, **overrides).eval()


def _same_outputs(a, b, size=56):
    images = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(a(images)["cls"], b(images)["cls"])
        torch.testing.assert_close(a(images)["patch"], b(images)["patch"])


def gpfm_release(model, chunks=2):
    """The layout GPFM publishes: {"teacher": ...}, backbone. prefix, chunked blocks, heads."""
    per_chunk = len(model.blocks) // chunks
    state = {}
    for key, value in model.state_dict().items():
        if key.startswith("blocks."):
            index = int(key.split(".")[1])
            key = f"blocks.{index // per_chunk}.{key[len('blocks.') :]}"
        state[f"backbone.{key}"] = value.clone()
    state["dino_head.mlp.0.weight"] = torch.randn(8, 192)
    state["ibot_head.last_layer.weight_g"] = torch.randn(8, 1)
    state["uni_head.0.weight"] = torch.randn(4, 192)
    return {"teacher": state}


def test_gpfm_release_layout_loads_and_gives_the_same_numbers():
    source = tiny()
    checkpoint = gpfm_release(source)
    assert "backbone.blocks.1.2.norm1.weight" in checkpoint["teacher"]
    assert detect_layout(checkpoint["teacher"]) == "gpfm"
    target = tiny()
    load_checkpoint_strict(target, checkpoint)
    _same_outputs(source, target)


def test_dinov2_hub_layout_with_registers_and_swiglu():
    source = tiny(num_register_tokens=4, ffn_layer="swiglu")
    state = {}
    for key, value in source.state_dict().items():
        key = key.replace("reg_token", "register_tokens")
        key = key.replace("mlp.fc1", "mlp.w12").replace("mlp.fc2", "mlp.w3")
        state[key] = value.clone()
    assert detect_layout(state) == "dinov2"
    target = tiny(num_register_tokens=4, ffn_layer="swiglu")
    load_checkpoint_strict(target, state)
    _same_outputs(source, target)


def test_position_embeddings_of_another_resolution_are_resampled():
    source = create_vit("vit_tiny_patch14", depth=1, img_size=98)
    target = create_vit("vit_tiny_patch14", depth=1, img_size=56)
    load_checkpoint_strict(target, source.state_dict())
    assert target.pos_embed.shape == (1, 1 + 16, 192)
    torch.testing.assert_close(target.pos_embed[:, 0], source.pos_embed[:, 0])


def test_strict_loading_lists_missing_and_unexpected_keys():
    state = tiny().state_dict()
    del state["blocks.3.mlp.fc2.weight"]
    state["blocks.9.extra"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match=r"missing \['blocks\.3\.mlp\.fc2\.weight'\]") as info:
        load_checkpoint_strict(tiny(), state)
    assert "blocks.9.extra" in str(info.value)


def test_wrong_architecture_is_an_error_naming_the_shapes():
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_checkpoint_strict(
            create_vit("vit_small_patch14", depth=4, img_size=56), tiny().state_dict()
        )


def test_unrecognised_layout_names_some_keys():
    with pytest.raises(CheckpointError, match="unrecognised"):
        convert_checkpoint({"conv1.weight": torch.zeros(1), "fc.weight": torch.zeros(1)})


def test_safetensors_round_trip_with_metadata(tmp_path):
    source = tiny()
    path = save_safetensors(source, tmp_path / "w.safetensors", {"architecture": {"depth": 4}})
    assert [p.name for p in tmp_path.iterdir()] == ["w.safetensors"]
    target = tiny()
    load_checkpoint_strict(target, path)
    _same_outputs(source, target)


def test_torch_pickles_are_read_with_weights_only(tmp_path):
    path = tmp_path / "w.pth"
    torch.save(gpfm_release(tiny()), path)
    assert "teacher" in read_checkpoint(path)
    with pytest.raises(CheckpointError, match="no such"):
        read_checkpoint(tmp_path / "absent.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match=r"bad\.pth"):
        read_checkpoint(bad)


def test_timm_register_layout_without_class_position():
    import timm

    theirs = timm.create_model(
        "vit_small_patch14_reg4_dinov2", pretrained=False, img_size=56, depth=2
    ).eval()
    ours = create_vit("vit_small_patch14", img_size=56, depth=2, num_register_tokens=4).eval()
    load_checkpoint_strict(ours, theirs.state_dict())
    images = torch.randn(2, 3, 56, 56)
    with torch.no_grad():
        expected = theirs.forward_features(images)
        got = ours(images)
    torch.testing.assert_close(got["cls"], expected[:, 0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got["patch"], expected[:, 5:], atol=1e-5, rtol=1e-5)
