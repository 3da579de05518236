"""splitnn-worker --device: the plumbing, checked on the CPU (scripts/gpu_check.sh runs
the equivalence test with a CUDA worker where there is one)."""

from __future__ import annotations

import pytest
import torch

from splitnn.errors import SplitnnError
from splitnn.model.devices import resolve_device
from splitnn.services.segment_host import SegmentHost
from splitnn.services.server import main as worker_main

NO_CUDA = not torch.cuda.is_available()
LINEAR = [{"type": "Linear", "in_features": 3, "out_features": 2}]
SGD = {"name": "sgd", "lr": 0.1}


def test_cpu_and_auto_resolve_without_cuda():
    assert resolve_device("cpu") == torch.device("cpu")
    if NO_CUDA:
        assert resolve_device("auto") == torch.device("cpu")


@pytest.mark.parametrize("text", ["gpu", "cuda:x", "cpu:0 ", ""])
def test_other_device_names_are_refused(text):
    with pytest.raises(SplitnnError, match="expected cpu, cuda, cuda:N or auto"):
        resolve_device(text)


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
def test_a_worker_asked_for_cuda_without_it_says_so_and_exits(capsys):
    argv = ["--name", "bob", "--listen", "127.0.0.1:0", "--device", "cuda"]
    assert worker_main(argv) == 2
    assert "no CUDA device" in capsys.readouterr().err


def test_segments_live_on_the_hosts_device_and_export_to_the_cpu():
    host = SegmentHost("bob", device=torch.device("cpu"))
    segment = host.load_segment("run", 0, LINEAR, SGD, None, owner="orchestrator")
    assert all(p.device == host.device for p in segment.module.parameters())
    exported = host.export_segment("run", 0)
    assert all(v.device.type == "cpu" for v in exported.values())
    exported["model.0.weight"] += 1  # a copy, not the live weights
    assert not torch.equal(exported["model.0.weight"], segment.module[0].weight)
    result = host.forward("run", [0], 1, input=torch.ones(4, 3))
    assert result.output.device == host.device
    grad = host.backward("run", [0], 1, torch.ones(4, 2), True)
    assert grad is None or grad.device == host.device


def _one_step(autocast):
    torch.manual_seed(0)
    host = SegmentHost("bob", autocast=autocast)
    spec = [{"type": "Linear", "in_features": 3, "out_features": 4}, {"type": "ReLU"}]
    host.load_segment("run", 1, spec, SGD, None, owner="orchestrator")
    x = torch.linspace(-1, 1, 12).reshape(4, 3)
    out = host.forward("run", [1], 1, input=x).output
    grad = host.backward("run", [1], 1, torch.ones(4, 4), True)
    host.settle("run", [1])
    return out, grad, host.export_segment("run", 1)["model.0.weight"]


def test_bfloat16_autocast_keeps_what_leaves_the_host_in_float32_and_trains_close():
    out, grad, weight = _one_step(torch.bfloat16)
    exact_out, exact_grad, exact_weight = _one_step(None)
    assert out.dtype == torch.float32 and grad.dtype == torch.float32
    assert weight.dtype == torch.float32
    assert torch.allclose(out, exact_out, atol=2e-2) and torch.allclose(grad, exact_grad, atol=2e-2)
    assert torch.allclose(weight, exact_weight, atol=2e-2)
    assert not torch.equal(out, exact_out)  # it did run in bfloat16
