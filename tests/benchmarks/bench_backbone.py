"""gpfm-backbone forward-pass benchmark; prints ratios measured side by side in one run.

CPU: images/s of our vit_base_patch16 ÷ timm's vit_base_patch16_224 (batch 32, fp32, same
weights, same run; target >= 1.0), and the achieved FLOP/s of that forward ÷ the FLOP/s of a
large fp32 matmul measured in the same run (how close to the machine's limit).

CUDA (when present): ViT-L/14 at batch 256 in bf16 with xformers, sdpa and math attention:
images/s, peak memory, and achieved ÷ a large bf16 matmul's FLOP/s.

    python tests/benchmarks/bench_backbone.py [--batch 32] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

import timm
import torch

from gpfm.backbone import create_vit, load_checkpoint_strict
from gpfm.backbone.attention import xformers_available


def vit_forward_flops(model: torch.nn.Module, image_size: int) -> float:
    """Multiply-adds x 2 of one image through a ViT (patch embedding, attention, MLP)."""
    dim, patch = model.embed_dim, model.patch_size
    patches = (image_size // patch) ** 2
    tokens = patches + model.num_prefix_tokens
    hidden = model.blocks[0].mlp.fc2.in_features
    gated = 2 if model.blocks[0].mlp.fc1.out_features == 2 * hidden else 1
    per_block = (
        2 * tokens * dim * 3 * dim  # qkv
        + 2 * 2 * tokens * tokens * dim  # q kᵀ and (attention) v
        + 2 * tokens * dim * dim  # output projection
        + 2 * tokens * dim * hidden * gated  # fc1
        + 2 * tokens * hidden * dim  # fc2
    )
    return 2 * patches * 3 * patch * patch * dim + len(model.blocks) * per_block


def images_per_second(run: Callable[[], object], batch: int, repeats: int) -> float:
    run()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    return batch * repeats / (time.perf_counter() - start)


def best_rates(runs: dict[str, Callable[[], object]], batch: int, rounds: int) -> dict[str, float]:
    """Best images/s of each run over ``rounds`` interleaved rounds, the order alternating each
    round (so neither side always runs first; noise then hits both alike)."""
    for run in runs.values():
        run()  # warm-up
    best = dict.fromkeys(runs, 0.0)
    for round_index in range(rounds):
        order = list(runs.items())
        for name, run in order if round_index % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            run()
            best[name] = max(best[name], batch / (time.perf_counter() - start))
    return best


def matmul_flops_per_second(device: str, dtype: torch.dtype, size: int, repeats: int) -> float:
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    if device == "cuda":
        torch.cuda.synchronize()
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def cpu(batch: int, repeats: int) -> None:
    torch.manual_seed(0)
    theirs = timm.create_model("vit_base_patch16_224", pretrained=False).eval()
    ours = create_vit("vit_base_patch16", init_values=None).eval()
    load_checkpoint_strict(ours, theirs.state_dict())
    images = torch.randn(batch, 3, 224, 224)
    with torch.inference_mode():
        rates = best_rates(
            {"ours": lambda: ours(images), "timm": lambda: theirs.forward_features(images)},
            batch,
            repeats,
        )
    ours_rate, timm_rate = rates["ours"], rates["timm"]
    peak = matmul_flops_per_second("cpu", torch.float32, 2048, 10)
    achieved = ours_rate * vit_forward_flops(ours, 224)
    threads = torch.get_num_threads()
    print(f"CPU, {threads} threads, batch {batch}, fp32, ViT-B/16 at 224 px, best of {repeats}")
    print(f"{'timm vit_base_patch16_224':<36}{timm_rate:>10.1f} images/s")
    print(f"{'gpfm.backbone vit_base_patch16':<36}{ours_rate:>10.1f} images/s")
    print(f"{'ours ÷ timm':<36}{ours_rate / timm_rate:>10.2f}   (target >= 1.0)")
    print(f"{'fp32 matmul 2048³':<36}{peak / 1e9:>10.1f} GFLOP/s")
    print(f"{'ours achieved':<36}{achieved / 1e9:>10.1f} GFLOP/s")
    print(f"{'achieved ÷ matmul':<36}{achieved / peak:>10.2f}   (1.0 = the machine's limit)")


def gpu(batch: int, repeats: int) -> None:
    model = create_vit("vit_large_patch14").cuda().eval()
    images = torch.randn(batch, 3, 224, 224, device="cuda")
    flops = vit_forward_flops(model, 224)
    peak = matmul_flops_per_second("cuda", torch.bfloat16, 8192, 20)
    print(f"\nCUDA {torch.cuda.get_device_name()}, ViT-L/14, batch {batch}, bf16 autocast")
    print(f"bf16 matmul 8192³: {peak / 1e12:.0f} TFLOP/s")
    backends = ["sdpa", "math"] + (["xformers"] if xformers_available() else [])
    for backend in backends:
        os.environ["GPFM_ATTENTION"] = backend
        torch.cuda.reset_peak_memory_stats()

        def run() -> None:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                model(images)
            torch.cuda.synchronize()

        with torch.inference_mode():
            rate = images_per_second(run, batch, repeats)
        memory = torch.cuda.max_memory_allocated() / 2**30
        print(
            f"{backend:<10}{rate:>9.0f} images/s  peak {memory:5.1f} GiB  "
            f"achieved ÷ matmul {rate * flops / peak:.2f}"
        )
    os.environ.pop("GPFM_ATTENTION", None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--gpu-batch", type=int, default=256)
    args = parser.parse_args()
    cpu(args.batch, args.repeats)
    if torch.cuda.is_available():
        gpu(args.gpu_batch, args.repeats)
    else:
        print("\n(no CUDA device: the GPU comparison of xformers, sdpa and math is skipped)")


if __name__ == "__main__":
    main()
