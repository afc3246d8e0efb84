"""Metrics of the language tasks: report generation (COCO caption metrics) and VQA (PathVQA).

``text_metrics`` cleans reports the way HistGen does (``clean_report``), then scores them with
the COCO caption evaluation toolkit itself (pycocoevalcap: BLEU-1..4, METEOR, ROUGE-L, CIDEr),
so the numbers are the published ones. HistGen (dddavid4real/HistGen ``modules/metrics.py``)
feeds its cleaned texts to the scorers without the PTB tokenizer; ``tokenize="ptb"`` adds it,
as the COCO caption evaluation does. METEOR and the PTB tokenizer run in Java.

A quirk of HistGen's cleaning, kept so that scores match: its character class
``[.,?;*!%^&_+():-\\[\\]{}]`` holds the range ``:``-``[``, so it also deletes ``< = > @`` (and
upper-case letters, already lowered), while ``-`` and digits survive.

``vqa_metrics`` scores PathVQA-style answers: closed (yes/no) accuracy, and for open-ended
questions exact match and token recall (the share of the reference's words found in the
prediction), as LLaVA-Med reports PathVQA.
"""

from __future__ import annotations

import functools
import logging
import re
import shutil
from collections.abc import Sequence
from typing import Any, Literal

from gpfm.heads.errors import InvalidInputError
from gpfm.heads.language.errors import EXTRA_HINT, JavaNotFoundError, MissingExtraError

logger = logging.getLogger(__name__)

TEXT_METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider")

# HistGen's enumeration removal, in its order: "1. " first, then "N. " after a sentence or a word.
_ENUMERATION = [("1. ", "")] + [(f". {n}. ", ". ") for n in range(2, 6)]
_ENUMERATION += [(f" {n}. ", ". ") for n in range(2, 6)]
_QUOTES = re.compile(r"[\"/\\']")
# HistGen's class [.,?;*!%^&_+():-\[\]{}] written out: ":-\[" is a range that holds ;<=>?@ and A-Z.
_PUNCTUATION = re.compile(r"[.,?;*!%^&_+()\]{}:-\[]")
_PUNCTUATION_AND_DIGITS = re.compile(r"[.,?;*!%^&_+()\]{}:-\[0-9]")


def clean_report(text: str, *, keep_digits: bool = True) -> str:
    """A report cleaned as HistGen cleans pathology reports before scoring.

    Newlines become spaces, runs of ``_``, spaces and ``.`` collapse, list numbering (``1.`` to
    ``5.``) goes, the text is lower-cased and split into sentences at ``". "``; each sentence
    loses quotes, slashes and the punctuation above; sentences are joined by ``" . "`` and the
    report ends with ``" ."``.

    Args:
        text: one report.
        keep_digits: False also deletes digits (not HistGen's behaviour; for reports whose
            sizes and counts should not count as words).
    """
    text = text.replace("\n", " ")
    text = re.sub("_{2,}", "_", text)
    text = re.sub(" {2,}", " ", text)
    text = re.sub(r"\.{2,}", ".", text)
    for old, new in _ENUMERATION:
        text = text.replace(old, new)
    punctuation = _PUNCTUATION if keep_digits else _PUNCTUATION_AND_DIGITS
    sentences = [
        punctuation.sub("", _QUOTES.sub("", sentence).strip().lower())
        for sentence in text.strip().lower().split(". ")
    ]
    return " . ".join(sentences) + " ."


def _require_java() -> None:
    if shutil.which("java") is None:
        raise JavaNotFoundError(
            "METEOR and the PTB tokenizer of pycocoevalcap run in Java, and no `java` is on the "
            "PATH: install a Java runtime (8 or newer, e.g. `apt-get install "
            "openjdk-17-jre-headless`), or pass metrics without meteor and tokenize=None"
        )


def _scorers() -> dict[str, object]:
    try:
        from pycocoevalcap.bleu.bleu import Bleu
        from pycocoevalcap.cider.cider import Cider
        from pycocoevalcap.meteor.meteor import Meteor
        from pycocoevalcap.rouge.rouge import Rouge
    except ImportError as error:
        raise MissingExtraError(
            f"text_metrics uses the COCO caption evaluation toolkit (pycocoevalcap): {EXTRA_HINT}"
        ) from error
    return {"bleu": Bleu, "meteor": Meteor, "rouge_l": Rouge, "cider": Cider}


@functools.cache
def meteor_scorer() -> Any:
    """pycocoevalcap's METEOR scorer, started once per process (its Java start takes seconds)."""
    _require_java()
    from pycocoevalcap.meteor.meteor import Meteor

    return Meteor()


def _ptb_tokenize(texts: dict[int, list[str]]) -> dict[int, list[str]]:
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    captions = {key: [{"caption": text} for text in values] for key, values in texts.items()}
    return PTBTokenizer().tokenize(captions)


def text_metrics(
    references: Sequence[str | Sequence[str]],
    hypotheses: Sequence[str],
    *,
    clean: bool = True,
    keep_digits: bool = True,
    tokenize: Literal["ptb"] | None = None,
    metrics: Sequence[str] = TEXT_METRICS,
) -> dict[str, float]:
    """Corpus-level report-generation metrics, computed by pycocoevalcap.

    Args:
        references: one reference report per sample (or a list of references per sample).
        hypotheses: one generated report per sample, in the same order.
        clean: clean both sides with ``clean_report`` first (HistGen's protocol).
        keep_digits: passed to ``clean_report``.
        tokenize: ``"ptb"`` runs the COCO evaluation's PTB tokenizer (Java) after cleaning;
            None scores the cleaned texts as they are, as HistGen does.
        metrics: the keys to compute, a subset of ``bleu1``..``bleu4``, ``meteor``,
            ``rouge_l``, ``cider``.

    Returns:
        ``{"bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider"}`` (those asked for)
        as floats in [0, 1] (CIDEr in [0, 10]).

    Raises:
        InvalidInputError: lengths differ, no samples, or an unknown metric.
        MissingExtraError: pycocoevalcap is not installed.
        JavaNotFoundError: METEOR or the PTB tokenizer is asked for and no Java is found.
    """
    if len(references) != len(hypotheses):
        raise InvalidInputError(
            f"text_metrics: {len(references)} references but {len(hypotheses)} hypotheses"
        )
    if not hypotheses:
        raise InvalidInputError("text_metrics: no samples to score")
    unknown = sorted(set(metrics) - set(TEXT_METRICS))
    if unknown:
        raise InvalidInputError(f"text_metrics: unknown metrics {unknown}; known: {TEXT_METRICS}")
    scorers = _scorers()
    if "meteor" in metrics or tokenize == "ptb":
        _require_java()

    def prepare(text: str) -> str:
        return clean_report(text, keep_digits=keep_digits) if clean else text

    gts = {
        index: [prepare(r) for r in ([refs] if isinstance(refs, str) else refs)]
        for index, refs in enumerate(references)
    }
    res = {index: [prepare(hypothesis)] for index, hypothesis in enumerate(hypotheses)}
    if tokenize == "ptb":
        gts, res = _ptb_tokenize(gts), _ptb_tokenize(res)
    elif tokenize is not None:
        raise InvalidInputError(f"text_metrics: tokenize must be 'ptb' or None, not {tokenize!r}")

    scores: dict[str, float] = {}
    if any(name.startswith("bleu") for name in metrics):
        bleu, _ = scorers["bleu"](4).compute_score(gts, res, verbose=0)  # type: ignore[operator]
        scores.update({f"bleu{n}": float(bleu[n - 1]) for n in range(1, 5)})
    for name in ("meteor", "rouge_l", "cider"):
        if name in metrics:
            scorer = meteor_scorer() if name == "meteor" else scorers[name]()  # type: ignore[operator]
            score, _ = scorer.compute_score(gts, res)
            scores[name] = float(score)
    return {name: scores[name] for name in TEXT_METRICS if name in metrics}


_ARTICLES = {"a", "an", "the"}


def normalize_answer(text: str) -> str:
    """An answer lower-cased, without punctuation, articles and extra spaces."""
    text = re.sub(r"[^\w\s]", " ", text.lower())
    return " ".join(word for word in text.split() if word not in _ARTICLES)


def _closed_answer(text: str) -> str | None:
    for word in normalize_answer(text).split():
        if word in ("yes", "no"):
            return word
    return None


def vqa_metrics(
    questions: Sequence[str], references: Sequence[str], predictions: Sequence[str]
) -> dict[str, float]:
    """PathVQA-style scores: closed (yes/no) accuracy, open exact match and token recall.

    A question is closed when its reference answer is ``yes`` or ``no``; a closed prediction is
    right when its first ``yes``/``no`` word is the reference. Open answers are compared after
    ``normalize_answer``: exact match, and recall = share of the reference's words that the
    prediction contains.

    Returns:
        ``closed_accuracy``, ``open_exact_match``, ``open_recall``, ``overall_accuracy`` (exact
        or closed right, over all questions), ``n_closed``, ``n_open``; a score with no
        questions of its kind is NaN.
    """
    if not len(questions) == len(references) == len(predictions):
        raise InvalidInputError(
            f"vqa_metrics: {len(questions)} questions, {len(references)} references, "
            f"{len(predictions)} predictions: one of each per sample"
        )
    closed, exact, recall = [], [], []
    for reference, prediction in zip(references, predictions, strict=True):
        truth = normalize_answer(reference)
        if truth in ("yes", "no"):
            closed.append(float(_closed_answer(prediction) == truth))
            continue
        predicted = normalize_answer(prediction)
        exact.append(float(predicted == truth))
        words, found = truth.split(), set(predicted.split())
        recall.append(sum(word in found for word in words) / len(words) if words else 0.0)

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else float("nan")

    return {
        "closed_accuracy": mean(closed),
        "open_exact_match": mean(exact),
        "open_recall": mean(recall),
        "overall_accuracy": mean(closed + exact),
        "n_closed": float(len(closed)),
        "n_open": float(len(exact)),
    }
