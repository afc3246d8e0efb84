"""VisionLanguageModel on a tiny random Llama: inputs, masking, LoRA, files, generation."""

from __future__ import annotations

import csv

import pytest

pytest.importorskip("peft", reason="the [language] extra is not installed")

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from gpfm.heads.errors import HeadsError
from gpfm.heads.language import LanguageTrainConfig, VisionLanguageModel, train_language_model
from gpfm.heads.language.data import LanguageSample
from gpfm.heads.language.llm import load_llm
from gpfm.heads.language.model import IGNORE_INDEX, AttentionPooler

CORPUS = [
    "is there tumour ? yes no",
    "which tissue is this ? colon lung breast stroma",
    "write the report . invasive carcinoma with necrosis . benign mucosa .",
    "answer : the image shows tumour cells",
]


def tiny_tokenizer():
    """A word-level tokenizer trained here, with Llama's special tokens."""
    model = Tokenizer(models.WordLevel(unk_token="<unk>"))
    model.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation()]
    )
    trainer = trainers.WordLevelTrainer(special_tokens=["<unk>", "<s>", "</s>", "<pad>"])
    model.train_from_iterator(CORPUS * 2, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=model,
        unk_token="<unk>",
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
    )


def tiny_llama(tokenizer, seed=0):
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture
def tokenizer():
    return tiny_tokenizer()


def make_model(tokenizer, pool=True, lora=True, seed=0):
    model = VisionLanguageModel(
        tiny_llama(tokenizer, seed), tokenizer, visual_dim=12, num_visual_tokens=3, pool=pool
    )
    if lora:
        model.add_lora(r=4, alpha=8, dropout=0.0)
    return model


def test_the_pooler_ignores_padding():
    pooler = AttentionPooler(dim=8, num_queries=3, num_heads=2)
    bag = torch.randn(1, 5, 8)
    padded = torch.cat([bag, torch.randn(1, 4, 8) * 100], dim=1)
    mask = torch.tensor([[True] * 5 + [False] * 4])
    assert pooler(bag).shape == (1, 3, 8)
    torch.testing.assert_close(pooler(padded, mask), pooler(bag), atol=1e-5, rtol=1e-5)


def test_loss_is_on_answer_tokens_only(tokenizer):
    model = make_model(tokenizer)
    features = torch.randn(2, 7, 12)
    batch = model.build_batch(
        features, ["is there tumour ?", "which tissue is this ?"], ["yes", "colon lung"]
    )
    answer_ids = [
        tokenizer("yes", add_special_tokens=False)["input_ids"],
        tokenizer("colon lung", add_special_tokens=False)["input_ids"],
    ]
    for row, answer in enumerate(answer_ids):
        labels = batch.labels[row][batch.attention_mask[row].bool()].tolist()
        kept = [label for label in labels if label != IGNORE_INDEX]
        assert kept == [*answer, tokenizer.eos_token_id]
        assert labels[-len(kept) :] == kept  # the answer ends the row; the prompt before is -100
    assert (batch.labels[batch.attention_mask == 0] == IGNORE_INDEX).all()  # padding
    # The image: begin marker, K = 3 pooled tokens, end marker.
    assert model.visual_embeddings(features).shape == (2, 5, 32)
    loss = model(features, ["is there tumour ?"] * 2, ["yes", "no"])
    assert loss.ndim == 0 and torch.isfinite(loss)


def test_roi_tokens_pass_unpooled_and_a_vector_is_one_token(tokenizer):
    model = make_model(tokenizer, pool=False, lora=False)
    assert model.pooler is None
    assert model.visual_embeddings(torch.randn(2, 5, 12)).shape == (2, 7, 32)  # CLS + 4 patches
    assert model.visual_embeddings(torch.randn(2, 12)).shape == (2, 3, 32)


def test_lora_stages_train_what_they_say(tokenizer):
    model = make_model(tokenizer)
    model.set_stage("projector")
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert names and all(n.startswith(("projector", "pooler", "image_markers")) for n in names)
    model.set_stage("lora")
    lora = {n for n, p in model.named_parameters() if p.requires_grad and "lora_" in n}
    assert lora
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert any("embed_tokens" in n for n in frozen) and not any("lora_" in n for n in frozen)
    with pytest.raises(HeadsError, match="add_lora"):
        make_model(tokenizer, lora=False).set_stage("lora")


def _train_briefly(model, steps=5):
    features = torch.randn(4, 6, 12)
    prompts = ["is there tumour ?"] * 4
    targets = ["yes", "no", "yes", "no"]
    model.set_stage("lora")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        model(features, prompts, targets).backward()
        optimizer.step()
        optimizer.zero_grad()
    return features


def test_saved_and_reloaded_adapters_generate_the_same(tokenizer, tmp_path):
    model = make_model(tokenizer)
    features = _train_briefly(model)
    model.eval()
    prompts = ["is there tumour ?", "which tissue is this ?", "write the report .", "answer :"]
    before = model.generate(features, prompts, max_new_tokens=6)
    model.save(tmp_path / "vlm")
    assert {p.name for p in (tmp_path / "vlm").iterdir()} == {
        "vlm_config.json",
        "vlm_weights.safetensors",
    }
    reloaded = VisionLanguageModel.load(tmp_path / "vlm", tiny_llama(tokenizer), tokenizer).eval()
    assert reloaded.generate(features, prompts, max_new_tokens=6) == before
    logits = model.build_batch(features, prompts, padding_side="left")
    with torch.no_grad():
        unmerged = model.llm(
            inputs_embeds=logits.inputs_embeds, attention_mask=logits.attention_mask
        ).logits
        reloaded.merge()
        merged = reloaded.llm(
            inputs_embeds=logits.inputs_embeds, attention_mask=logits.attention_mask
        ).logits
    torch.testing.assert_close(merged, unmerged, atol=1e-4, rtol=1e-4)
    with pytest.raises(HeadsError, match="save before merge"):
        reloaded.save(tmp_path / "merged")
    with pytest.raises(HeadsError, match="no saved VisionLanguageModel"):
        VisionLanguageModel.load(tmp_path, tiny_llama(tokenizer), tokenizer)


def test_batched_generation_equals_one_at_a_time(tokenizer):
    model = make_model(tokenizer).eval()
    features = torch.randn(3, 6, 12)
    prompts = ["is there tumour ?", "which tissue is this ? colon lung breast", "answer :"]
    batched = model.generate(features, prompts, max_new_tokens=5)
    single = [
        model.generate(features[i : i + 1], [p], max_new_tokens=5)[0] for i, p in enumerate(prompts)
    ]
    assert batched == single
    beams = model.generate(features, prompts, max_new_tokens=5, num_beams=3)
    assert len(beams) == 3 and all(isinstance(text, str) for text in beams)


def test_load_llm_reads_a_local_folder(tokenizer, tmp_path):
    tiny_llama(tokenizer).save_pretrained(tmp_path / "llm")
    tokenizer.save_pretrained(tmp_path / "llm")
    llm, loaded = load_llm(tmp_path / "llm")
    assert llm.config.hidden_size == 32 and loaded.pad_token == "<pad>"
    with pytest.raises(HeadsError, match="no GGUF file"):
        load_llm(tmp_path / "llm", gguf_file="missing.gguf")


def _samples():
    generator = torch.Generator().manual_seed(1)
    samples = []
    for index in range(12):
        tumour = index % 2 == 0
        features = torch.randn(5, 12, generator=generator) + (2.0 if tumour else -2.0)
        samples.append(
            LanguageSample(str(index), features, "is there tumour ?", "yes" if tumour else "no")
        )
    return samples


def test_training_logs_learns_and_a_resumed_run_has_the_same_losses(tokenizer, tmp_path):
    config = {
        "batch_size": 4,
        "grad_accumulation": 1,
        "lr": 5e-3,
        "cpu": True,
        "progress": False,
        "seed": 3,
    }
    whole = train_language_model(
        make_model(tokenizer),
        _samples(),
        LanguageTrainConfig(tmp_path / "whole", max_steps=8, **config),
    )
    assert whole.steps == 8 and whole.losses[-1] < whole.losses[0]
    with (tmp_path / "whole" / "train_log.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["step"]) for row in rows] == list(range(1, 9))
    assert (tmp_path / "whole" / "final" / "vlm_weights.safetensors").exists()

    first = train_language_model(
        make_model(tokenizer),
        _samples(),
        LanguageTrainConfig(tmp_path / "cut", max_steps=5, **config),
    )
    rest = train_language_model(
        make_model(tokenizer),
        _samples(),
        LanguageTrainConfig(tmp_path / "cut", max_steps=8, resume=True, **config),
    )
    assert rest.steps == 8 and len(rest.losses) == 3
    assert first.losses + rest.losses == pytest.approx(whole.losses, abs=1e-6)
    with (tmp_path / "cut" / "train_log.csv").open() as handle:
        assert [int(row["step"]) for row in csv.DictReader(handle)] == list(range(1, 9))


def test_gradient_accumulation_counts_optimizer_steps(tokenizer, tmp_path):
    # 12 samples in batches of 2 = 6 batches; accumulating 4 gives steps of 4 and 2 batches.
    config = LanguageTrainConfig(
        tmp_path, epochs=2, batch_size=2, grad_accumulation=4, cpu=True, progress=False
    )
    assert train_language_model(make_model(tokenizer), _samples(), config).steps == 4


def test_the_loss_on_answer_positions_equals_the_loss_over_all_logits(tokenizer):
    model = make_model(tokenizer)
    features = torch.randn(3, 6, 12)
    prompts = ["is there tumour ?", "which tissue is this ? colon lung breast", "answer :"]
    targets = ["yes", "colon lung", "the image shows tumour cells"]
    batch = model.build_batch(features, prompts, targets)
    everywhere = model.llm(
        inputs_embeds=batch.inputs_embeds,
        attention_mask=batch.attention_mask,
        labels=batch.labels,
    ).loss
    torch.testing.assert_close(model.answer_loss(batch), everywhere, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(model(features, prompts, targets), everywhere, atol=1e-6, rtol=1e-6)


def test_gradient_checkpointing_gives_the_same_gradients(tokenizer):
    features = torch.randn(2, 6, 12)
    prompts, targets = ["is there tumour ?", "answer :"], ["yes", "the image shows tumour cells"]
    gradients = []
    for checkpointing in (False, True):
        model = make_model(tokenizer)
        model.set_stage("lora")
        model.gradient_checkpointing(checkpointing)
        model.train()
        model(features, prompts, targets).backward()
        gradients.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert gradients[0].keys() == gradients[1].keys()
    assert any("lora_" in name for name in gradients[1])
    for name, gradient in gradients[0].items():
        torch.testing.assert_close(gradients[1][name], gradient, atol=1e-6, rtol=1e-5, msg=name)
