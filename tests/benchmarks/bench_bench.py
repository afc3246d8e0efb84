"""gpfm-bench: wall time of the six synthetic tasks for one encoder on the CPU, and its shares.

Builds the synthetic benchmark (``make_synthetic_benchmark``, default sizes: 36 slides, 40
survival patients in 3 folds, 240 ROIs), then runs every task for one encoder under one protocol
and prints, per task and in total, the wall time and the share of it spent in the heads'
training and fitting (``train_mil``, the linear probe), in predicting and scoring the test split
(bootstrap intervals included), and in everything else (reading labels and features, splitting,
writing results.json). All shares come from one run, side by side.

    python tests/benchmarks/bench_bench.py [--protocol gpfm|ours] [--encoder good] [--threads 1]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from gpfm.bench import make_synthetic_benchmark, run_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--protocol", default="gpfm", choices=["gpfm", "ours"])
    parser.add_argument("--encoder", default="good")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (tiny heads: 1)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        bench = make_synthetic_benchmark(Path(folder) / "synthetic")
        generate = time.perf_counter() - start
        print(f"synthetic benchmark written in {generate:.2f} s (not counted below)")
        print(f"protocol {args.protocol}, encoder {args.encoder}, {args.threads} torch thread(s)")
        header = f"{'task':32s} {'wall s':>7s} {'heads':>6s} {'eval':>6s} {'other':>6s}  result"
        print(header)
        totals = {"wall": 0.0, "head": 0.0, "eval": 0.0}
        for spec in bench.specs:
            start = time.perf_counter()
            result = run_task(
                spec,
                args.encoder,
                bench.data_roots[spec.name],
                Path(folder) / "results",
                protocol=args.protocol,
            )
            wall = time.perf_counter() - start
            head, evaluation = result.timings["head"], result.timings["eval"]
            totals["wall"] += wall
            totals["head"] += head
            totals["eval"] += evaluation
            shares = (head / wall, evaluation / wall, 1 - (head + evaluation) / wall)
            summary = (
                f"{result.primary_metric} {result.primary:.3f}"
                if result.status == "done"
                else "not available"
            )
            print(
                f"{spec.name:32s} {wall:7.2f} {shares[0]:6.1%} {shares[1]:6.1%} "
                f"{shares[2]:6.1%}  {summary}"
            )
        wall = totals["wall"]
        other = wall - totals["head"] - totals["eval"]
        print(
            f"{'all six tasks':32s} {wall:7.2f} {totals['head'] / wall:6.1%} "
            f"{totals['eval'] / wall:6.1%} {other / wall:6.1%}"
        )
        print(f"heads' training ÷ everything else: {totals['head'] / (wall - totals['head']):.2f}")


if __name__ == "__main__":
    main()
