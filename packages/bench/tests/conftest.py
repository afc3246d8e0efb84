from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gpfm.bench import make_synthetic_benchmark, run_task
from gpfm.bench.synthetic import SyntheticBenchmark

# Small enough for a few seconds per protocol on a CPU; large enough that the good encoder wins.
SMALL = {"n_slides": 30, "n_patients_survival": 24, "n_rois": 120, "epochs": 4, "bootstrap": 20}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny heads run faster on one thread than on two (see gpfm-heads' conftest)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def synthetic(tmp_path_factory) -> SyntheticBenchmark:
    """The synthetic benchmark at test size (good / fair / poor encoders)."""
    return make_synthetic_benchmark(tmp_path_factory.mktemp("synthetic"), **SMALL)


@pytest.fixture(scope="session")
def ours_results(synthetic, tmp_path_factory) -> Path:
    """Every synthetic task but the language ones (``test_language.py``) run for every encoder
    under protocol "ours"; the results folder."""
    out = tmp_path_factory.mktemp("results")
    torch.set_num_threads(1)
    for spec in synthetic.specs:
        if spec.type in ("vqa", "report_generation"):
            continue
        for encoder in synthetic.encoders:
            run_task(spec, encoder, synthetic.data_roots[spec.name], out, protocol="ours")
    return out
