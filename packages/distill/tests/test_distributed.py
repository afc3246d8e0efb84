"""Centring statistics across processes, as the reference computes them (two gloo processes)."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gpfm.distill import DINOLoss, iBOTPatchLoss, sinkhorn_knopp

K = 8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _logits(rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(rank)
    cls = torch.randn(4, K, generator=generator)
    patches = torch.randn(3 + 5 * rank, K, generator=generator)  # 3 and 8 masked patches
    return cls, patches


def _worker(rank: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    cls, patches = _logits(rank)
    ibot = iBOTPatchLoss(K, center_momentum=0.0)
    ibot.update_center(patches)
    dino = DINOLoss(K, center_momentum=0.0)
    dino.update_center(cls)
    targets = sinkhorn_knopp(patches, temp=0.1, n_iters=3)
    torch.save({"ibot": ibot.center, "dino": dino.center, "sinkhorn": targets}, f"{out}.{rank}")
    dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_centres_and_sinkhorn_over_two_processes(tmp_path):
    out = str(tmp_path / "result")
    # fork: the workers need not import this test module by name (pytest's importlib mode)
    mp.start_processes(_worker, args=(_free_port(), out), nprocs=2, join=True, start_method="fork")
    results = [torch.load(f"{out}.{rank}") for rank in range(2)]
    (cls0, patches0), (cls1, patches1) = _logits(0), _logits(1)
    # iBOT: each process's mean over its masked patches, averaged (ibot_patch_loss.py:133-147)
    expected_ibot = (patches0.mean(0) + patches1.mean(0)) / 2
    # DINO: the mean over all class tokens (dino_clstoken_loss.py:80-99)
    expected_dino = torch.cat([cls0, cls1]).mean(0)
    for result in results:
        torch.testing.assert_close(result["ibot"][0], expected_ibot)
        torch.testing.assert_close(result["dino"][0], expected_dino)
    # Sinkhorn-Knopp over both processes' patches equals one process holding all of them,
    # with the true total of rows (11), not 2 x this process's rows.
    together = sinkhorn_knopp(torch.cat([patches0, patches1]), temp=0.1, n_iters=3)
    torch.testing.assert_close(
        torch.cat([results[0]["sinkhorn"], results[1]["sinkhorn"]]), together
    )
