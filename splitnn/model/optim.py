"""Optimizers from a small declarative spec, one per segment.

Every optimizer here works parameter by parameter, so stepping each segment
with its own optimizer equals stepping the whole model with one.
"""

from __future__ import annotations

import math

import torch

from splitnn.errors import InvalidArgument
from splitnn.v1 import worker_pb2

OPTIMIZER_ARGS = {
    "sgd": {"lr", "momentum", "dampening", "weight_decay", "nesterov"},
    "adam": {"lr", "betas", "eps", "weight_decay", "amsgrad"},
    "adamw": {"lr", "betas", "eps", "weight_decay", "amsgrad"},
}
_KINDS = {
    "sgd": worker_pb2.OPTIMIZER_KIND_SGD,
    "adam": worker_pb2.OPTIMIZER_KIND_ADAM,
    "adamw": worker_pb2.OPTIMIZER_KIND_ADAMW,
}
_NAMES = {v: k for k, v in _KINDS.items()}
_DEFAULTS = {
    "sgd": {"momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False},
    "adam": {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0, "amsgrad": False},
    "adamw": {"betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.01, "amsgrad": False},
}


def normalize(spec: object, where: str = "optimizer") -> dict:
    """Validate an optimizer spec (anything a config or a peer sent) and fill in torch's
    defaults."""
    if not isinstance(spec, dict):
        raise InvalidArgument(f"{where}: expected a table")
    name = spec.get("name")
    if name not in OPTIMIZER_ARGS:
        raise InvalidArgument(f"{where}.name: {name!r} is not one of {sorted(OPTIMIZER_ARGS)}")
    out = {"name": name, **_DEFAULTS[name]}
    for key, value in spec.items():
        if key == "name":
            continue
        if key not in OPTIMIZER_ARGS[name]:
            raise InvalidArgument(
                f"{where}.{key}: not an argument of {name} (accepts {sorted(OPTIMIZER_ARGS[name])})"
            )
        if key in ("nesterov", "amsgrad"):
            if not isinstance(value, bool):
                raise InvalidArgument(f"{where}.{key}: expected true or false, got {value!r}")
        elif key == "betas":
            if (
                not isinstance(value, list | tuple)
                or len(value) != 2
                or not all(isinstance(b, int | float) and 0 <= b < 1 for b in value)
            ):
                raise InvalidArgument(
                    f"{where}.betas: expected two numbers in [0, 1), got {value!r}"
                )
            value = (float(value[0]), float(value[1]))
        else:
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise InvalidArgument(f"{where}.{key}: expected a number >= 0, got {value!r}")
            value = float(value)
        out[key] = value
    if "lr" not in out:
        raise InvalidArgument(f"{where}.lr: required")
    if out["name"] == "sgd" and out["nesterov"] and (out["momentum"] <= 0 or out["dampening"] != 0):
        raise InvalidArgument(f"{where}: nesterov needs momentum > 0 and dampening 0")
    return out


def build_optimizer(params, spec: dict) -> torch.optim.Optimizer:
    """The torch optimizer a normalized spec describes."""
    args = {k: v for k, v in spec.items() if k != "name"}
    if spec["name"] == "sgd":
        return torch.optim.SGD(params, **args)
    if spec["name"] == "adam":
        return torch.optim.Adam(params, **args)
    return torch.optim.AdamW(params, **args)


def to_proto(spec: dict) -> worker_pb2.OptimizerSpec:
    """A normalized spec as an OptimizerSpec message."""
    msg = worker_pb2.OptimizerSpec(kind=_KINDS[spec["name"]], lr=spec["lr"])
    msg.weight_decay = spec["weight_decay"]
    if spec["name"] == "sgd":
        msg.momentum, msg.dampening, msg.nesterov = (
            spec["momentum"],
            spec["dampening"],
            spec["nesterov"],
        )
    else:
        msg.beta1, msg.beta2 = spec["betas"]
        msg.eps, msg.amsgrad = spec["eps"], spec["amsgrad"]
    return msg


def from_proto(msg: worker_pb2.OptimizerSpec) -> dict:
    """An OptimizerSpec message as a normalized spec (validated)."""
    name = _NAMES.get(msg.kind)
    if name is None:
        raise InvalidArgument(f"optimizer kind {msg.kind} is not supported")
    spec: dict = {"name": name, "lr": msg.lr, "weight_decay": msg.weight_decay}
    if name == "sgd":
        spec.update(momentum=msg.momentum, dampening=msg.dampening, nesterov=msg.nesterov)
    else:
        spec.update(betas=(msg.beta1, msg.beta2), eps=msg.eps, amsgrad=msg.amsgrad)
    return normalize(spec)


def export_state(optimizer: torch.optim.Optimizer) -> dict[str, torch.Tensor]:
    """The optimizer's per-parameter state as flat named tensors ("<param>.<key>")."""
    out = {}
    for param_index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            if value is None:
                continue
            if not isinstance(value, torch.Tensor):
                value = torch.tensor(value, dtype=torch.float64)
            out[f"{param_index}.{key}"] = value
    return out


# Per-parameter state the optimizers we build keep (SGD: momentum; Adam, AdamW: the
# rest), and which of it is a scalar.
STATE_KEYS = frozenset({"momentum_buffer", "step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"})
SCALAR_STATE = frozenset({"step"})


def import_state(optimizer: torch.optim.Optimizer, flat: dict[str, torch.Tensor]) -> None:
    """Load flat named tensors from export_state into a fresh optimizer."""
    current = optimizer.state_dict()
    params = optimizer.param_groups[0]["params"]
    state: dict = {}
    for name, value in flat.items():
        index_text, _, key = name.partition(".")
        if not index_text.isdigit() or not key or int(index_text) >= len(params):
            raise InvalidArgument(f"optimizer state entry {name!r} does not fit this segment")
        # torch checks neither shapes nor dtypes here; a misfit would only fail at the
        # next step, after the batch was used up. Each entry has exactly its shape.
        param = params[int(index_text)]
        if key not in STATE_KEYS:
            raise InvalidArgument(f"optimizer state entry {name!r}: unknown key {key!r}")
        shape = () if key in SCALAR_STATE else tuple(param.shape)
        if tuple(value.shape) != shape:
            raise InvalidArgument(
                f"optimizer state {name} has shape {list(value.shape)}, expected {list(shape)}"
            )
        if key not in SCALAR_STATE and value.dtype != param.dtype:
            raise InvalidArgument(
                f"optimizer state {name} is {value.dtype}, expected {param.dtype}"
            )
        state.setdefault(int(index_text), {})[key] = value
    current["state"] = state
    try:
        optimizer.load_state_dict(current)
    except (ValueError, KeyError, RuntimeError) as err:
        raise InvalidArgument(f"optimizer state does not fit this segment: {err}") from None
