"""gpfm.heads.language: VQA and report generation on frozen features, with an LLM and LoRA.

llm, tokenizer = load_llm("HuggingFaceTB/SmolLM2-135M-Instruct")    # folder, Hub id or GGUF
model = VisionLanguageModel(llm, tokenizer, visual_dim=1024, num_visual_tokens=16)
model.add_lora(r=8)                                                   # PEFT, all linear layers
train_language_model(model, samples, LanguageTrainConfig(output_dir="run"))
answers = model.generate(features, ["Is there tumour?"], max_new_tokens=8)
vqa_metrics(questions, references, answers); text_metrics(references, reports)

Needs the optional extra ``pip install 'gpfm-heads[language]'`` (transformers, peft, gguf,
pycocoevalcap); without it, ``import gpfm.heads`` works and these names raise
``MissingExtraError`` saying what to install. Submodules: ``.metrics`` (``text_metrics``,
``clean_report``, ``vqa_metrics``), ``.llm`` (``load_llm``, ``smollm2_gguf``), ``.model``
(``VisionLanguageModel``, ``AttentionPooler``, ``Projector``), ``.data`` (readers and the
collator), ``.training`` (``train_language_model``, ``LanguageTrainConfig``).
"""

from __future__ import annotations

import importlib
from typing import Any

from gpfm.heads.language.errors import EXTRA_HINT, JavaNotFoundError, MissingExtraError

_NAMES = {
    "clean_report": "metrics",
    "text_metrics": "metrics",
    "vqa_metrics": "metrics",
    "load_llm": "llm",
    "smollm2_gguf": "llm",
    "AttentionPooler": "model",
    "Projector": "model",
    "VisionLanguageModel": "model",
    "LanguageSample": "data",
    "read_reports": "data",
    "read_vqa": "data",
    "LanguageTrainConfig": "training",
    "train_language_model": "training",
}
# Imported by the submodules; a missing one means the extra is not installed.
_EXTRA_PACKAGES = {"transformers", "peft", "gguf", "pycocoevalcap", "accelerate", "tokenizers"}


def __getattr__(name: str) -> Any:
    if name not in _NAMES:
        raise AttributeError(f"module 'gpfm.heads.language' has no attribute {name!r}")
    try:
        module = importlib.import_module(f"gpfm.heads.language.{_NAMES[name]}")
    except ImportError as error:
        missing = (error.name or "").split(".")[0]
        if missing not in _EXTRA_PACKAGES:
            raise
        raise MissingExtraError(
            f"gpfm.heads.language.{name} needs {missing}, of the optional extra: {EXTRA_HINT}"
        ) from error
    return getattr(module, name)


__all__ = [
    "AttentionPooler",
    "JavaNotFoundError",
    "LanguageSample",
    "LanguageTrainConfig",
    "MissingExtraError",
    "Projector",
    "VisionLanguageModel",
    "clean_report",
    "load_llm",
    "read_reports",
    "read_vqa",
    "smollm2_gguf",
    "text_metrics",
    "train_language_model",
    "vqa_metrics",
]
