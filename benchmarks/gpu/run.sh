#!/usr/bin/env bash
# The GPU buckets benchmark (issue #31) on a machine with one CUDA GPU. Not run on a GPU yet.
#
#   benchmarks/gpu/run.sh              # writes $OUT/gpu_buckets.json (default: benchmarks/gpu/out)
#   benchmarks/gpu/run.sh --dry-run    # CPU, tiny model, a few lengths
#
# Needs torch (a CUDA build), jax (with its CUDA plugin), transformers and numpy; this
# repository goes on PYTHONPATH. Nothing is downloaded. Sized to finish in under 6
# minutes on an H200: the script keeps a 320 s budget and skips (with a note) a section
# that would not fit; `timeout` is the backstop, and the JSON is rewritten after every
# section, so a run cut short keeps what it measured.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"
export OUT="${OUT:-$HERE/out}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false   # jax must leave the GPU's memory to torch
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-$(mktemp -d)}"  # cold compiles, measured
mkdir -p "$OUT"
PY="${PYTHON:-$(command -v python3 || command -v python)}"
if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true; fi
timeout 350 "$PY" "$HERE/bench_gpu.py" "$@" 2>&1 | tee "$OUT/log.txt"
