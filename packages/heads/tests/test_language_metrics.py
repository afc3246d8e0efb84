"""Report and VQA metrics: HistGen's cleaning, pycocoevalcap's numbers, PathVQA's scores."""

from __future__ import annotations

import math
import re

import pytest

from gpfm.heads.errors import InvalidInputError
from gpfm.heads.language import JavaNotFoundError
from gpfm.heads.language.metrics import clean_report, text_metrics, vqa_metrics

pytest.importorskip("pycocoevalcap", reason="the [language] extra is not installed")


def histgen_clean_report_pathology(report):
    """HistGen's cleaning, transcribed from dddavid4real/HistGen at 31a40af,
    modules/tokenizers.py:63-76 (Tokenizer.clean_report_pathology)."""

    def report_cleaner(t):
        t = t.replace("\n", " ")
        for _ in range(7):
            t = t.replace("__", "_")
        for _ in range(6):
            t = t.replace("  ", " ")
        for _ in range(8):
            t = t.replace("..", ".")
        t = t.replace("1. ", "").replace(". 2. ", ". ").replace(". 3. ", ". ")
        t = t.replace(". 4. ", ". ").replace(". 5. ", ". ").replace(" 2. ", ". ")
        t = t.replace(" 3. ", ". ").replace(" 4. ", ". ").replace(" 5. ", ". ")
        return t.strip().lower().split(". ")

    def sent_cleaner(t):
        return re.sub(
            r"[.,?;*!%^&_+():-\[\]{}]",
            "",
            t.replace('"', "").replace("/", "").replace("\\", "").replace("'", "").strip().lower(),
        )

    tokens = [sent_cleaner(sent) for sent in report_cleaner(report) if sent_cleaner(sent) != []]
    return " . ".join(tokens) + " ."


REPORTS = [
    "Invasive ductal carcinoma, grade 2.  Tumour size: 2.3 cm.\nMargins are FREE of tumour.",
    "1. Adenocarcinoma (moderately differentiated). 2. Lymph nodes: 0/12 positive...",
    'Well-differentiated "tubular" adenoma; no high-grade dysplasia @ margins <1 mm> [sic].',
    "Benign colonic mucosa__with lymphoid aggregates. 3. No malignancy seen !",
    "",
    "   Squamous cell carcinoma, keratinizing {pT2} = stage II ... see comment.   ",
]
HYPOTHESES = [
    "invasive ductal carcinoma grade 2. margins free of tumour.",
    "adenocarcinoma, moderately differentiated. lymph nodes negative.",
    "tubular adenoma with low grade dysplasia.",
    "benign colonic mucosa. no malignancy.",
    "no tumour seen.",
    "squamous cell carcinoma, stage ii.",
]


@pytest.mark.parametrize("report", REPORTS)
def test_cleaning_equals_histgens(report):
    assert clean_report(report) == histgen_clean_report_pathology(report)


def test_cleaning_lowers_strips_punctuation_and_keeps_digits_and_hyphens():
    cleaned = clean_report("Well-differentiated  TUMOUR, 2.3 cm.  No <necrosis>!")
    assert cleaned == "well-differentiated tumour 23 cm . no necrosis ."
    assert clean_report("Size 12 mm. Grade 3.", keep_digits=False) == "size  mm . grade  ."


def _pycocoevalcap_scores(references, hypotheses):
    """pycocoevalcap called directly, as HistGen's modules/metrics.py:17-34 does, plus CIDEr."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    from gpfm.heads.language.metrics import meteor_scorer

    gts = {i: [histgen_clean_report_pathology(r)] for i, r in enumerate(references)}
    res = {i: [histgen_clean_report_pathology(h)] for i, h in enumerate(hypotheses)}
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return {
        "bleu1": bleu[0],
        "bleu2": bleu[1],
        "bleu3": bleu[2],
        "bleu4": bleu[3],
        # pycocoevalcap's own Meteor object; shared with text_metrics, since each start of
        # its Java process takes many seconds (its scores do not depend on earlier calls).
        "meteor": meteor_scorer().compute_score(gts, res)[0],
        "rouge_l": Rouge().compute_score(gts, res)[0],
        "cider": Cider().compute_score(gts, res)[0],
    }


@pytest.mark.slow  # METEOR's Java start loads a paraphrase table: tens of seconds on 2 cores
def test_text_metrics_equal_pycocoevalcap_on_a_corpus():
    ours = text_metrics(REPORTS, HYPOTHESES)
    reference = _pycocoevalcap_scores(REPORTS, HYPOTHESES)
    assert list(ours) == ["bleu1", "bleu2", "bleu3", "bleu4", "meteor", "rouge_l", "cider"]
    for name, value in reference.items():
        assert ours[name] == pytest.approx(value, abs=1e-12), name
    assert 0 < ours["bleu4"] < ours["bleu1"] < 1


def test_identical_reports_score_one_and_the_ptb_tokenizer_runs():
    perfect = text_metrics(REPORTS[:4], REPORTS[:4], metrics=["bleu4", "rouge_l"])
    assert perfect == {"bleu4": pytest.approx(1.0), "rouge_l": pytest.approx(1.0)}
    tokenized = text_metrics(REPORTS[:4], HYPOTHESES[:4], tokenize="ptb", metrics=["bleu1"])
    assert 0 < tokenized["bleu1"] < 1


def test_without_java_the_error_says_what_to_install(monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(JavaNotFoundError, match="install a Java runtime"):
        text_metrics(["a report ."], ["a report ."])
    # BLEU, ROUGE-L and CIDEr are pure Python and still run.
    assert text_metrics(["a report ."], ["a report ."], metrics=["bleu1"])["bleu1"] > 0.99


def test_text_metrics_reject_mismatched_inputs():
    with pytest.raises(InvalidInputError, match="2 references but 1 hypotheses"):
        text_metrics(["a", "b"], ["a"])
    with pytest.raises(InvalidInputError, match="unknown metrics"):
        text_metrics(["a"], ["a"], metrics=["spice"])


def test_vqa_metrics_closed_accuracy_exact_match_and_recall():
    questions = ["Is there tumour?", "Is this benign?", "Which tissue?", "What stain?", "Where?"]
    references = ["yes", "no", "colonic mucosa", "H&E", "the lymph node"]
    predictions = ["Yes, there is.", "yes", "Mucosa of the colon", "h e", "lymph node"]
    scores = vqa_metrics(questions, references, predictions)
    assert scores["closed_accuracy"] == 0.5
    assert scores["open_exact_match"] == pytest.approx(2 / 3)  # "h e" and "lymph node"
    assert scores["open_recall"] == pytest.approx((1 / 2 + 1 + 1) / 3)
    assert scores["overall_accuracy"] == pytest.approx(3 / 5)
    assert (scores["n_closed"], scores["n_open"]) == (2, 3)
    only_closed = vqa_metrics(["Is it?"], ["no"], ["No."])
    assert only_closed["closed_accuracy"] == 1 and math.isnan(only_closed["open_recall"])
    with pytest.raises(InvalidInputError, match="one of each per sample"):
        vqa_metrics(["q"], ["a", "b"], ["a"])
