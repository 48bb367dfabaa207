#!/usr/bin/env bash
# The GPU check (issue 17) in one command: install what the device image lacks, check versions, measure, report.
#
#   bash benchmarks/gpu.sh --fetch-wheels   # here, with network: wheels of what the image lacks -> benchmarks/wheels
#   bash benchmarks/gpu.sh                  # on the GPU machine (no network: carry benchmarks/wheels there)
#   bash benchmarks/gpu.sh --cpu --tiny     # the rehearsal on a CPU, seconds (run by tests/test_gpu_benchmark.py)
#
# The device image has Python 3.12 with torch, torchvision, torchaudio and lightning, but not jsonargparse, webdataset,
# or av (soundfile is not needed). Writes the "GPU" section of docs/benchmarks.md (or --write FILE) and, when $OUT is set (the device
# runner's output folder), copies the section and the JSON rows there. Other arguments go to benchmarks/gpu.py.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
MISSING=(jsonargparse webdataset av)

if [ "${1:-}" = "--fetch-wheels" ]; then
    # the device's interpreter: CPython 3.12 on x86_64 Linux (no sdists: nothing is built there)
    "$PY" -m pip download --only-binary=:all: --python-version 3.12 --platform manylinux2014_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 -d benchmarks/wheels \
        "jsonargparse[signatures]" webdataset av
    du -sh benchmarks/wheels
    exit 0
fi

if ! "$PY" -c "import jsonargparse, webdataset, av" 2>/dev/null; then
    if [ ! -d benchmarks/wheels ]; then
        echo "gpu.sh: ${MISSING[*]} missing and no benchmarks/wheels (run: bash benchmarks/gpu.sh --fetch-wheels, then carry it)" >&2
        exit 1
    fi
    "$PY" -m pip install --quiet --no-index --find-links benchmarks/wheels "jsonargparse[signatures]" webdataset av
fi

"$PY" - <<'PY'
import importlib.metadata as md
import sys

import torch

names = ["torch", "torchvision", "torchaudio", "lightning", "torchmetrics", "jsonargparse", "webdataset", "av"]
print("python", sys.version.split()[0], "|", " ".join(f"{n} {md.version(n)}" for n in names))
major, minor = (int(x) for x in torch.__version__.split(".")[:2])
if (major, minor) < (2, 5):
    sys.exit(f"gpu.sh: torch {torch.__version__} has no flex attention; need >= 2.5")
print("cuda:", torch.cuda.is_available() and torch.cuda.get_device_name())
PY

ARGS=("$@")
case " $* " in *" --write "*) ;; *) ARGS+=(--write docs/benchmarks.md) ;; esac
JSON=${OUT:+$OUT/gpu.json}
PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" "$PY" benchmarks/gpu.py "${ARGS[@]}" ${JSON:+--json "$JSON"}
if [ -n "${OUT:-}" ]; then
    cp docs/benchmarks.md "$OUT/benchmarks.md"
fi
