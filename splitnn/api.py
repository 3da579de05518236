"""The Python API, in the seed notebook's shape: segments built in Python, where each
lives, each owner's data, train.

    trained = splitnn.train(
        segments=[nn.Sequential(nn.Linear(4, 3), nn.Tanh()), ...],
        placement=["owner", "alice", "bob", "claire", "owner"],
        data={"alice": (x, y), "bob": (x, y), "claire": (x, y)},
        epochs=300, batch_size=0, loss="sum_squared_error",
        optimizer={"name": "sgd", "lr": 0.2},
    )

It is a second door into the config's code path, not a second implementation: the
call becomes the same TOML document a config file holds (parsed and checked by
orchestrator.config), the segments become layer specs through the same allow-list,
and the same Trainer runs it against local workers (or running ones). The start
weights are the segments' own, as the caller built them.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from splitnn.errors import ConfigError
from splitnn.model.layers import ALLOWED_LAYERS, build_segment
from splitnn.nn.residual import Residual

_KIND_OF = {kind.factory: name for name, kind in ALLOWED_LAYERS.items()}
# Training options that keep their config names; anything else is refused by parse.
_OPTIONS = ("rounds", "shuffle", "seed", "schedule", "micro_batches", "wire", "route")


def layer_spec(module: nn.Module, where: str) -> dict:
    """The allow-listed layer spec of one torch module (its constructor arguments,
    read back from the module), or ConfigError naming it and its position."""
    if isinstance(module, nn.Sequential):
        layers = [layer_spec(m, f"{where}[{j}]") for j, m in enumerate(module)]
        return {"type": "Sequential", "layers": layers}
    if isinstance(module, Residual):
        spec = {"type": "Residual", "layers": layer_spec(module.body, f"{where}.body")["layers"]}
        if module.shortcut is not None:
            spec["shortcut"] = layer_spec(module.shortcut, f"{where}.shortcut")["layers"]
        return spec
    name = _KIND_OF.get(type(module))
    if name is None:
        raise ConfigError(
            f"{where}: {type(module).__module__}.{type(module).__name__} is not a layer "
            f"splitnn builds (allowed: {', '.join(sorted(ALLOWED_LAYERS))})"
        )
    spec: dict = {"type": name, **_read_back(module)}
    for arg in ALLOWED_LAYERS[name].args:
        if arg in spec:
            continue
        if not hasattr(module, arg):
            continue
        value = getattr(module, arg)
        if arg == "bias" and not isinstance(value, bool):
            value = value is not None
        if isinstance(value, torch.Size | tuple):
            value = list(value)
        if value is None:
            continue
        spec[arg] = value
    rebuilt = build_segment([spec], where)[0]
    theirs = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    ours = {k: tuple(v.shape) for k, v in rebuilt.state_dict().items()}
    if theirs != ours:
        raise ConfigError(f"{where}: {name} could not be described exactly ({spec})")
    return spec


def _read_back(module: nn.Module) -> dict:
    """Constructor arguments a layer keeps under other names than its own."""
    if isinstance(module, nn.TransformerEncoderLayer):
        attention = module.self_attn
        return {
            "d_model": attention.embed_dim,
            "nhead": attention.num_heads,
            "dim_feedforward": module.linear1.out_features,
            "dropout": float(module.dropout.p),
            "activation": "gelu" if module.activation_relu_or_gelu == 2 else "relu",
            "layer_norm_eps": module.norm1.eps,
            "batch_first": attention.batch_first,
            "norm_first": module.norm_first,
            "bias": module.linear1.bias is not None,
        }
    return {}


def _layers(segment: nn.Module) -> list[nn.Module]:
    return list(segment) if isinstance(segment, nn.Sequential) else [segment]


def _segment_state(segment: nn.Module) -> dict[str, torch.Tensor]:
    return {
        f"model.{j}.{k}": v.detach().clone()
        for j, layer in enumerate(_layers(segment))
        for k, v in layer.state_dict().items()
    }


def _arrays(value, owner: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        x, y = value
    except (TypeError, ValueError):
        raise ConfigError(f"data[{owner!r}]: expected (x, y), arrays or tensors") from None
    return tuple(
        v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v) for v in (x, y)
    )


def build_config(
    segments,
    placement,
    data,
    directory: Path,
    *,
    epochs=1,
    batch_size=0,
    loss="cross_entropy",
    optimizer=None,
    owners=None,
    workers=None,
    input_shape=None,
    **options,
):
    """The Config a train() call describes (data written to `directory` as .npz)."""
    from splitnn.orchestrator.config import parse_config

    unknown = sorted(set(options) - set(_OPTIONS))
    if unknown:
        raise ConfigError(f"splitnn.train: unknown option(s) {unknown}; known: {list(_OPTIONS)}")
    segments = list(segments)
    if len(placement) != len(segments):
        raise ConfigError(f"placement names {len(placement)} hosts for {len(segments)} segments")
    specs = [
        [layer_spec(layer, f"segments[{i}][{j}]") for j, layer in enumerate(_layers(seg))]
        for i, seg in enumerate(segments)
    ]
    owners = list(owners or data)
    hosts = list(dict.fromkeys([*owners, *(h for h in placement if h != "owner")]))
    worker_table: dict = {}
    input_shape = None
    missing = [h for h in hosts if workers and h not in workers]
    if missing:
        raise ConfigError(f"workers names no address for host(s) {missing}")
    for host in hosts:
        entry: dict = {"address": (workers or {}).get(host, "127.0.0.1:1")}
        value = data.get(host)
        if isinstance(value, str):  # a dataset the running worker serves already
            entry["dataset"] = value
        elif value is not None:
            if workers:
                raise ConfigError(
                    f"data[{host!r}]: with running workers give the name of a dataset the "
                    "worker serves; rows never travel from here"
                )
            x, y = _arrays(value, host)
            path = directory / f"{host}.npz"
            np.savez(path, x=x, y=y)
            entry["data"] = {"train": str(path)}
            input_shape = input_shape or list(x.shape[1:])
        worker_table[host] = entry
    names = {e.pop("dataset", None) for e in worker_table.values()} - {None}
    if len(names) > 1:
        raise ConfigError(f"every owner's worker must serve the same dataset name, not {names}")
    dataset = names.pop() if names else "train"
    if input_shape is None:
        raise ConfigError("give input_shape (one row's shape) when no owner's arrays are given")
    training = {
        "owners": owners,
        "epochs": epochs,
        "batch_size": batch_size,
        "loss": loss,
        "dataset": dataset,
        "shuffle": options.pop("shuffle", False),
    }
    seed = options.pop("seed", 0)
    training.update(options)
    raw = {
        "name": "splitnn_train",
        "seed": seed,
        "input_shape": list(input_shape),
        "workers": worker_table,
        "training": training,
        "optimizer": optimizer or {"name": "sgd", "lr": 0.1},
        "segments": [{"host": h, "layers": s} for h, s in zip(placement, specs, strict=True)],
    }
    config = parse_config(raw, directory / "splitnn_train.toml")
    config.initial = [_segment_state(seg) for seg in segments]
    return config


def train(
    segments,
    placement,
    data,
    *,
    epochs=1,
    batch_size=0,
    loss="cross_entropy",
    optimizer=None,
    owners=None,
    workers=None,
    out=None,
    tls_dir=None,
    token_file=None,
    show_progress=False,
    input_shape=None,
    tensorboard=None,
    **options,
) -> nn.Sequential:
    """Train the segments split across hosts; returns nn.Sequential of the trained
    segments (copies of the ones given, which are left as they were). Owners train
    in the order of `data` unless `owners` says otherwise. Without `workers` the
    hosts run as local worker processes holding each owner's arrays, stopped
    afterwards; with `workers={"alice": "host:port", ...}` the running ones are used
    (then `data` names the dataset each owner's worker serves). `out`: a directory
    for the run's files (model.safetensors, metrics.jsonl, curves.png...);
    `tensorboard`: a directory for TensorBoard event files of the run's curves."""
    from splitnn.orchestrator.run import train as run_training
    from splitnn.security.policy import Security

    security = Security.from_options(tls_dir=tls_dir, token_file=token_file)
    with tempfile.TemporaryDirectory(prefix="splitnn-train-") as tmp:
        config = build_config(
            segments,
            placement,
            data,
            Path(tmp),
            epochs=epochs,
            batch_size=batch_size,
            loss=loss,
            optimizer=optimizer,
            owners=owners,
            workers=workers,
            input_shape=input_shape,
            **options,
        )
        out_dir = Path(out) if out is not None else Path(tmp) / "out"
        sinks = []
        if tensorboard is not None:
            from splitnn.orchestrator.metric_sinks import TensorBoardLog

            sinks.append(TensorBoardLog(Path(tensorboard)))
        run_training(
            config,
            out_dir,
            local=workers is None,
            show_progress=show_progress,
            security=security,
            sinks=sinks,
        )
        return _trained(segments, out_dir / "model.safetensors")


def _trained(segments, path: Path) -> nn.Sequential:
    from safetensors.torch import load_file

    state = load_file(str(path))
    result = nn.Sequential(*copy.deepcopy(list(segments)))
    for i, segment in enumerate(result):
        for j, layer in enumerate(_layers(segment)):
            prefix = f"{i}.{j}."
            own = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
            layer.load_state_dict(own)
    return result


def load_model(config, weights) -> nn.Sequential:
    """The trained model of a config (a path or a Config) from a run's
    model.safetensors, as nn.Sequential of its segments, for inference."""
    from safetensors.torch import load_file

    from splitnn.orchestrator.config import Config, load_config

    if not isinstance(config, Config):
        config = load_config(config)
    model = nn.Sequential(
        *[build_segment(s.layers, f"segments[{s.index}]") for s in config.segments]
    )
    model.load_state_dict(load_file(str(weights)))
    return model.eval()
