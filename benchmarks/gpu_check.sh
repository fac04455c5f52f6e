#!/usr/bin/env bash
# One CUDA GPU, a fresh clone: installs the project's venv if it is missing (`make` stamps it),
# then measures CLIP files -> DuckDB with GPU and CPU JPEG decoding, CLIP model-only at fp16 and
# bf16, and the transformers VLM stand-in on CUDA, within 8 minutes. Prints a table, writes
# data/bench/gpu_check.json. Extra arguments go to benchmarks/gpu_check.py (see --help).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v nvidia-smi >/dev/null 2>&1; then
    echo "gpu_check: nvidia-smi not found: this check needs a machine with a CUDA GPU" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
make .venv/.installed
# The measurement alone is held to 8 minutes; the install above is not counted.
timeout 480 .venv/bin/python benchmarks/gpu_check.py --out data/bench/gpu_check.json "$@"
