"""The same training in one process with plain PyTorch: the yardstick for equivalence.

It walks the same schedule (owners, rounds, epochs, batches) on the same data,
with one nn.Sequential of all segments and one optimizer over all parameters.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from splitnn.data.datasets import TOY_NAME, Dataset, builtin, load_npz
from splitnn.model import layers as layer_specs
from splitnn.model import optim as optim_specs
from splitnn.model.losses import compute_loss, micro_batch_scale, split_rows
from splitnn.orchestrator.config import Config
from splitnn.training import schedule


def owner_dataset(config: Config, owner: str, name: str) -> Dataset:
    """The dataset an owner's worker would serve under `name` (file or built-in)."""
    path = config.workers[owner].data.get(name)
    if path is not None:
        return load_npz(name, path)
    if name == TOY_NAME:
        return builtin(TOY_NAME)
    raise FileNotFoundError(f"no file for dataset {name!r} of {owner} in {config.path}")


def build_model(config: Config) -> nn.Sequential:
    """All segments in one nn.Sequential, built after manual_seed as the split run does."""
    torch.manual_seed(config.seed)
    model = nn.Sequential(
        *[layer_specs.build_segment(s.layers, f"segments[{s.index}]") for s in config.segments]
    )
    if config.initial is not None:  # the Python API's start weights
        state = {f"{i}.{k[6:]}": v for i, s in enumerate(config.initial) for k, v in s.items()}
        model.load_state_dict(state)
    return model


def train_reference(config: Config, threads: int | None = 1) -> tuple[nn.Sequential, list[dict]]:
    """Train the config in this process; return the model and per-epoch losses."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        if config.schedule == "splitfed":
            return _train_splitfed(config)
        model = build_model(config)
        optimizer = optim_specs.build_optimizer(model.parameters(), config.optimizer)
        data = {o: owner_dataset(config, o, config.dataset) for o in set(config.owners)}
        history = []
        for turn in schedule.turns(config.owners, config.rounds):
            dataset = data[turn.owner]
            for epoch in range(config.epochs):
                losses = []
                for rows in schedule.batches(
                    config.seed, turn.index, epoch, dataset.rows, config.batch_size, config.shuffle
                ):
                    model.train()
                    optimizer.zero_grad(set_to_none=True)
                    losses.append(_accumulate(model, config, dataset, rows))
                    optimizer.step()
                history.append(
                    {"owner": turn.owner, "epoch": epoch + 1, "loss": sum(losses) / len(losses)}
                )
        return model, history
    finally:
        torch.set_num_threads(previous)


def _train_splitfed(config: Config) -> tuple[nn.Sequential, list[dict]]:
    """SplitFed v1 as orchestrator/splitfed.py states it, one owner after another: each
    owner's copy of the whole model starts every round from the global weights and keeps
    its own optimizer; the round's global weights are the copies' mean weighted by rows
    (integer buffers: the first owner's)."""
    from splitnn.orchestrator.splitfed import average

    owners = list(dict.fromkeys(config.owners))
    data = {o: owner_dataset(config, o, config.dataset) for o in owners}
    global_model = build_model(config)
    copies = {o: build_model(config) for o in owners}
    optimizers = {
        o: optim_specs.build_optimizer(m.parameters(), config.optimizer) for o, m in copies.items()
    }
    history = []
    for r in range(config.rounds):
        for k, owner in enumerate(owners):
            model, optimizer, dataset = copies[owner], optimizers[owner], data[owner]
            model.load_state_dict(global_model.state_dict())
            for epoch in range(config.epochs):
                losses = []
                for rows in schedule.batches(
                    config.seed,
                    r * len(owners) + k,
                    epoch,
                    dataset.rows,
                    config.batch_size,
                    config.shuffle,
                ):
                    model.train()
                    optimizer.zero_grad(set_to_none=True)
                    losses.append(_accumulate(model, config, dataset, rows))
                    optimizer.step()
                history.append(
                    {"owner": owner, "epoch": epoch + 1, "loss": sum(losses) / len(losses)}
                )
        states = [copies[o].state_dict() for o in owners]
        global_model.load_state_dict(average(states, [data[o].rows for o in owners]))
    return global_model, history


def _accumulate(model: nn.Module, config: Config, dataset: Dataset, rows: list[int]) -> float:
    """Gradients of one batch, summed over its micro-batches (each backpropagating its
    share of a mean loss); returns the batch loss. One micro-batch: plain training."""
    if config.micro_batches <= 1 or len(rows) <= 1:
        x, y = dataset.take(rows)
        loss = compute_loss(config.loss, model(x), y)
        loss.backward()
        return loss.item()
    total = 0.0
    for part in split_rows(rows, config.micro_batches):
        x, y = dataset.take(part)
        scale = micro_batch_scale(config.loss, len(part), len(rows))
        loss = compute_loss(config.loss, model(x), y)
        (loss * scale).backward()
        total += loss.item() * scale
    return total


def max_weight_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """Largest absolute difference between two state dicts with the same keys."""
    if set(a) != set(b):
        raise KeyError(f"state keys differ: {sorted(set(a) ^ set(b))[:5]}")
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a) if a else 0.0


def load_model_file(path: Path) -> dict[str, torch.Tensor]:
    """A model.safetensors written by a run."""
    from safetensors.torch import load_file

    return load_file(str(path))
