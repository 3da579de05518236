"""Smoke tests for the benchmark baselines (no timing assertions)."""

from __future__ import annotations

import multiprocessing
import sys
from pathlib import Path

import pytest
import torch

# `bench` is not an installed package; make the repo root importable under plain `pytest`.
_ROOT = str(Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from bench.baselines import run_local, run_rpc  # noqa: E402
from bench.models import mnist_mlp_job, seed_job  # noqa: E402

STEPS, WARMUP = 6, 2


def _check_figures(res: dict, steps: int) -> None:
    assert res["steps"] == steps
    assert res["seconds"] > 0
    assert res["samples_per_s"] > 0


def test_seed_job_data_and_layout():
    job = seed_job()
    x, y = job.data()
    assert x.dtype == torch.float32 and x.shape == (16, 4)
    assert x[5].tolist() == [0.0, 1.0, 0.0, 1.0]  # row i = bits of i, MSB first
    assert torch.equal(y, x[:, 0:1])
    assert job.stages() == [("alice", [0, 1]), ("bob", [2]), ("claire", [3]), ("alice", [4])]
    assert job.hosts == ["alice", "bob", "claire"]
    a = [p.clone() for s in job.build_segments() for p in s.parameters()]
    b = [p.clone() for s in job.build_segments() for p in s.parameters()]
    assert all(torch.equal(p, q) for p, q in zip(a, b, strict=True))  # seeded init


def test_mnist_job_local_runs():
    job = mnist_mlp_job(n_samples=256)
    x, y = job.data()
    assert x.shape == (256, 784) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and 0 <= int(y.min()) and int(y.max()) <= 9
    _check_figures(run_local(job, STEPS, WARMUP), STEPS)


@pytest.mark.timeout(120)
def test_rpc_matches_local_on_seed_job():
    job = seed_job()
    local = run_local(job, STEPS, WARMUP, return_state=True)
    rpc = run_rpc(job, STEPS, WARMUP, return_state=True, timeout=90)
    _check_figures(local, STEPS)
    _check_figures(rpc, STEPS)

    assert local["state"].keys() == rpc["state"].keys()
    before = dict(torch.nn.Sequential(*job.build_segments()).state_dict())
    moved = False
    for k, v in local["state"].items():
        torch.testing.assert_close(rpc["state"][k], v, atol=1e-5, rtol=0)
        moved |= not torch.equal(v, before[k])
    assert moved, "training did not change the weights"
    assert multiprocessing.active_children() == []
