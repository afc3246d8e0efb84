"""Language-task tables and samples; the extra's absence gives an error naming the extra."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from gpfm.heads.errors import InvalidInputError
from gpfm.heads.features import write_features
from gpfm.heads.language.data import (
    LanguageDataset,
    collate_language,
    read_reports,
    read_vqa,
    report_samples,
    vqa_samples,
)


def test_vqa_tables_from_csv_json_lines_and_rows(tmp_path):
    rows = [
        {"image_id": "a", "question": "is there tumour?", "answer": "yes", "split": "train"},
        {"image_id": "b", "question": "which tissue?", "answer": "colon", "split": "test"},
    ]
    (tmp_path / "vqa.csv").write_text(
        "image_id,question,answer,split\n" + "\n".join(",".join(r.values()) for r in rows) + "\n"
    )
    (tmp_path / "vqa.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    for source in (tmp_path / "vqa.csv", tmp_path / "vqa.jsonl", rows):
        assert read_vqa(source) == rows
        assert read_vqa(source, split="test") == rows[1:]
    with pytest.raises(InvalidInputError, match=r"row 0: no column \['answer'\]"):
        read_vqa([{"image_id": "a", "question": "q"}])
    (tmp_path / "vqa.txt").write_text("")
    with pytest.raises(InvalidInputError, match=r"\.csv or \.jsonl"):
        read_vqa(tmp_path / "vqa.txt")


def test_report_samples_read_feature_files_and_pad_into_a_batch(tmp_path):
    rng = np.random.default_rng(0)
    for slide, tiles in (("s1", 4), ("s2", 7)):
        features = rng.normal(size=(tiles, 6)).astype(np.float32)
        coords = np.zeros((tiles, 2), dtype=np.int64)
        write_features(
            tmp_path / f"{slide}.h5", features, coords, encoder="toy", mpp=0.5, patch_size=224
        )
    rows = read_reports([{"slide_id": "s1", "report": "benign ."}, {"slide_id": "s2", "report": 3}])
    samples = report_samples(rows, tmp_path)
    batch = collate_language([LanguageDataset(samples)[i] for i in range(2)])
    assert batch["features"].shape == (2, 7, 6)
    assert batch["mask"].sum(1).tolist() == [4, 7]
    assert batch["targets"] == ["benign .", "3"]
    vqa = vqa_samples([{"image_id": "r", "question": "q?", "answer": "yes"}], {"r": torch.ones(6)})
    assert LanguageDataset(vqa)[0]["features"].shape == (1, 6)
    with pytest.raises(InvalidInputError, match="no features for 'x'"):
        vqa_samples([{"image_id": "x", "question": "q", "answer": "a"}], {})


def test_without_the_extra_heads_imports_and_language_names_say_what_to_install():
    code = (
        "import sys\n"
        "for name in ('transformers', 'peft', 'gguf', 'pycocoevalcap'):\n"
        "    sys.modules[name] = None\n"
        "import gpfm.heads, gpfm.heads.language as language\n"
        "try:\n"
        "    language.VisionLanguageModel\n"
        "except ImportError as error:\n"
        "    print(type(error).__name__, error)\n"
        "try:\n"
        "    language.text_metrics(['a'], ['a'])\n"
        "except ImportError as error:\n"
        "    print(type(error).__name__, error)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    lines = done.stdout.splitlines()
    assert lines[0].startswith("MissingExtraError") and "gpfm-heads[language]" in lines[0]
    assert "pycocoevalcap" in lines[1] and "gpfm-heads[language]" in lines[1]
