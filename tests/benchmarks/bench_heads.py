"""gpfm-heads benchmark; prints ratios measured side by side in one run.

1. ABMIL training on the CPU with bags of 10,000 x 1024 float32 features: bags/s of
   ``train_mil`` ÷ bags/s of a bare PyTorch loop over the same model (the cost of the loop's
   Accelerate, DataLoader, padding and validation), and the FLOP/s achieved ÷ the FLOP/s of a
   plain matrix multiply of the same shape (the machine's limit for this model).
2. Peak memory of that training, measured in a fresh process, as a multiple of one bag.
3. The feature-bag loader: bags/s read from HDF5 feature files ÷ bags/s from arrays already in
   memory, and the HDF5 read rate ÷ the machine's memory-copy rate.

    python tests/benchmarks/bench_heads.py [--tiles 10000] [--dim 1024] [--bags 8]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from gpfm.heads import ABMIL, FeatureBagDataset, TrainConfig, train_mil, write_features
from gpfm.heads.data import collate_bags

HIDDEN, ATTENTION = 512, 256  # ABMIL's default layer sizes


def _bags(count: int, tiles: int, dim: int, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    bags = [rng.standard_normal((tiles, dim), dtype=np.float32) for _ in range(count)]
    return bags, np.arange(count) % 2


def abmil_flops_per_training_bag(tiles: int, dim: int) -> float:
    """Multiply-adds x 2 of one ABMIL forward pass, x 3 for forward + backward."""
    forward = 2 * tiles * (dim * HIDDEN + 2 * HIDDEN * ATTENTION + ATTENTION + 2 * HIDDEN)
    return 3.0 * forward


def matmul_flops_per_second(tiles: int, dim: int, repeats: int = 5) -> float:
    """FLOP/s of (tiles x dim) @ (dim x HIDDEN), the layer that dominates ABMIL."""
    a, b = torch.randn(tiles, dim), torch.randn(dim, HIDDEN)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * tiles * dim * HIDDEN * repeats / (time.perf_counter() - start)


def bare_loop_bags_per_second(model: ABMIL, bags: list[np.ndarray], labels: np.ndarray) -> float:
    """Training bags per second of one epoch of the plainest loop: no loader, no padding."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=1e-5)
    tensors = [torch.from_numpy(bag) for bag in bags]
    targets = torch.as_tensor(labels)
    model.train()
    start = time.perf_counter()
    for index in torch.randperm(len(tensors)).tolist():
        logits = model(tensors[index]).logits
        loss = torch.nn.functional.cross_entropy(logits, targets[index : index + 1])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return len(tensors) / (time.perf_counter() - start)


def train_mil_bags_per_second(model: ABMIL, bags: list[np.ndarray], labels: np.ndarray) -> float:
    """Training bags per second of one train_mil epoch (which also scores 1 validation bag)."""
    train = FeatureBagDataset(bags, {"label": labels})
    val = FeatureBagDataset(bags[:1], {"label": labels[:1]})
    config = TrainConfig(epochs=1, progress=False, balanced_sampling=False)
    result = train_mil(model, train, val, config=config)
    return len(bags) / result.history[0]["seconds"]


_PEAK_MEMORY = textwrap.dedent(
    """
    import sys, numpy as np, torch
    from gpfm.heads import ABMIL, FeatureBagDataset, TrainConfig, train_mil
    loop, tiles, dim = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    def status(field):
        for line in open("/proc/self/status"):
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    small = FeatureBagDataset([np.zeros((8, dim), np.float32)] * 2, {"label": np.array([0, 1])})
    train_mil(ABMIL(dim, 2), small, small, config=TrainConfig(epochs=1, progress=False))  # imports
    rng = np.random.default_rng(0)
    bags = [rng.standard_normal((tiles, dim), dtype=np.float32) for _ in range(2)]
    labels = np.array([0, 1])
    model = ABMIL(dim, 2)
    baseline = status("VmRSS:")
    with open("/proc/self/clear_refs", "w") as handle:  # resets VmHWM, the peak RSS
        handle.write("5")
    if loop == "train_mil":
        data = FeatureBagDataset(bags, {"label": labels})
        train_mil(model, data, data, config=TrainConfig(epochs=2, progress=False))
    else:
        optimizer = torch.optim.AdamW(model.parameters(), lr=2e-4, weight_decay=1e-5)
        for _ in range(2):
            for bag, label in zip(bags, labels):
                logits = model(torch.from_numpy(bag)).logits
                loss = torch.nn.functional.cross_entropy(logits, torch.tensor([label]))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    print(status("VmHWM:") - baseline)
    """
)


def training_peak_memory(loop: str, tiles: int, dim: int) -> int | None:
    """Bytes of peak RSS above the resident bags and model while training, in a fresh process.

    ``loop`` is ``train_mil`` or ``bare``. None where the peak cannot be reset (not Linux).
    """
    done = subprocess.run(
        [sys.executable, "-c", _PEAK_MEMORY, loop, str(tiles), str(dim)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        print(f"(peak memory not measured: {done.stderr.strip().splitlines()[-1:]})")
        return None
    return int(done.stdout.split()[-1])


def loader_bags_per_second(dataset: FeatureBagDataset, workers: int, rounds: int = 3) -> float:
    loader = DataLoader(dataset, batch_size=1, collate_fn=collate_bags, num_workers=workers)
    best = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        count = sum(1 for _ in loader)
        best = max(best, count / (time.perf_counter() - start))
    return best


def memcpy_bytes_per_second(array: np.ndarray, repeats: int = 10) -> float:
    target = np.empty_like(array)
    np.copyto(target, array)
    start = time.perf_counter()
    for _ in range(repeats):
        np.copyto(target, array)
    return array.nbytes * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiles", type=int, default=10_000, help="tiles per bag")
    parser.add_argument("--dim", type=int, default=1024, help="feature dimension")
    parser.add_argument("--bags", type=int, default=8, help="bags per epoch / files read")
    parser.add_argument("--rounds", type=int, default=3, help="alternating measurement rounds")
    args = parser.parse_args()
    tiles, dim = args.tiles, args.dim
    bag_bytes = tiles * dim * 4
    threads = torch.get_num_threads()
    bags, labels = _bags(args.bags, tiles, dim)

    print(
        f"ABMIL training, bags of {tiles:,} x {dim} float32 ({bag_bytes / 2**20:.0f} MiB), "
        f"CPU, {threads} threads, {args.bags} bags per epoch, best of {args.rounds} rounds"
    )
    # Rounds alternate the three measurements so that a busy moment of a shared machine
    # slows all of them alike; each reports its best round.
    torch.manual_seed(0)
    train_mil(
        ABMIL(dim, 2),
        FeatureBagDataset(bags[:2], {"label": labels[:2]}),
        FeatureBagDataset(bags[:1], {"label": labels[:1]}),
        config=TrainConfig(epochs=1, progress=False),
    )  # warm-up: imports, allocator
    bare = ours = limit = 0.0
    for _ in range(args.rounds):
        torch.manual_seed(0)
        bare = max(bare, bare_loop_bags_per_second(ABMIL(dim, 2), bags, labels))
        torch.manual_seed(0)
        ours = max(ours, train_mil_bags_per_second(ABMIL(dim, 2), bags, labels))
        limit = max(limit, matmul_flops_per_second(tiles, dim))
    achieved = ours * abmil_flops_per_training_bag(tiles, dim)
    print(f"{'bare PyTorch loop':<44}{bare:>10.2f} bags/s")
    print(f"{'gpfm.heads.train_mil (+1 val bag/epoch)':<44}{ours:>10.2f} bags/s")
    print(f"{'plain matmul of the first layer':<44}{limit / 1e9:>10.1f} GFLOP/s")
    print(f"{'train_mil ÷ bare loop':<44}{ours / bare:>10.2f}   (1.0 = no loop overhead)")
    label = "achieved FLOP/s ÷ matmul FLOP/s"
    print(f"{label:<44}{achieved / limit:>10.2f}   (1.0 = the machine's limit)")
    peak = training_peak_memory("train_mil", tiles, dim)
    bare_peak = training_peak_memory("bare", tiles, dim)
    if peak is not None and bare_peak is not None:
        for name, value in (("train_mil", peak), ("bare loop", bare_peak)):
            label = f"peak memory above baseline, {name}"
            print(f"{label:<44}{value / 2**20:>10.0f} MiB = {value / bag_bytes:.1f} x one bag")
        print(f"{'peak memory train_mil ÷ bare loop':<44}{peak / bare_peak:>10.2f}")
    print()
    print(f"feature-bag loader, {args.bags} bags of {tiles:,} x {dim} float32, batch 1")
    with tempfile.TemporaryDirectory(prefix="gpfm-bench-heads-") as folder:
        paths = []
        for index, bag in enumerate(bags):
            coords = np.zeros((tiles, 2), np.int64)
            paths.append(
                write_features(Path(folder) / f"slide-{index}.h5", bag, coords, encoder="bench")
            )
        memory = FeatureBagDataset(bags, {"label": labels})
        files = FeatureBagDataset(paths, {"label": labels})
        from_memory = loader_bags_per_second(memory, workers=0)
        from_files = loader_bags_per_second(files, workers=0)
        from_files_workers = loader_bags_per_second(files, workers=2)
    copy_rate = memcpy_bytes_per_second(bags[0])
    print(f"{'from memory (arrays, handed over as views)':<44}{from_memory:>10.1f} bags/s")
    print(
        f"{'from HDF5 files (page cache), main process':<44}{from_files:>10.1f} bags/s "
        f"({from_files * bag_bytes / 1e9:.2f} GB/s)"
    )
    print(f"{'from HDF5 files, 2 DataLoader workers':<44}{from_files_workers:>10.1f} bags/s")
    print(f"{'HDF5 ÷ memory':<44}{from_files / from_memory:>10.4f}")
    print(f"{'HDF5 (2 workers) ÷ memory':<44}{from_files_workers / from_memory:>10.4f}")
    label = "HDF5 GB/s ÷ memcpy GB/s"
    print(f"{label:<44}{from_files * bag_bytes / copy_rate:>10.2f}   (1.0 = the machine's limit)")
    print(
        f"{'ABMIL training bags/s ÷ HDF5 bags/s':<44}{ours / from_files:>10.3f}"
        "   (< 1: reading is not the bottleneck)"
    )


if __name__ == "__main__":
    main()
