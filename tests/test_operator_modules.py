"""Modules from a host's own code (--module NAME=package.module:factory): the wire
carries the name and typed arguments only; the weights equal one process."""

from __future__ import annotations

import pytest
import torch

from splitnn.errors import InvalidArgument, SplitnnError
from splitnn.model import layers as layer_specs
from splitnn.model import modules as operator_modules
from splitnn.orchestrator.config import load_config
from splitnn.services.segment_host import SegmentHost
from tests.test_equivalence import ROOT, assert_equals_reference
from tests.test_micro_batches import with_training

SPEC = "scaled=tests.operator_module:scaled_linear"
LAYER = {"type": "Module", "name": "scaled", "in_features": 3, "out_features": 3, "scale": 2.0}


@pytest.fixture
def offered():
    operator_modules.offer(SPEC)
    yield
    operator_modules._OFFERED.pop("scaled", None)


def test_the_spec_travels_as_a_name_and_typed_arguments():
    assert layer_specs.layer_from_proto(layer_specs.layer_to_proto(LAYER)) == LAYER
    with pytest.raises(InvalidArgument, match="plain value"):
        layer_specs.validate_spec([{**LAYER, "scale": {"code": "x"}}])
    with pytest.raises(InvalidArgument, match="needs a name"):
        layer_specs.validate_spec([{"type": "Module", "name": "os.system"}])


def test_a_host_without_the_module_refuses_it_naming_it():
    host = SegmentHost("bob")
    with pytest.raises(InvalidArgument, match="offers no module 'scaled'"):
        host.load_segment("run", 1, [LAYER], {"name": "sgd", "lr": 0.1}, None, owner="o")
    assert host.segments() == []


def test_a_host_with_it_builds_it(offered):
    host = SegmentHost("bob")
    segment = host.load_segment("run", 1, [LAYER], {"name": "sgd", "lr": 0.1}, None, owner="o")
    out = segment.module(torch.ones(2, 3)).detach()
    assert out.shape == (2, 3) and float(out.abs().max()) <= 2.0


@pytest.mark.parametrize(
    "text, message",
    [
        ("scaled", "NAME=package.module:factory"),
        ("scaled=tests.no_such_module:f", "ModuleNotFoundError"),
        ("scaled=tests.operator_module:nothing", "AttributeError"),
    ],
)
def test_bad_module_flags_are_refused(text, message):
    with pytest.raises(SplitnnError, match=message):
        operator_modules.offer(text)


def test_a_factory_that_builds_no_module_is_refused():
    operator_modules.offer("odd=tests.operator_module:not_a_module")
    try:
        with pytest.raises(InvalidArgument, match="built a object"):
            layer_specs.build_segment([{"type": "Module", "name": "odd"}])
    finally:
        operator_modules._OFFERED.pop("odd", None)


@pytest.mark.slow
def test_an_operator_module_on_a_middle_host_trains_as_one_process(tmp_path, offered):
    # The seed job with claire's segment an operator module (Linear(3, 2) + Tanh, scaled).
    text = (ROOT / "examples" / "seed.toml").read_text()
    claire = 'layers = [{ type = "Linear", in_features = 3, out_features = 2 }, { type = "Tanh" }]'
    assert claire in text
    module = '{ type = "Module", name = "scaled", in_features = 3, out_features = 2, scale = 1.5 }'
    config = tmp_path / "seed_module.toml"
    config.write_text(text.replace(claire, f"layers = [{module}]"))
    config = with_training(config, tmp_path, epochs=20)
    text = config.read_text().replace("epochs = 300\n", "")
    config.write_text(text)
    assert load_config(config).segments[3].layers[0]["type"] == "Module"
    assert_equals_reference(config, tmp_path / "out", "--module", SPEC)
