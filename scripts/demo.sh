#!/usr/bin/env bash
# The main job on the embedded default: tiny synthetic shards, then one decoded batch through the DataModule.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/venv.sh
.venv/bin/lightning-mf shards synthetic --preset tiny --num-clips 64 --out data/tiny --overwrite true
.venv/bin/lightning-mf shards inspect --data data/tiny
