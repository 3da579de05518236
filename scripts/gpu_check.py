"""The devices issue's GPU check: a CUDA worker trains with CPU workers, equal to one
process; then samples/s with the middle segment on the GPU and on the CPU.

    python scripts/gpu_check.py [--device cuda]      (scripts/gpu_check.sh runs it)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from splitnn.orchestrator.config import load_config
from splitnn.orchestrator.local_start import LocalStart
from splitnn.orchestrator.reference import load_model_file, max_weight_difference, train_reference
from splitnn.orchestrator.run import train

ROOT = Path(__file__).resolve().parent.parent
MLP = """
name = "gpu_mlp"
seed = 0
input_shape = [784]
[workers]
alice = {{ data = {{ train = "{data}" }} }}
bob = {{}}
[training]
owners = ["alice"]
epochs = {epochs}
batch_size = 1024
shuffle = true
loss = "cross_entropy"
dataset = "train"
[optimizer]
name = "adam"
lr = 0.001
[[segments]]
host = "owner"
layers = [{{ type = "Linear", in_features = 784, out_features = 2048 }}, {{ type = "ReLU" }}]
[[segments]]
host = "bob"
layers = [
  {{ type = "Linear", in_features = 2048, out_features = 2048 }}, {{ type = "ReLU" }},
  {{ type = "Linear", in_features = 2048, out_features = 2048 }}, {{ type = "ReLU" }},
]
[[segments]]
host = "owner"
layers = [{{ type = "Linear", in_features = 2048, out_features = 10 }}]
"""


def run(config_path: Path, out: Path, device: str) -> dict:
    config = load_config(config_path)
    with LocalStart(config.workers, worker_args={"bob": ["--device", device]}) as started:
        train(config, out, local=True, show_progress=False, started=started)
    return json.loads((out / "report.json").read_text())


def check(config_path: Path, out: Path, device: str) -> float:
    run(config_path, out, device)
    reference, _ = train_reference(load_config(config_path))
    return max_weight_difference(load_model_file(out / "model.safetensors"), reference.state_dict())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--device", default="cuda")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        seed = check(ROOT / "examples" / "seed.toml", tmp / "seed", args.device)
        print(f"seed job, bob's segment on {args.device}: max |diff| {seed:.3g}")
        rng = np.random.default_rng(0)
        data = tmp / "mlp.npz"
        np.savez(data, x=rng.random((8192, 784), dtype=np.float32), y=rng.integers(0, 10, 8192))
        small = tmp / "mlp_small.toml"
        small.write_text(MLP.format(data=data, epochs=1))
        mlp = check(small, tmp / "mlp", args.device)
        print(f"MLP 784-2048-2048-2048-10, Adam, bob on {args.device}: max |diff| {mlp:.3g}")
        big = tmp / "mlp_big.toml"
        big.write_text(MLP.format(data=data, epochs=4))
        for device in dict.fromkeys([args.device, "cpu"]):
            start = time.perf_counter()
            report = run(big, tmp / f"speed_{device}", device)
            print(
                f"bob on {device}: {report['samples_per_s']} samples/s "
                f"({time.perf_counter() - start:.1f} s with start-up)"
            )
        ok = seed <= 1e-5 and mlp <= 1e-4
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
