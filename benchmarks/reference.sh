#!/usr/bin/env bash
# The reference experiment of issue 16 on 2 CPU cores (about 2 hours): shards -> stage 1 (audio, video) -> stage 2 ->
# stage 3 for Mutual Forcing and the three baselines at equal wall-clock (Mutual Forcing and DMD with self-forcing
# with 2 training seeds) -> learning curves, the final table (3 generation seeds; Multi mode 1), 10 s streams -> the section
# "Reference experiment" of docs/benchmarks.md with its PNG curves, and runs/reference/reference.json for
# notebooks/ablations.ipynb. Resumable: re-running skips finished stages and evaluations.
#   bash benchmarks/reference.sh [--s1-video-steps 5400] [--s1-audio-steps 1200] [--s2-steps 800] [--s3-minutes 4]
#                                [--train-clips 384] [--clips 32] [--multi-seeds 1] [--runs runs/reference] [--data data/reference]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/venv.sh
exec .venv/bin/python benchmarks/reference.py run --write docs/benchmarks.md "$@"
