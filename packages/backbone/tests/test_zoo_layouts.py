"""Each zoo entry reads weights saved in its own published key layout, and is its authors' model.

Round trips: a small variant of the entry's network gets random weights, the weights are written
the way the authors publish them (names, wrappers, buffers and all), and ``load_encoder`` must
give back the same embeddings. The full-size networks are only built on the meta device, except
the small CTransPath / CHIEF and the truncated ResNet-50, which are loaded at their real size.
"""

import re
from contextlib import contextmanager

import pytest
import timm
import torch
from timm.layers import SwiGLUPacked
from torch import nn
from torchvision.models import resnet50

from gpfm.backbone.checkpoint import CheckpointError
from gpfm.backbone.zoo import get_encoder_spec, load_encoder, register_encoder, unregister_encoder
from gpfm.backbone.zoo.ctranspath import ConvStem, CTransPath


def perturb(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random weights everywhere, including norms, LayerScale and BatchNorm statistics."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn(parameter.shape, generator=generator))
        for name, buffer in model.named_buffers():
            if name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5, generator=generator)
            elif name.endswith("running_mean"):
                buffer.normal_(0.0, 0.1, generator=generator)
    return model.eval()


@contextmanager
def variant(name: str, embed_dim: int, overrides: dict):
    """A registered small variant of a zoo entry: same layout, converter and embedding."""
    spec = get_encoder_spec(name)
    temporary = f"small-{name}"
    register_encoder(
        temporary,
        embed_dim=embed_dim,
        preprocessing=spec.preprocessing,
        embedding=spec.embedding,
        tokens=spec.tokens,
        convert=spec.convert,
    )(lambda: spec.factory(**overrides))
    try:
        yield temporary, spec
    finally:
        unregister_encoder(temporary)


def embed(spec, model, batch):
    with torch.no_grad():
        return spec.embedding(model, batch) if spec.embedding else model(batch)


def assert_round_trip(name, embed_dim, overrides, publish, tmp_path, filename, size=224):
    """Publish a small variant's random weights with ``publish`` and load them back by name."""
    with variant(name, embed_dim, overrides) as (temporary, spec):
        torch.manual_seed(0)
        source = perturb(spec.factory(**overrides))
        path = tmp_path / filename
        torch.save(publish(source.state_dict()), path)
        encoder = load_encoder(temporary, weights=path)
        batch = torch.randn(2, 3, size, size)
        with torch.no_grad():
            torch.testing.assert_close(encoder(batch), embed(spec, source, batch))
        return encoder, source


SMALL_DIM = 96  # SwiGLU's packed hidden width (5.33 x 96 = 512) must be even
SMALL_VIT = {"embed_dim": SMALL_DIM, "depth": 2, "num_heads": 4}


def gpfm_release(state, chunks=4):
    """GPFM's release: {"teacher": ...}, ``backbone.`` keys, blocks in chunks, heads beside."""
    depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    per_chunk = max(1, depth // chunks)
    teacher = {}
    for key, value in state.items():
        if key.startswith("blocks."):
            index = int(key.split(".")[1])
            key = f"blocks.{index // per_chunk}.{key.removeprefix('blocks.')}"
        teacher[f"backbone.{key}"] = value
    teacher["dino_head.mlp.0.weight"] = torch.randn(16, 64)
    teacher["ibot_head.last_layer.weight_g"] = torch.randn(16, 1)
    teacher["uni_head.0.weight"] = torch.randn(8, 64)
    return {"teacher": teacher}


def test_gpfm_reads_its_release_layout(tmp_path):
    encoder, _ = assert_round_trip(
        "gpfm", SMALL_DIM, {**SMALL_VIT, "depth": 4}, gpfm_release, tmp_path, "GPFM.pth"
    )
    assert encoder.name == "small-gpfm"


def test_dinov2_reads_the_hub_layout_and_interpolates_its_518_px_grid(tmp_path):
    _, source = assert_round_trip(
        "dinov2-vits14", SMALL_DIM, SMALL_VIT, dict, tmp_path, "dinov2_vits14.pth"
    )
    assert source.pos_embed.shape[1] == 1 + 37 * 37  # 518 px grid, used at 224 px


@pytest.mark.parametrize("name", ["uni", "uni2-h", "virchow2", "prov-gigapath", "h-optimus-0"])
def test_timm_entries_read_their_published_state_dicts(name, tmp_path):
    dim = 2 * SMALL_DIM if name == "virchow2" else SMALL_DIM
    assert_round_trip(name, dim, SMALL_VIT, dict, tmp_path, "pytorch_model.bin")


AUTHORS_RECIPES = {
    # the constructions the model cards and the authors' code give, verbatim in their arguments
    "uni": (
        "vit_large_patch16_224",
        {"img_size": 224, "patch_size": 16, "init_values": 1e-5, "num_classes": 0},
    ),
    "uni2-h": (
        "vit_giant_patch14_224",
        {
            "img_size": 224,
            "patch_size": 14,
            "depth": 24,
            "num_heads": 24,
            "init_values": 1e-5,
            "embed_dim": 1536,
            "mlp_ratio": 2.66667 * 2,
            "num_classes": 0,
            "no_embed_class": True,
            "mlp_layer": SwiGLUPacked,
            "act_layer": nn.SiLU,
            "reg_tokens": 8,
        },
    ),
    "virchow2": (
        "vit_huge_patch14_224",
        {
            "img_size": 224,
            "init_values": 1e-5,
            "num_classes": 0,
            "reg_tokens": 4,
            "mlp_ratio": 5.3375,
            "global_pool": "",
            "mlp_layer": SwiGLUPacked,
            "act_layer": nn.SiLU,
        },
    ),
    "prov-gigapath": (
        "vit_giant_patch14_dinov2",
        {
            "img_size": 224,
            "in_chans": 3,
            "patch_size": 16,
            "embed_dim": 1536,
            "depth": 40,
            "num_heads": 24,
            "init_values": 1e-05,
            "mlp_ratio": 5.33334,
            "num_classes": 0,
        },
    ),
    "h-optimus-0": (
        "vit_giant_patch14_reg4_dinov2",
        {"img_size": 224, "init_values": 1e-5, "num_classes": 0},
    ),
    "ctranspath": ("swin_tiny_patch4_window7_224", {"embed_layer": ConvStem, "num_classes": 0}),
    "phikon": ("vit_base_patch16_224", {"num_classes": 0}),
}


@pytest.mark.parametrize("name", sorted(AUTHORS_RECIPES))
def test_timm_built_entries_have_exactly_the_authors_parameters(name):
    architecture, kwargs = AUTHORS_RECIPES[name]
    with torch.device("meta"):
        theirs = timm.create_model(architecture, pretrained=False, **kwargs)
    ours = load_encoder(name, device="meta").model
    shapes = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in theirs.state_dict().items()}


def conch_release(state):
    """CONCH's ``pytorch_model.bin``: the whole CoCa model, visual tower under ``visual.``."""
    published = {f"visual.{k}": v for k, v in state.items()}
    published["text.token_embedding.weight"] = torch.randn(10, 8)
    published["text.transformer.resblocks.0.attn.in_proj_weight"] = torch.randn(24, 8)
    published["text_decoder.ln_final.weight"] = torch.randn(8)
    published["logit_scale"] = torch.tensor(4.6)
    return published


CONCH_SMALL = {
    "image_size": 64,
    "width": 64,
    "layers": 2,
    "heads": 4,
    "embed_dim": 32,
    "embed_dim_caption": 64,
    "pooler_heads": 4,
    "caption_queries": 8,
}


def test_conch_keeps_the_visual_tower_of_its_coca_checkpoint(tmp_path):
    encoder, _ = assert_round_trip(
        "conch", 32, CONCH_SMALL, conch_release, tmp_path, "pytorch_model.bin", size=64
    )
    batch = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        retrieval = encoder.model.encode_image(batch)  # projected and L2-normalised
        plain = encoder.model.encode_image(batch, proj_contrast=False, normalize=False)
    torch.testing.assert_close(retrieval.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(plain, encoder(batch))
    assert not torch.allclose(retrieval, torch.nn.functional.normalize(plain, dim=-1))


def hf_vit_layout(state, depth, dinov2=False):
    """A timm / our ViT state dict written with ``transformers``' published ViT / DINOv2 names."""
    published = {
        "embeddings.cls_token": state["cls_token"],
        "embeddings.position_embeddings": state["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
        "layernorm.weight": state["norm.weight"],
        "layernorm.bias": state["norm.bias"],
    }
    if dinov2:
        published["embeddings.mask_token"] = state["mask_token"]
    for i in range(depth):
        ours, hf = f"blocks.{i}.", f"encoder.layer.{i}."
        for kind in ("weight", "bias"):
            query, key, value = state[f"{ours}attn.qkv.{kind}"].chunk(3)
            published[f"{hf}attention.attention.query.{kind}"] = query
            published[f"{hf}attention.attention.key.{kind}"] = key
            published[f"{hf}attention.attention.value.{kind}"] = value
            published[f"{hf}attention.output.dense.{kind}"] = state[f"{ours}attn.proj.{kind}"]
            if dinov2:
                published[f"{hf}norm1.{kind}"] = state[f"{ours}norm1.{kind}"]
                published[f"{hf}norm2.{kind}"] = state[f"{ours}norm2.{kind}"]
                published[f"{hf}mlp.fc1.{kind}"] = state[f"{ours}mlp.fc1.{kind}"]
                published[f"{hf}mlp.fc2.{kind}"] = state[f"{ours}mlp.fc2.{kind}"]
            else:
                published[f"{hf}layernorm_before.{kind}"] = state[f"{ours}norm1.{kind}"]
                published[f"{hf}layernorm_after.{kind}"] = state[f"{ours}norm2.{kind}"]
                published[f"{hf}intermediate.dense.{kind}"] = state[f"{ours}mlp.fc1.{kind}"]
                published[f"{hf}output.dense.{kind}"] = state[f"{ours}mlp.fc2.{kind}"]
        if dinov2:
            published[f"{hf}layer_scale1.lambda1"] = state[f"{ours}ls1.gamma"]
            published[f"{hf}layer_scale2.lambda1"] = state[f"{ours}ls2.gamma"]
    return published


def test_phikon_reads_the_transformers_vit_layout(tmp_path):
    def publish(state):
        published = hf_vit_layout(state, depth=2)
        published["pooler.dense.weight"] = torch.randn(64, 64)  # ViTModel's unused pooler
        published["pooler.dense.bias"] = torch.randn(64)
        return published

    assert_round_trip("phikon", SMALL_DIM, SMALL_VIT, publish, tmp_path, "pytorch_model.bin")


def test_phikon_v2_reads_the_transformers_dinov2_layout(tmp_path):
    assert_round_trip(
        "phikon-v2",
        SMALL_DIM,
        SMALL_VIT,
        lambda s: hf_vit_layout(s, depth=2, dinov2=True),
        tmp_path,
        "model.bin",
    )


def clip_layout(state, depth):
    """``ClipVision``'s weights with ``transformers``' ``CLIPModel`` names, text tower beside."""
    position = state["trunk.pos_embed"][0]
    published = {
        "vision_model.embeddings.class_embedding": state["trunk.cls_token"].flatten(),
        "vision_model.embeddings.patch_embedding.weight": state["trunk.patch_embed.proj.weight"],
        "vision_model.embeddings.position_embedding.weight": position,
        "vision_model.embeddings.position_ids": torch.arange(position.shape[0])[None],
        "vision_model.pre_layrnorm.weight": state["trunk.norm_pre.weight"],
        "vision_model.pre_layrnorm.bias": state["trunk.norm_pre.bias"],
        "vision_model.post_layernorm.weight": state["trunk.norm.weight"],
        "vision_model.post_layernorm.bias": state["trunk.norm.bias"],
        "visual_projection.weight": state["proj.weight"],
        "text_model.embeddings.token_embedding.weight": torch.randn(10, 8),
        "text_projection.weight": torch.randn(4, 8),
        "logit_scale": torch.tensor(2.6),
    }
    for i in range(depth):
        ours, hf = f"trunk.blocks.{i}.", f"vision_model.encoder.layers.{i}."
        for kind in ("weight", "bias"):
            query, key, value = state[f"{ours}attn.qkv.{kind}"].chunk(3)
            published[f"{hf}self_attn.q_proj.{kind}"] = query
            published[f"{hf}self_attn.k_proj.{kind}"] = key
            published[f"{hf}self_attn.v_proj.{kind}"] = value
            published[f"{hf}self_attn.out_proj.{kind}"] = state[f"{ours}attn.proj.{kind}"]
            published[f"{hf}layer_norm1.{kind}"] = state[f"{ours}norm1.{kind}"]
            published[f"{hf}layer_norm2.{kind}"] = state[f"{ours}norm2.{kind}"]
            published[f"{hf}mlp.fc1.{kind}"] = state[f"{ours}mlp.fc1.{kind}"]
            published[f"{hf}mlp.fc2.{kind}"] = state[f"{ours}mlp.fc2.{kind}"]
    return published


def test_plip_reads_the_transformers_clip_layout(tmp_path):
    small = {"width": 64, "layers": 2, "heads": 4, "projection_dim": 16}
    assert_round_trip("plip", 16, small, lambda s: clip_layout(s, 2), tmp_path, "pytorch_model.bin")


def timm_054_swin_layout(model: CTransPath):
    """The published ``{"model": ...}``: patch merging at the end of a stage, buffers saved."""
    published = {}
    for key, value in model.state_dict().items():
        match = re.match(r"layers\.(\d+)\.downsample\.(.*)", key)
        if match:
            key = f"layers.{int(match.group(1)) - 1}.downsample.{match.group(2)}"
        published[key] = value
    for name, buffer in model.named_buffers():  # non-persistent today, saved by timm 0.5.4
        if name.endswith(("relative_position_index", "attn_mask")):
            published[name] = buffer
    return {"model": published}


@pytest.fixture(scope="module")
def swin_release(tmp_path_factory):
    """A full-size CTransPath with random weights, saved as the authors' timm 0.5.4 did."""
    torch.manual_seed(1)
    source = perturb(CTransPath())
    published = timm_054_swin_layout(source)
    assert "layers.0.downsample.reduction.weight" in published["model"]
    assert any(k.endswith("attn_mask") for k in published["model"])
    path = tmp_path_factory.mktemp("swin") / "ctranspath.pth"
    torch.save(published, path)
    batch = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        return path, batch, source(batch)


@pytest.mark.parametrize("name", ["ctranspath", "chief"])
def test_ctranspath_and_chief_read_timm_054_checkpoints_at_full_size(name, swin_release):
    path, batch, expected = swin_release
    # built on the meta device, then the attention masks and indices are recomputed
    encoder = load_encoder(name, weights=path)
    with torch.no_grad():
        torch.testing.assert_close(encoder(batch), expected)


def test_resnet50_imagenet_is_torchvision_resnet50_cut_after_layer3(tmp_path):
    torch.manual_seed(2)
    full = perturb(resnet50(weights=None))
    torch.save(full.state_dict(), tmp_path / "resnet50-19c8e357.pth")
    encoder = load_encoder("resnet50-imagenet", weights=tmp_path / "resnet50-19c8e357.pth")
    batch = torch.randn(1, 3, 128, 128)  # any size: the network is convolutional
    with torch.no_grad():
        x = full.maxpool(full.relu(full.bn1(full.conv1(batch))))
        expected = full.layer3(full.layer2(full.layer1(x))).mean(dim=(2, 3))
        torch.testing.assert_close(encoder(batch), expected)


def test_a_published_checkpoint_with_a_key_missing_is_refused_with_the_key_named(tmp_path):
    def publish_without_a_key(state):
        published = hf_vit_layout(state, depth=2)
        del published["encoder.layer.1.layernorm_after.weight"]
        return published

    with pytest.raises(CheckpointError, match=r"missing \['blocks.1.norm2.weight'\]"):
        assert_round_trip(
            "phikon", SMALL_DIM, SMALL_VIT, publish_without_a_key, tmp_path, "pytorch_model.bin"
        )


def test_a_checkpoint_of_another_model_is_not_taken_for_conch(tmp_path):
    torch.save({"text.token_embedding.weight": torch.zeros(2, 2)}, tmp_path / "other.bin")
    with pytest.raises(CheckpointError, match="conch"):
        load_encoder("conch", weights=tmp_path / "other.bin")


# ---- the transformers implementations themselves (when installed; tiny random configs) ----


@pytest.fixture
def transformers():
    return pytest.importorskip("transformers")


def _perturbed_hf(model):
    return perturb(model, seed=3)


def test_phikon_computes_what_transformers_vitmodel_computes(transformers, tmp_path):
    config = transformers.ViTConfig(
        hidden_size=SMALL_DIM,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=4 * SMALL_DIM,
        image_size=224,
        patch_size=16,
        layer_norm_eps=1e-12,
    )
    hf = _perturbed_hf(transformers.ViTModel(config))
    hf.save_pretrained(tmp_path)  # the published layout, written by transformers itself
    with variant("phikon", SMALL_DIM, SMALL_VIT) as (name, _):
        encoder = load_encoder(name, weights=tmp_path)
    batch = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = hf(pixel_values=batch).last_hidden_state[:, 0]
        torch.testing.assert_close(encoder(batch), expected, atol=1e-5, rtol=1e-5)


def test_phikon_v2_computes_what_transformers_dinov2model_computes(transformers, tmp_path):
    config = transformers.Dinov2Config(
        hidden_size=SMALL_DIM,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=224,
        patch_size=16,
        layerscale_value=0.5,
    )
    hf = _perturbed_hf(transformers.Dinov2Model(config))
    hf.save_pretrained(tmp_path)
    with variant("phikon-v2", SMALL_DIM, SMALL_VIT) as (name, _):
        encoder = load_encoder(name, weights=tmp_path)
    batch = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        expected = hf(pixel_values=batch).last_hidden_state[:, 0]
        torch.testing.assert_close(encoder(batch), expected, atol=1e-5, rtol=1e-5)


def test_plip_computes_what_transformers_clip_get_image_features_computes(transformers, tmp_path):
    config = transformers.CLIPConfig(
        vision_config={
            "hidden_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "intermediate_size": 256,
            "image_size": 224,
            "patch_size": 32,
            "hidden_act": "quick_gelu",
        },
        text_config={
            "hidden_size": 32,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "vocab_size": 100,
            "bos_token_id": 0,
            "eos_token_id": 1,
            "pad_token_id": 1,
        },
        projection_dim=16,
    )
    hf = _perturbed_hf(transformers.CLIPModel(config))
    hf.save_pretrained(tmp_path)
    small = {"width": 64, "layers": 2, "heads": 4, "projection_dim": 16}
    with variant("plip", 16, small) as (name, _):
        encoder = load_encoder(name, weights=tmp_path)
    batch = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        features = hf.get_image_features(pixel_values=batch)
        expected = getattr(features, "pooler_output", features)
        torch.testing.assert_close(encoder(batch), expected, atol=1e-5, rtol=1e-5)
