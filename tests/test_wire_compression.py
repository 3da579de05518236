"""training.wire: activations and gradients narrowed on the wire (float16, bfloat16,
int8 with a scale per row) and widened back before anything computes."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from splitnn.errors import InvalidArgument
from splitnn.orchestrator.config import load_config
from splitnn.orchestrator.reference import max_weight_difference, train_reference
from splitnn.v1 import worker_pb2
from splitnn.wire import codec
from splitnn.wire.compress import narrow, widen, wire_format
from tests import jobs
from tests.test_equivalence import run_cli
from tests.test_micro_batches import with_training

FORMATS = ["float16", "bfloat16", "int8"]
# Worst relative error per value that each format allows (of the row's largest value
# for int8: half a step of 1/127).
TOLERANCE = {"float16": 1e-3, "bfloat16": 8e-3, "int8": 0.5 / 127 + 1e-6}


@pytest.mark.parametrize("name", FORMATS)
def test_a_narrowed_tensor_comes_back_close_in_its_own_dtype(name):
    # Rows of magnitudes 1e-2 .. 1e3: float16's normal range, where it keeps its 11 bits.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 5, generator=g) * torch.logspace(-2, 3, 8)[:, None, None]
    x[x.abs() < 1e-3] = 1e-3  # no value below float16's normal range
    chunks = codec.encode(x, 64, wire_format(name))
    assert sum(len(c.data) for c in chunks) < x.numel() * 4  # fewer bytes
    assembler = codec.TensorAssembler()
    got = [t for t in (assembler.add(c) for c in chunks) if t is not None][0]
    assert got.dtype == torch.float32 and got.shape == x.shape
    scale = x.reshape(8, -1).abs().amax(1)[:, None, None] if name == "int8" else x.abs()
    assert bool(((got - x).abs() <= TOLERANCE[name] * scale + 1e-30).all())


def test_float32_and_integer_tensors_travel_as_they_are():
    x = torch.randn(4, 4)
    assert codec.encode(x, 1 << 20)[0].widen_to == 0
    labels = torch.arange(4)
    sent, scales = narrow(labels, wire_format("int8"))
    assert sent is labels and scales is None


def test_int8_rows_of_zeros_and_int8_sizes():
    x = torch.zeros(3, 10)
    x[1] = torch.linspace(-1, 1, 10)
    q, scales = narrow(x, wire_format("int8"))
    assert q.dtype == torch.int8 and len(scales) == 12
    back = widen(q, torch.float32, scales)
    assert torch.equal(back[0], torch.zeros(10)) and back[1, -1] == 1.0


def test_bad_narrowed_tensors_are_refused():
    q, scales = narrow(torch.randn(3, 4), wire_format("int8"))
    with pytest.raises(InvalidArgument, match="scales"):
        widen(q, torch.float32, scales[:-4])
    with pytest.raises(InvalidArgument, match="NaN"):
        widen(q, torch.float32, b"\xff\xff\xff\x7f" * 3)
    with pytest.raises(InvalidArgument, match="widened"):
        widen(q, torch.int64, scales)
    chunk = codec.encode(torch.randn(3, 4), 1 << 20, worker_pb2.WIRE_FORMAT_FLOAT16)[0]
    chunk.row_scales = b"\0" * 12
    with pytest.raises(InvalidArgument, match="only with int8"):
        codec.TensorAssembler().add(chunk)


@pytest.mark.slow
@pytest.mark.parametrize("name, bound", [("float16", 0.1), ("int8", 0.2)])
def test_a_narrowed_wire_trains_close_to_one_process(tmp_path, name, bound):
    # Not exact (only float32 is): the weights stay near the exact training's.
    config = with_training(jobs.mlp_job(tmp_path), tmp_path, wire=f'"{name}"')

    out = tmp_path / "out"
    result = run_cli("train", str(config), "--out", str(out), "--local")
    assert result.returncode == 0, result.stderr[-3000:]
    reference, _ = train_reference(load_config(config))
    difference = max_weight_difference(
        load_file(str(out / "model.safetensors")), reference.state_dict()
    )
    assert 0 < difference < bound
