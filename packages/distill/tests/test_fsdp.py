"""FSDP2 on two CPU processes (gloo): student and teacher sharded alike, the EMA on the local
shards, the same losses and the same whole teacher as one unsharded process, and a sharded
checkpoint that resumes exactly."""

from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gpfm.distill.optim import adamw


def _sibling(name):  # tests are imported by path (importlib mode): load the helpers likewise
    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_helpers = _sibling("test_model")
STEPS = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _shard(model):
    """As Accelerate's TRANSFORMER_BASED_WRAP does with the model's ``_no_split_modules``."""
    from torch.distributed.fsdp import fully_shard

    for side in (model.student, model.teacher):
        for block in side["backbone"].blocks:
            fully_shard(block)
    fully_shard(model)
    return model


def _step(model, optimizer, batch, seed):
    torch.manual_seed(seed)  # the same stochastic depth in every process
    terms = model(batch, teacher_temp=0.04)
    terms["total"].backward()
    for group in model.clipping_groups():
        torch.nn.utils.clip_grad_norm_(group, 3.0, foreach=True)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.update_teacher(0.9)
    return terms["total"].item()


def _run(sharded: bool, batches):
    model = _helpers.tiny_model().train()
    if sharded:
        _shard(model)
    # adamw() gives sharded parameters the foreach implementation; the one-process run takes
    # it too (fused, its default on a CPU, rounds differently, and AdamW magnifies that on
    # near-zero gradients)
    groups = model.parameter_groups()
    optimizer = adamw(groups) if sharded else torch.optim.AdamW(groups, foreach=True)
    losses = [_step(model, optimizer, batch, seed) for seed, batch in enumerate(batches)]
    return model, optimizer, losses


def _worker(rank: int, port: int, out: str) -> None:
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_state_dict,
        set_state_dict,
    )

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    torch.set_num_threads(1)
    batches = [_helpers.tiny_batch(seed) for seed in range(STEPS)]  # every process the same
    model, _, losses = _run(True, batches)
    teacher_shard = next(model.teacher.parameters())
    assert type(teacher_shard).__name__ == "DTensor"  # the teacher is sharded like the student
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    whole = {k: v.clone() for k, v in get_model_state_dict(model, options=options).items()}
    model.keep_teacher_outputs = True
    with torch.no_grad():
        model(batches[0], teacher_temp=0.04)
    statistics = model.collapse_statistics()  # gathers the sharded prototypes

    # Resume: one step, a sharded checkpoint, a fresh sharded model loads it, one more step.
    first, optimizer_first, _ = _run(True, batches[:1])
    model_state, optimizer_state = get_state_dict(first, optimizer_first)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=f"{out}.ckpt")
    resumed = _shard(_helpers.tiny_model().train())
    optimizer_resumed = adamw(resumed.parameter_groups())
    model_state, optimizer_state = get_state_dict(resumed, optimizer_resumed)
    state = {"model": model_state, "optimizer": optimizer_state}
    dcp.load(state, checkpoint_id=f"{out}.ckpt")
    set_state_dict(resumed, optimizer_resumed, model_state_dict=state["model"],
                   optim_state_dict=state["optimizer"])  # fmt: skip
    resumed_loss = _step(resumed, optimizer_resumed, batches[1], seed=1)
    if rank == 0:
        rank_of_prototypes = statistics.prototype_rank
        torch.save(
            {"losses": losses, "whole": whole, "resumed": resumed_loss, "rank": rank_of_prototypes},
            out,
        )
    dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_fsdp2_two_processes_match_one_process_and_resume_exactly(tmp_path):
    out = str(tmp_path / "result")
    # fork: the workers need not import this test module by name (pytest's importlib mode)
    mp.start_processes(_worker, args=(_free_port(), out), nprocs=2, join=True, start_method="fork")
    result = torch.load(out)
    batches = [_helpers.tiny_batch(seed) for seed in range(STEPS)]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the workers: reductions may split differently over threads
    try:
        model, _, losses = _run(False, batches)
    finally:
        torch.set_num_threads(threads)
    # Both processes see the same batch: the averaged gradient is one process's.
    torch.testing.assert_close(torch.tensor(result["losses"]), torch.tensor(losses))
    expected = model.state_dict()
    assert set(result["whole"]) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(result["whole"][name], value, msg=name)
    assert result["resumed"] == result["losses"][1]  # bit for bit
    model.keep_teacher_outputs = True
    with torch.no_grad():
        model(batches[0], teacher_temp=0.04)
    assert result["rank"] == pytest.approx(model.collapse_statistics().prototype_rank)
