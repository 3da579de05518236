#!/usr/bin/env bash
# The GPU check of the devices issue, on any machine with an NVIDIA GPU and this repo
# set up (bash scripts/setup.sh): a worker with --device cuda trains beside CPU
# workers, equal to one process (the seed job to 1e-5, an MLP with Adam to 1e-4,
# since CUDA's matrix kernels round differently), then samples/s with the middle
# segment on the GPU and on the CPU. `bash scripts/gpu_check.sh cpu` tries it here.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 scripts/gpu_check.py --device "${1:-cuda}"
