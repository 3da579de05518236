"""SplitFed (training.schedule = "splitfed"): owners train their own copies of the chain
at once, averaged by row counts at each round's end; the weights equal a
single-process simulation of those semantics, and --resume continues bit for bit."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from splitnn.orchestrator.checkpoint import load_checkpoint
from splitnn.orchestrator.splitfed import average
from tests import jobs
from tests.test_equivalence import assert_equals_reference, run_cli
from tests.test_micro_batches import with_training

OPTIMIZERS = {
    "sgd": {"name": "sgd", "lr": 0.1, "momentum": 0.9},
    "adam": {"name": "adam", "lr": 0.01},
}


def test_average_weights_rows_and_keeps_integer_buffers_of_the_first_copy():
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([4.0, 8.0]), "n": torch.tensor(9)}
    out = average([a, b], [1, 2])
    assert torch.allclose(out["w"], torch.tensor([3.0, 6.0])) and out["w"].dtype == torch.float32
    assert int(out["n"]) == 3


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_splitfed_equals_its_single_process_simulation(tmp_path, name):
    config = jobs.splitfed_job(tmp_path, OPTIMIZERS[name])
    out = tmp_path / "out"
    assert_equals_reference(config, out)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rounds = {(r["owner"], r["round"]) for r in records}
    assert rounds >= {(o, r) for o in ("alice", "bob", "claire", "global") for r in (0, 1)}
    assert all(r["test_accuracy"] is not None for r in records if r["owner"] == "global")


@pytest.mark.slow
@pytest.mark.parametrize("every", [0, 4], ids=["round-end", "mid-round"])
def test_splitfed_resumed_from_its_checkpoint_gives_the_same_weights(tmp_path, every):
    # The run's last checkpoint: the end of round 1 (every = 0), or 4 steps of every
    # copy before round 2 ends (every = 4: bob's copy has 4 steps a round, alice's 6,
    # claire's 8). Resuming a copy of the run directory from it trains the rest again.
    config = jobs.splitfed_job(tmp_path, OPTIMIZERS["adam"])
    whole = tmp_path / "whole"
    flags = ["--checkpoint-every", str(every)]
    done = run_cli("train", str(config), "--out", str(whole), "--local", *flags)
    assert done.returncode == 0, done.stderr[-3000:]
    part = tmp_path / "part"
    shutil.copytree(whole, part)
    (part / "model.safetensors").unlink()
    checkpoint = load_checkpoint(part)
    assert checkpoint.cursor.turn == 3  # in round 2, which starts at turn 3
    assert checkpoint.extra["splitfed"]["done"] == (0 if every == 0 else 4)
    resumed = run_cli("train", "--resume", str(part), "--local")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = load_file(str(whole / "model.safetensors"))
    b = load_file(str(part / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The same records; owners log at once, so their order within a round may differ.
    lines = [sorted((d / "metrics.jsonl").read_text().splitlines()) for d in (part, whole)]
    assert lines[0] == lines[1]


@pytest.mark.slow
def test_an_owner_failing_mid_round_ends_the_run_naming_it(tmp_path):
    config = jobs.splitfed_job(tmp_path, OPTIMIZERS["sgd"])
    x = np.random.default_rng(0).random((56, 12), dtype=np.float32)
    np.savez(tmp_path / "claire_train.npz", x=x, y=np.full(56, 7, dtype=np.int64))  # 3 classes
    out = tmp_path / "out"
    result = run_cli("train", str(config), "--out", str(out), "--local")
    assert result.returncode == 2
    assert "owner claire, round 1, epoch 1, step 1" in result.stderr
    assert "--resume" in result.stderr and (out / "metrics.jsonl").is_file()


@pytest.mark.slow
def test_splitfed_through_the_chain_with_mutual_tls_equals_the_simulation(tmp_path):
    # Every worker-to-worker call under mTLS: the owners' drives, and the chained
    # forwards (alice's chain has five stages: alice, bob, claire, bob, alice).
    pki = tmp_path / "pki"
    for argv in (["init"], *(["issue", n] for n in ("alice", "bob", "claire", "orchestrator"))):
        done = run_cli("certs", *argv, "--dir", str(pki))
        assert done.returncode == 0, done.stderr
    config = with_training(
        jobs.splitfed_job(tmp_path, OPTIMIZERS["sgd"]), tmp_path, route='"chain"'
    )
    assert_equals_reference(config, tmp_path / "out", "--tls-dir", str(pki))
