"""`splitnn demo`: the notebook's job on three local workers, checked against plain PyTorch."""

from __future__ import annotations

from pathlib import Path

import torch

from splitnn.model.warm import warm_up_in_background
from splitnn.orchestrator.config import load_config
from splitnn.orchestrator.reference import (
    build_model,
    load_model_file,
    max_weight_difference,
    owner_dataset,
    train_reference,
)
from splitnn.orchestrator.run import connected_workers
from splitnn.orchestrator.trainer import Trainer
from splitnn.training.pipeline import Pipeline, plan_stages


def run_demo(config_path: Path, out_dir: Path, started=None) -> int:
    """Train the seed job split over alice, bob and claire, print as the notebook did;
    `started`: its local workers, if launched already (a LocalStart)."""
    warm_up_in_background()  # the reference's optimizer, later, needs what this imports
    config = load_config(config_path)
    print(f"splitnn demo: {config.name} job from {config_path}")
    print("  chain: " + " -> ".join(s.host for s in config.segments))
    print(f"  owners train in turn: {', '.join(config.owners)}; {config.epochs} epochs each\n")
    _print_first_outputs(config)

    def on_epoch(record):
        # The notebook counts epochs from 0 and prints every 30th (cell 9).
        epoch = record["epoch"] - 1
        if epoch % 30 == 0:
            owner, loss = record["owner"], record["loss"]
            print(f"  {owner:>7}  Epoch: {epoch}/{config.epochs}  Loss: {loss:.4f}")

    # The same training in one process, first: the local workers are still starting
    # (they import torch on the other core), so it costs the demo next to nothing here.
    reference, _ = train_reference(config)
    with connected_workers(config, local=True, started=started) as clients:
        trainer = Trainer(config, clients, out_dir, on_epoch=on_epoch, show_progress=False)
        report = trainer.run(keep_segments=True)
        owner = config.owners[-1]
        labels, outputs = _predictions(config, clients, trainer, owner)
        trainer.cleanup()

    print(f"\nFinal Predictions on the 16 rows of {owner}'s data (label -> prediction):")
    for start in range(0, len(labels), 8):
        row = labels[start : start + 8], outputs[start : start + 8]
        print("  " + "  ".join(f"{int(y)} -> {p:.4f}" for y, p in zip(*row, strict=True)))

    split = load_model_file(out_dir / "model.safetensors")
    diff = max_weight_difference(split, reference.state_dict())
    print(f"\nmax |weight difference| vs the same training in one process: {diff:.3g}")
    print(f"wall time {report['wall_time_s']:.1f}s; outputs in {out_dir}/")
    return 0 if diff <= 1e-5 else 1


def first_segment_outputs(config) -> torch.Tensor:
    """Segment 0's output on the first owner's rows before training: what the
    notebook's cell 6 printed after `torch.manual_seed(1)`."""
    model = build_model(config)
    x = owner_dataset(config, config.owners[0], config.dataset).x
    with torch.no_grad():
        return model[0](x)


def _print_first_outputs(config) -> None:
    print("first segment's output on the 16 rows before training (the notebook's cell 6):")
    for row in first_segment_outputs(config).tolist():
        print("  [" + ", ".join(f"{v:7.4f}" for v in row) + "]")
    print()


def _predictions(config, clients, trainer, owner):
    """The trained chain's outputs on every row of `owner`'s data (nothing kept)."""
    dataset = owner_dataset(config, owner, config.dataset)
    pipeline = Pipeline(clients, trainer.run_id, plan_stages(config.placement(owner)), config.loss)
    outputs = pipeline.predict(0, config.dataset, list(range(dataset.rows))).reshape(-1)
    return dataset.y.reshape(-1).tolist(), outputs.tolist()
