#!/usr/bin/env bash
# The main job on the embedded default: the whole method on tiny synthetic data, on the CPU (about 7 minutes on 2
# cores): shards -> stage 1 (video, audio) -> stage 2 (joint) -> Mutual Forcing -> evaluation (Few 4 vs Multi 50)
# -> a generated mp4 with audio, longer than the training clips. Re-running reuses finished stages.
# Extra arguments go to `lightning-mf pipeline` (e.g. --restart true, --steps "[300, 300, 300, 100]").
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/venv.sh
exec .venv/bin/lightning-mf pipeline "$@"
