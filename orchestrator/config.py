"""Training configs: read a TOML file, check every field, and say exactly what is wrong.

A config error is found here, before any worker is touched, and names the
file, the field and what was expected.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import torch

from splitnn.errors import ConfigError, InvalidArgument
from splitnn.model import layers as layer_specs
from splitnn.model import optim as optim_specs
from splitnn.model.losses import LOSS_KINDS
from splitnn.orchestrator.config_workers import (  # noqa: F401 (WorkerConfig: re-exported)
    OWNER,
    WorkerConfig,
    parse_workers,
    read_toml,
    unknown_fields,
)

_TOP_KEYS = {"name", "seed", "input_shape", "workers", "training", "optimizer", "segments"}
_TRAINING_KEYS = {
    "owners",
    "rounds",
    "epochs",
    "batch_size",
    "shuffle",
    "loss",
    "dataset",
    "test_dataset",
    "eval_every",
    "eval_batch_size",
    "log_every",
    "checkpoint_every",
    "micro_batches",
    "route",
    "wire",
    "schedule",
}
# Training fields with a fixed set of values; the first is the default.
_CHOICES = {
    # owner: every hop returns to the owner's worker; chain: each host sends its
    # output straight to the next (services.chain_forward), fewer messages on chains of
    # four stages or more, for networks with real latency. (`splitnn train --relay`:
    # every hop goes through the orchestrator, whatever this says.)
    "route": ("owner", "chain"),
    # round_robin: owners train one after another, the perimeter handed over (the
    # notebook's); splitfed: every owner trains its own copy of the chain at the same
    # time, the copies averaged at each round's end (orchestrator/splitfed.py).
    "schedule": ("round_robin", "splitfed"),
    # How activations and gradients travel (splitnn.wire.compress); float32 is exact.
    "wire": ("float32", "float16", "bfloat16", "int8"),
}


@dataclass
class SegmentConfig:
    """One segment of the chain: where it lives and what it is made of."""

    index: int
    host: str
    layers: list


@dataclass
class Config:
    """A whole training job."""

    path: Path
    name: str
    seed: int
    input_shape: list[int]
    workers: dict[str, WorkerConfig]
    segments: list[SegmentConfig]
    optimizer: dict
    owners: list[str]
    rounds: int = 1
    epochs: int = 1
    batch_size: int = 0
    shuffle: bool = True
    loss: str = "cross_entropy"
    dataset: str = "train"
    test_dataset: str | None = None
    eval_every: int = 0
    eval_batch_size: int = 1000
    log_every: int = 1
    checkpoint_every: int = 0
    # Cut each training batch into this many micro-batches (splitnn.training.pipeline).
    micro_batches: int = 1
    route: str = "owner"
    schedule: str = "round_robin"
    wire: str = "float32"
    # Start weights per segment ("model.<layer>.<param>"), when not built from `seed`:
    # the Python API's segments as the caller built them (never from a TOML file).
    initial: list | None = None
    raw: dict = field(default_factory=dict)

    def placement(self, owner: str) -> list[str]:
        """The host of every segment while `owner` trains."""
        return [owner if s.host == OWNER else s.host for s in self.segments]

    @property
    def hosts(self) -> list[str]:
        """Every host the job talks to, in a stable order."""
        return list(self.workers)


def load_config(path: str | Path) -> Config:
    """Read and validate a config file."""
    path = Path(path)
    return parse_config(read_toml(path), path)


def parse_config(raw: dict, path: Path) -> Config:
    """Validate a parsed TOML document; raise ConfigError naming the bad field."""

    def fail(where: str, message: str) -> NoReturn:
        raise ConfigError(f"{path}: {where}: {message}")

    unknown_fields(raw, _TOP_KEYS, "", fail)
    name = raw.get("name", path.stem)
    seed = raw.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        fail("seed", f"expected an integer >= 0, got {seed!r}")
    input_shape = raw.get("input_shape")
    if (
        not isinstance(input_shape, list)
        or not input_shape
        or not all(isinstance(d, int) and d > 0 for d in input_shape)
    ):
        fail(
            "input_shape",
            f"expected a list of positive integers (one row's shape), got {input_shape!r}",
        )

    workers = parse_workers(raw, path)

    training = raw.get("training", {})
    if not isinstance(training, dict):
        fail("training", "expected a table")
    unknown_fields(training, _TRAINING_KEYS, "training", fail)
    owners = training.get("owners")
    if not isinstance(owners, list) or not owners or not all(isinstance(o, str) for o in owners):
        fail("training.owners", "expected a list of host names")
    for i, owner in enumerate(owners):
        if owner not in workers:
            fail(f"training.owners[{i}]", f"unknown host {owner!r}; hosts are {sorted(workers)}")
    ints = {
        "rounds": 1,
        "epochs": 1,
        "batch_size": 0,
        "eval_every": 0,
        "eval_batch_size": 1000,
        "log_every": 1,
        "checkpoint_every": 0,
        "micro_batches": 1,
    }
    values: dict[str, Any] = {}
    for key, default in ints.items():
        value = training.get(key, default)
        at_least_one = ("rounds", "epochs", "log_every", "eval_batch_size", "micro_batches")
        minimum = 1 if key in at_least_one else 0
        if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
            fail(f"training.{key}", f"expected an integer >= {minimum}, got {value!r}")
        values[key] = value
    for key, allowed in _CHOICES.items():
        value = training.get(key, allowed[0])
        if value not in allowed:
            fail(f"training.{key}", f"expected one of {list(allowed)}, got {value!r}")
        values[key] = value
    shuffle = training.get("shuffle", True)
    if not isinstance(shuffle, bool):
        fail("training.shuffle", f"expected true or false, got {shuffle!r}")
    loss = training.get("loss", "cross_entropy")
    if loss not in LOSS_KINDS:
        fail("training.loss", f"expected one of {sorted(LOSS_KINDS)}, got {loss!r}")
    dataset = training.get("dataset", "train")
    test_dataset = training.get("test_dataset")
    for key, value in (("dataset", dataset), ("test_dataset", test_dataset)):
        if value is not None and (not isinstance(value, str) or not value):
            fail(f"training.{key}", f"expected a dataset name, got {value!r}")

    try:
        optimizer = optim_specs.normalize(raw.get("optimizer"), "optimizer")
    except InvalidArgument as err:
        fail("optimizer", str(err).removeprefix("optimizer").lstrip(".: "))

    segments_raw = raw.get("segments")
    if not isinstance(segments_raw, list) or not segments_raw:
        fail("segments", "expected one or more [[segments]] tables")
    segments = []
    for i, seg in enumerate(segments_raw):
        where = f"segments[{i}]"
        if not isinstance(seg, dict):
            fail(where, "expected a table with host and layers")
        unknown_fields(seg, {"host", "layers"}, where, fail)
        host = seg.get("host")
        if not isinstance(host, str) or (host != OWNER and host not in workers):
            fail(
                f"{where}.host",
                f"unknown host {host!r}; expected '{OWNER}' or one of {sorted(workers)}",
            )
        try:
            layer_specs.validate_spec(seg.get("layers"), where)
        except InvalidArgument as err:
            raise ConfigError(f"{path}: {err}") from None
        segments.append(SegmentConfig(i, host, seg["layers"]))
    for end, which in ((0, "first"), (-1, "last")):
        if segments[end].host != OWNER:
            fail(
                f"segments[{len(segments) - 1 if end else 0}].host",
                f"the {which} segment meets the data owner's "
                f"{'raw data' if end == 0 else 'labels'}: expected '{OWNER}'",
            )

    config = Config(
        path=path,
        name=name,
        seed=seed,
        input_shape=input_shape,
        workers=workers,
        segments=segments,
        optimizer=optimizer,
        owners=owners,
        shuffle=shuffle,
        loss=loss,
        dataset=dataset,
        test_dataset=test_dataset,
        raw=raw,
        **values,
    )
    check_shapes(config)
    if config.micro_batches > 1:
        batch_norm = [
            f"segments[{s.index}].layers[{i}]"
            for s in config.segments
            for i, layer in enumerate(s.layers)
            if isinstance(layer, dict) and str(layer.get("type", "")).startswith("BatchNorm")
        ]
        if batch_norm:
            fail(
                "training.micro_batches",
                f"{config.micro_batches} micro-batches with batch norm in training mode "
                f"({', '.join(batch_norm)}): each micro-batch would be normalized with its "
                "own statistics, which is not the batch's training; use micro_batches = 1, "
                "or GroupNorm / LayerNorm",
            )
    return config


def check_shapes(config: Config) -> None:
    """Run a zero batch of two rows through the chain on the CPU: shapes must chain.
    (Not on the meta device: its kernels import torch's compiler stack, seconds of
    start-up for a check of shapes. The orchestrator builds the whole model on the
    CPU for its initial weights in any case.)"""
    x = torch.zeros([2, *config.input_shape])
    for segment in config.segments:
        if layer_specs.needs_unoffered_module(segment.layers):
            return  # an operator's module on its host: the host checks from here on
        module = layer_specs.build_segment(segment.layers, f"segments[{segment.index}]")
        try:
            with torch.no_grad():
                x = module(x)
        except (RuntimeError, ValueError, IndexError) as err:
            raise ConfigError(
                f"{config.path}: segments[{segment.index}]: takes no input of shape "
                f"{list(x.shape[1:])} (per row) from the segment before: {err}"
            ) from None
