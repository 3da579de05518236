"""One set of workers serves two runs at once without mixing their state."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from safetensors.torch import load_file

from splitnn.orchestrator.config import load_config
from splitnn.orchestrator.reference import max_weight_difference, train_reference
from splitnn.orchestrator.run import connected_workers
from splitnn.orchestrator.trainer import Trainer

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def variant(tmp_path: Path) -> Path:
    text = (ROOT / "examples" / "seed.toml").read_text()
    text = text.replace("seed = 1", "seed = 5").replace("lr = 0.2", "lr = 0.5")
    text = text.replace('owners = ["alice", "bob", "claire"]', 'owners = ["claire", "alice"]')
    text = text.replace("epochs = 300", "epochs = 120")
    path = tmp_path / "variant.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("relay", [False, True], ids=["owner-drives", "relay"])
def test_two_concurrent_runs_on_the_same_workers_equal_their_references(tmp_path, relay):
    configs = [load_config(ROOT / "examples" / "seed.toml"), load_config(variant(tmp_path))]
    errors = []
    with connected_workers(configs[0], local=True) as clients:

        def run(i):
            try:
                out = tmp_path / f"run{i}"
                Trainer(configs[i], clients_for[i], out, show_progress=False, relay=relay).run()
            except Exception as err:  # surfaced below
                errors.append(err)

        # Each run has its own client objects (its own streams) to the same workers.
        from splitnn.transport.client import WorkerClient

        # The same credentials (local workers get per-run tokens): another stream each.
        clients_for = [
            clients,
            {n: WorkerClient(n, c.address, metadata=c.metadata) for n, c in clients.items()},
        ]
        threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        for c in clients_for[1].values():
            c.close()
    assert not errors, errors
    for i, config in enumerate(configs):
        reference, _ = train_reference(config)
        split = load_file(str(tmp_path / f"run{i}" / "model.safetensors"))
        assert max_weight_difference(split, reference.state_dict()) <= 1e-5
