"""Segments built from a declarative layer spec, through an allow-list of torch.nn layers.

A spec is a list of dicts such as ``{"type": "Linear", "in_features": 4,
"out_features": 3}``. Only the layers and arguments listed here can be built,
and every argument is type-checked, so a spec that arrives over the network
can describe a model but never run code of its own choosing. Sizes are checked
on the meta device before any memory is allocated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from splitnn.errors import InvalidArgument, ResourceExhausted
from splitnn.v1 import worker_pb2

INT, FLOAT, BOOL, STR, INTS = "int", "float", "bool", "str", "ints"
# An argument may accept several kinds, e.g. kernel_size=3 or kernel_size=[3, 5].
INT_OR_INTS = (INT, INTS)


@dataclass(frozen=True)
class LayerKind:
    """A layer the worker may build, and the keyword arguments it accepts."""

    factory: type
    args: dict  # name -> tuple of accepted kinds
    required: tuple = ()
    choices: dict | None = None  # name -> allowed string values


def _k(*kinds):
    return tuple(kinds)


ALLOWED_LAYERS: dict[str, LayerKind] = {
    "Linear": LayerKind(
        nn.Linear,
        {"in_features": _k(INT), "out_features": _k(INT), "bias": _k(BOOL)},
        ("in_features", "out_features"),
    ),
    "Conv2d": LayerKind(
        nn.Conv2d,
        {
            "in_channels": _k(INT),
            "out_channels": _k(INT),
            "kernel_size": INT_OR_INTS,
            "stride": INT_OR_INTS,
            "padding": _k(INT, INTS, STR),
            "dilation": INT_OR_INTS,
            "groups": _k(INT),
            "bias": _k(BOOL),
            "padding_mode": _k(STR),
        },
        ("in_channels", "out_channels", "kernel_size"),
        {
            "padding": ("same", "valid"),
            "padding_mode": ("zeros", "reflect", "replicate", "circular"),
        },
    ),
    "MaxPool2d": LayerKind(
        nn.MaxPool2d,
        {
            "kernel_size": INT_OR_INTS,
            "stride": INT_OR_INTS,
            "padding": INT_OR_INTS,
            "dilation": INT_OR_INTS,
            "ceil_mode": _k(BOOL),
        },
        ("kernel_size",),
    ),
    "AvgPool2d": LayerKind(
        nn.AvgPool2d,
        {
            "kernel_size": INT_OR_INTS,
            "stride": INT_OR_INTS,
            "padding": INT_OR_INTS,
            "ceil_mode": _k(BOOL),
            "count_include_pad": _k(BOOL),
        },
        ("kernel_size",),
    ),
    "AdaptiveAvgPool2d": LayerKind(
        nn.AdaptiveAvgPool2d, {"output_size": INT_OR_INTS}, ("output_size",)
    ),
    "Flatten": LayerKind(nn.Flatten, {"start_dim": _k(INT), "end_dim": _k(INT)}),
    "ReLU": LayerKind(nn.ReLU, {}),
    "LeakyReLU": LayerKind(nn.LeakyReLU, {"negative_slope": _k(FLOAT, INT)}),
    "Tanh": LayerKind(nn.Tanh, {}),
    "Sigmoid": LayerKind(nn.Sigmoid, {}),
    "GELU": LayerKind(nn.GELU, {"approximate": _k(STR)}, (), {"approximate": ("none", "tanh")}),
    "Softmax": LayerKind(nn.Softmax, {"dim": _k(INT)}, ("dim",)),
    "LogSoftmax": LayerKind(nn.LogSoftmax, {"dim": _k(INT)}, ("dim",)),
    "Identity": LayerKind(nn.Identity, {}),
    "Dropout": LayerKind(nn.Dropout, {"p": _k(FLOAT, INT)}),
    "BatchNorm1d": LayerKind(
        nn.BatchNorm1d,
        {
            "num_features": _k(INT),
            "eps": _k(FLOAT),
            "momentum": _k(FLOAT),
            "affine": _k(BOOL),
            "track_running_stats": _k(BOOL),
        },
        ("num_features",),
    ),
    "BatchNorm2d": LayerKind(
        nn.BatchNorm2d,
        {
            "num_features": _k(INT),
            "eps": _k(FLOAT),
            "momentum": _k(FLOAT),
            "affine": _k(BOOL),
            "track_running_stats": _k(BOOL),
        },
        ("num_features",),
    ),
    "GroupNorm": LayerKind(
        nn.GroupNorm,
        {"num_groups": _k(INT), "num_channels": _k(INT), "eps": _k(FLOAT), "affine": _k(BOOL)},
        ("num_groups", "num_channels"),
    ),
    "Dropout2d": LayerKind(nn.Dropout2d, {"p": _k(FLOAT, INT)}),
    "Embedding": LayerKind(
        nn.Embedding,
        {"num_embeddings": _k(INT), "embedding_dim": _k(INT), "padding_idx": _k(INT)},
        ("num_embeddings", "embedding_dim"),
    ),
    "TransformerEncoderLayer": LayerKind(
        nn.TransformerEncoderLayer,
        {
            "d_model": _k(INT),
            "nhead": _k(INT),
            "dim_feedforward": _k(INT),
            "dropout": _k(FLOAT, INT),
            "activation": _k(STR),
            "layer_norm_eps": _k(FLOAT),
            "batch_first": _k(BOOL),
            "norm_first": _k(BOOL),
            "bias": _k(BOOL),
        },
        ("d_model", "nhead"),
        {"activation": ("relu", "gelu")},
    ),
    "LayerNorm": LayerKind(
        nn.LayerNorm,
        {
            "normalized_shape": INT_OR_INTS,
            "eps": _k(FLOAT),
            "elementwise_affine": _k(BOOL),
            "bias": _k(BOOL),
        },
        ("normalized_shape",),
    ),
}

# A module the host's operator offers (splitnn.model.modules): its name, typed args.
OPERATOR_MODULE = "Module"
# Composite blocks: their layers are specs themselves (splitnn.nn.Residual).
COMPOSITES = {"Sequential": ("layers",), "Residual": ("layers", "shortcut")}
MAX_LAYERS_PER_SEGMENT = 256
MAX_DEPTH = 8
MAX_INT_ARG = 1 << 24
DEFAULT_MAX_PARAMETERS = 200_000_000


def _kind_of(value) -> str | None:
    if isinstance(value, bool):
        return BOOL
    if isinstance(value, int):
        return INT
    if isinstance(value, float):
        return FLOAT
    if isinstance(value, str):
        return STR
    if isinstance(value, list | tuple) and all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        return INTS
    return None


def _check_range(kind: str | None, value, what: str, lengths: tuple[int, int]) -> None:
    """Numbers a layer or a Module may be given: ints (and lists of `lengths` of them)
    within MAX_INT_ARG, finite floats. `what` names the argument in the error."""
    if kind == INT and not -MAX_INT_ARG <= value <= MAX_INT_ARG:
        raise InvalidArgument(f"{what}={value} is out of range")
    if kind == INTS and (
        not lengths[0] <= len(value) <= lengths[1]
        or any(not -MAX_INT_ARG <= v <= MAX_INT_ARG for v in value)
    ):
        raise InvalidArgument(f"{what}={value!r} is out of range")
    if kind == FLOAT and not math.isfinite(value):
        raise InvalidArgument(f"{what}={value!r} is not finite")


def validate_layer(layer: dict, where: str = "layer") -> tuple[LayerKind, dict]:
    """Check one layer dict against the allow-list; return its kind and keyword args."""
    if not isinstance(layer, dict):
        raise InvalidArgument(
            f"{where}: expected a table with a 'type', got {type(layer).__name__}"
        )
    layer_type = layer.get("type")
    if layer_type not in ALLOWED_LAYERS:
        allowed = ", ".join(sorted(ALLOWED_LAYERS))
        raise InvalidArgument(f"{where}: unknown layer type {layer_type!r}; allowed: {allowed}")
    kind = ALLOWED_LAYERS[layer_type]
    args = {k: v for k, v in layer.items() if k != "type"}
    for name, value in args.items():
        if name not in kind.args:
            accepted = ", ".join(kind.args) or "no arguments"
            raise InvalidArgument(
                f"{where}: {layer_type} has no argument {name!r} (accepts {accepted})"
            )
        value_kind = _kind_of(value)
        if value_kind == INT and FLOAT in kind.args[name] and INT not in kind.args[name]:
            value_kind = FLOAT
        if value_kind not in kind.args[name]:
            raise InvalidArgument(
                f"{where}: {layer_type}.{name} must be {' or '.join(kind.args[name])}, "
                f"got {value!r}"
            )
        _check_range(value_kind, value, f"{where}: {layer_type}.{name}", (1, 4))
        if value_kind == INTS:
            args[name] = tuple(value)
        if value_kind == STR:
            choices = (kind.choices or {}).get(name)
            if choices is None or value not in choices:
                raise InvalidArgument(
                    f"{where}: {layer_type}.{name}={value!r} is not one of {choices}"
                )
        if value_kind == FLOAT:
            args[name] = float(value)
    missing = [name for name in kind.required if name not in args]
    if missing:
        raise InvalidArgument(f"{where}: {layer_type} needs {', '.join(missing)}")
    return kind, args


def validate_spec(layers: object, where: str = "segment") -> None:
    """Check a whole segment spec (anything a config or a peer sent) without building it:
    every layer, nested ones too, at most MAX_LAYERS_PER_SEGMENT in all and
    MAX_DEPTH deep."""
    _validate_list(layers, where, [0], 0)


def _validate_list(layers: object, where: str, count: list[int], depth: int) -> None:
    if not isinstance(layers, list) or not layers:
        raise InvalidArgument(f"{where}: layers must be a non-empty list")
    if depth > MAX_DEPTH:
        raise InvalidArgument(f"{where}: blocks nested more than {MAX_DEPTH} deep")
    for i, layer in enumerate(layers):
        count[0] += 1
        if count[0] > MAX_LAYERS_PER_SEGMENT:
            raise InvalidArgument(f"{where}: more than {MAX_LAYERS_PER_SEGMENT} layers")
        here = f"{where}.layers[{i}]"
        if isinstance(layer, dict) and layer.get("type") in COMPOSITES:
            _validate_composite(layer, here, count, depth)
        elif isinstance(layer, dict) and layer.get("type") == OPERATOR_MODULE:
            validate_operator_module(layer, here)
        else:
            validate_layer(layer, here)


def validate_operator_module(layer: dict, where: str) -> dict:
    """Check a Module layer: a name, and arguments of the kinds any layer may have;
    returns the factory's keyword arguments."""
    name = layer.get("name")
    if not isinstance(name, str) or not name.isidentifier():
        raise InvalidArgument(f"{where}: Module needs a name (an identifier), got {name!r}")
    args = {}
    for key, value in layer.items():
        if key in ("type", "name"):
            continue
        kind = _kind_of(value)
        if kind is None:
            raise InvalidArgument(f"{where}: Module {name}.{key}={value!r} is not a plain value")
        _check_range(kind, value, f"{where}: Module {name}.{key}", (0, 8))
        if kind == INTS:
            value = list(value)
        if kind == STR and len(value) > 256:
            raise InvalidArgument(f"{where}: Module {name}.{key} is longer than 256 characters")
        args[key] = value
    return args


def needs_unoffered_module(layers: list) -> bool:
    """Whether a (valid) spec holds an operator Module this process does not offer:
    then only its host can build it."""
    from splitnn.model import modules as operator_modules

    for layer in layers:
        if layer["type"] == OPERATOR_MODULE and not operator_modules.is_offered(layer["name"]):
            return True
        if layer["type"] in COMPOSITES:
            if any(needs_unoffered_module(layer.get(k) or []) for k in COMPOSITES[layer["type"]]):
                return True
    return False


def _validate_composite(layer: dict, where: str, count: list[int], depth: int) -> None:
    fields = COMPOSITES[layer["type"]]
    extra = sorted(set(layer) - {"type", *fields})
    if extra:
        raise InvalidArgument(f"{where}: {layer['type']} has no field {extra[0]!r} ({fields})")
    if "layers" not in layer:
        raise InvalidArgument(f"{where}: {layer['type']} needs layers")
    for name in fields:
        if name in layer:
            _validate_list(layer[name], f"{where}.{name}", count, depth + 1)


def _construct(layers: list, where: str) -> nn.Sequential:
    modules = []
    for i, layer in enumerate(layers):
        here = f"{where}.layers[{i}]"
        if layer["type"] == "Sequential":
            modules.append(_construct(layer["layers"], here))
            continue
        if layer["type"] == "Residual":
            from splitnn.nn.residual import Residual

            shortcut = layer.get("shortcut")
            modules.append(
                Residual(
                    _construct(layer["layers"], f"{here}.layers"),
                    _construct(shortcut, f"{here}.shortcut") if shortcut else None,
                )
            )
            continue
        if layer["type"] == OPERATOR_MODULE:
            from splitnn.model import modules as operator_modules

            args = validate_operator_module(layer, here)
            modules.append(operator_modules.build(layer["name"], args, here))
            continue
        kind, args = validate_layer(layer, here)
        try:
            modules.append(kind.factory(**args))
        # AssertionError: torch checks some arguments with assert (the attention's heads)
        except (TypeError, ValueError, RuntimeError, AssertionError) as err:
            raise InvalidArgument(f"{here}: {layer['type']}: {err}") from None
    return nn.Sequential(*modules)


def build_meta(layers: list, where: str = "segment") -> nn.Sequential:
    """A segment built on the meta device: shapes without storage, to compute what a
    forward would allocate before running it."""
    validate_spec(layers, where)
    with torch.device("meta"):
        return _construct(layers, where)


def count_parameters(layers: list, where: str = "segment") -> int:
    """Parameter count of a spec, computed on the meta device (allocates nothing)."""
    validate_spec(layers, where)
    with torch.device("meta"):
        module = _construct(layers, where)
    return sum(p.numel() for p in module.parameters()) + sum(b.numel() for b in module.buffers())


def build_segment(
    layers: list, where: str = "segment", max_parameters: int | None = DEFAULT_MAX_PARAMETERS
) -> nn.Sequential:
    """Build a segment as nn.Sequential, in layer order (so the global RNG is used as
    plain PyTorch code building the same layers would use it). `max_parameters` None:
    the caller has counted them already (count_parameters) and checked its caps."""
    if max_parameters is None:
        validate_spec(layers, where)
        return _construct(layers, where)
    size = count_parameters(layers, where)
    if size > max_parameters:
        raise ResourceExhausted(
            f"{where}: {size} parameters exceed this worker's cap of {max_parameters}"
        )
    return _construct(layers, where)


def layer_to_proto(layer: dict) -> worker_pb2.LayerSpec:
    """A layer dict as a LayerSpec message."""
    spec = worker_pb2.LayerSpec(type=layer["type"])
    for name, value in layer.items():
        if name == "type":
            continue
        if layer["type"] in COMPOSITES and name in ("layers", "shortcut"):
            if not isinstance(value, list):
                raise InvalidArgument(f"{layer['type']}.{name}: expected a list of layers")
            getattr(spec, name).extend(layer_to_proto(inner) for inner in value)
            continue
        arg = spec.args[name]
        if isinstance(value, bool):
            arg.bool_value = value
        elif isinstance(value, int):
            arg.int_value = value
        elif isinstance(value, float):
            arg.float_value = value
        elif isinstance(value, str):
            arg.string_value = value
        elif isinstance(value, list | tuple):
            arg.ints_value.values.extend(int(v) for v in value)
        else:
            raise InvalidArgument(f"{layer['type']}.{name}: cannot encode {value!r}")
    return spec


def layer_from_proto(spec: worker_pb2.LayerSpec) -> dict:
    """A LayerSpec message as a layer dict (not yet validated)."""
    layer: dict = {"type": spec.type}
    for name in ("layers", "shortcut"):
        inner = getattr(spec, name)
        if len(inner):
            layer[name] = [layer_from_proto(s) for s in inner]
    for name, arg in spec.args.items():
        which = arg.WhichOneof("kind")
        if which is None:
            raise InvalidArgument(f"{spec.type}.{name}: argument has no value")
        value = getattr(arg, which)
        layer[name] = list(value.values) if which == "ints_value" else value
    return layer
