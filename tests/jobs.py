"""Training jobs for the equivalence tests: configs and the data files they name."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from splitnn.data.datasets import toy_arrays
from splitnn.model import optim as optim_specs
from splitnn.model.losses import compute_loss


def write_owner_data(directory: Path, owners: list[str], rows: int, shape: list[int], classes: int):
    """One seeded random .npz per owner (MNIST-shaped or any shape), distinct per owner."""
    paths = {}
    for i, owner in enumerate(owners):
        rng = np.random.default_rng(100 + i)
        x = rng.random((rows, *shape), dtype=np.float32)
        y = rng.integers(0, classes, size=rows).astype(np.int64)
        path = directory / f"{owner}_train.npz"
        np.savez(path, x=x, y=y)
        paths[owner] = path
    return paths


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    return repr(value)


def write_config(
    path: Path,
    *,
    hosts: list[str],
    data: dict[str, Path] | None,
    training: dict,
    optimizer: dict,
    segments: list[tuple[str, list[dict]]],
    input_shape: list[int],
    seed: int = 7,
) -> Path:
    """A TOML config file for the given job."""
    lines = [f'name = "{path.stem}"', f"seed = {seed}", f"input_shape = {input_shape}", ""]
    lines.append("[workers]")
    for host in hosts:
        entry = {"address": "127.0.0.1:1"}
        if data and host in data:
            entry["data"] = {"train": str(data[host])}
        lines.append(f"{host} = {_toml_value(entry)}")
    lines += ["", "[training]"] + [f"{k} = {_toml_value(v)}" for k, v in training.items()]
    lines += ["", "[optimizer]"] + [f"{k} = {_toml_value(v)}" for k, v in optimizer.items()]
    for host, layers in segments:
        lines += ["", "[[segments]]", f'host = "{host}"', f"layers = {_toml_value(layers)}"]
    path.write_text("\n".join(lines) + "\n")
    return path


def mlp_job(directory: Path) -> Path:
    """MNIST-shaped MLP, owner | bob | owner, SGD with Nesterov momentum, 2 owners, 2 rounds."""
    owners = ["alice", "bob"]
    data = write_owner_data(directory, owners, rows=200, shape=[1, 28, 28], classes=10)
    return write_config(
        directory / "mlp.toml",
        hosts=["alice", "bob"],
        data=data,
        input_shape=[1, 28, 28],
        training={
            "owners": owners,
            "rounds": 2,
            "epochs": 2,
            "batch_size": 32,
            "shuffle": True,
            "loss": "cross_entropy",
            "dataset": "train",
        },
        optimizer={
            "name": "sgd",
            "lr": 0.05,
            "momentum": 0.9,
            "nesterov": True,
            "weight_decay": 1e-4,
        },
        segments=[
            (
                "owner",
                [
                    {"type": "Flatten"},
                    {"type": "Linear", "in_features": 784, "out_features": 256},
                    {"type": "ReLU"},
                ],
            ),
            (
                "bob",
                [{"type": "Linear", "in_features": 256, "out_features": 128}, {"type": "ReLU"}],
            ),
            ("owner", [{"type": "Linear", "in_features": 128, "out_features": 10}]),
        ],
    )


def cnn_job(directory: Path) -> Path:
    """Small CNN with Adam, owner | bob | owner | claire | owner: the owner holds
    non-consecutive segments; three owners; batch 24 leaves a short last batch."""
    owners = ["alice", "bob", "claire"]
    data = write_owner_data(directory, owners, rows=100, shape=[1, 28, 28], classes=10)
    return write_config(
        directory / "cnn.toml",
        hosts=owners,
        data=data,
        input_shape=[1, 28, 28],
        training={
            "owners": owners,
            "epochs": 2,
            "batch_size": 24,
            "shuffle": True,
            "loss": "cross_entropy",
            "dataset": "train",
        },
        optimizer={"name": "adam", "lr": 0.002},
        segments=[
            (
                "owner",
                [
                    {
                        "type": "Conv2d",
                        "in_channels": 1,
                        "out_channels": 8,
                        "kernel_size": 3,
                        "padding": 1,
                    },
                    {"type": "ReLU"},
                ],
            ),
            (
                "bob",
                [
                    {"type": "MaxPool2d", "kernel_size": 2},
                    {"type": "Conv2d", "in_channels": 8, "out_channels": 16, "kernel_size": 3},
                    {"type": "BatchNorm2d", "num_features": 16},
                    {"type": "ReLU"},
                ],
            ),
            ("owner", [{"type": "AvgPool2d", "kernel_size": 2}, {"type": "Flatten"}]),
            (
                "claire",
                [{"type": "Linear", "in_features": 576, "out_features": 64}, {"type": "GELU"}],
            ),
            (
                "owner",
                [
                    {"type": "LayerNorm", "normalized_shape": 64},
                    {"type": "Linear", "in_features": 64, "out_features": 10},
                ],
            ),
        ],
    )


def pinned_job(directory: Path) -> Path:
    """Regression-style job: AdamW, MSE on one output, a pinned middle host that is also
    an owner, full batch then mini-batch owners."""
    owners = ["bob", "alice"]
    paths = {}
    for i, owner in enumerate(owners):
        rng = np.random.default_rng(7 + i)
        x = rng.normal(size=(60, 12)).astype(np.float32)
        y = (x[:, :3].sum(axis=1, keepdims=True) * 0.5).astype(np.float32)
        paths[owner] = directory / f"{owner}_reg.npz"
        np.savez(paths[owner], x=x, y=y)
    return write_config(
        directory / "pinned.toml",
        hosts=["alice", "bob"],
        data=paths,
        input_shape=[12],
        seed=3,
        training={
            "owners": owners,
            "rounds": 2,
            "epochs": 3,
            "batch_size": 16,
            "shuffle": True,
            "loss": "mse",
            "dataset": "train",
        },
        optimizer={"name": "adamw", "lr": 0.01, "weight_decay": 0.05, "betas": [0.8, 0.99]},
        segments=[
            (
                "owner",
                [{"type": "Linear", "in_features": 12, "out_features": 16}, {"type": "Tanh"}],
            ),
            (
                "alice",
                [
                    {"type": "Linear", "in_features": 16, "out_features": 16},
                    {"type": "BatchNorm1d", "num_features": 16},
                    {"type": "Sigmoid"},
                ],
            ),
            ("owner", [{"type": "Linear", "in_features": 16, "out_features": 1}]),
        ],
    )


def toy_reference_state(model: nn.Module, optimizer: dict, steps: int) -> dict[str, torch.Tensor]:
    """`model` trained in one process, full batch on the toy set with summed squared
    error, as the split runs of the seed-shaped tests train it."""
    opt = optim_specs.build_optimizer(model.parameters(), optimizer)
    x, y = (torch.from_numpy(a) for a in toy_arrays())
    for _ in range(steps):
        opt.zero_grad()
        compute_loss("sum_squared_error", model(x), y).backward()
        opt.step()
    return model.state_dict()


def splitfed_job(directory: Path, optimizer: dict) -> Path:
    """SplitFed: 3 owners with unequal row counts, 2 rounds, a middle host (bob) that is
    also an owner and holds two non-consecutive segments; test sets for the global
    model's accuracy per round."""
    owners = ["alice", "bob", "claire"]
    data = {}
    for i, (owner, rows) in enumerate(zip(owners, (40, 24, 56), strict=True)):
        rng = np.random.default_rng(200 + i)
        for name, n in (("train", rows), ("test", 16)):
            x = rng.random((n, 12), dtype=np.float32)
            y = rng.integers(0, 3, size=n).astype(np.int64)
            np.savez(directory / f"{owner}_{name}.npz", x=x, y=y)
        data[owner] = directory / f"{owner}_train.npz"
    path = write_config(
        directory / f"splitfed_{optimizer['name']}.toml",
        hosts=owners,
        data=data,
        input_shape=[12],
        training={
            "owners": owners,
            "schedule": "splitfed",
            "rounds": 2,
            "epochs": 2,
            "batch_size": 16,
            "shuffle": True,
            "loss": "cross_entropy",
            "dataset": "train",
            "test_dataset": "test",
        },
        optimizer=optimizer,
        segments=[
            (
                "owner",
                [{"type": "Linear", "in_features": 12, "out_features": 10}, {"type": "Tanh"}],
            ),
            ("bob", [{"type": "Linear", "in_features": 10, "out_features": 8}, {"type": "ReLU"}]),
            ("claire", [{"type": "Linear", "in_features": 8, "out_features": 8}, {"type": "Tanh"}]),
            ("bob", [{"type": "Linear", "in_features": 8, "out_features": 6}, {"type": "ReLU"}]),
            ("owner", [{"type": "Linear", "in_features": 6, "out_features": 3}]),
        ],
    )
    text = path.read_text()
    for owner in owners:  # each owner's test file beside its training file
        train = f'train = "{directory / f"{owner}_train.npz"}"'
        test = f'test = "{directory / f"{owner}_test.npz"}"'
        text = text.replace(train, f"{train}, {test}")
    path.write_text(text)
    return path
