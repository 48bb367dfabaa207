#!/usr/bin/env bash
# The headline pipeline on the tiny synthetic preset (CPU): data -> stage 1 (video, audio) -> stage 2 (joint) ->
# stage 3 (Mutual Forcing and the three baselines, all from the same stage-2 checkpoint) -> evaluation.
# Step counts are arguments so the same script runs a quick check or a longer budget:
#   bash benchmarks/headline.sh [STAGE1_STEPS=1500] [JOINT_STEPS=1500] [STAGE3_STEPS=150]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
S1=${1:-1500}; S2=${2:-1500}; S3=${3:-150}
bash scripts/venv.sh
MF=".venv/bin/lightning-mf"
# 256 training clips and 64 held out: the evaluation generates from 32 whole clips and scores 32 others as its
# reference rows (issue 15: power)
$MF shards synthetic --preset tiny --num-clips 320 --val-fraction 0.2 --out data/bench --overwrite true
export OMP_NUM_THREADS=1  # two runs side by side on 2 cores
$MF fit --config configs/tiny/video_pretrain.yaml --data.root data/bench --trainer.max_steps "$S1" &
$MF fit --config configs/tiny/audio_pretrain.yaml --data.root data/bench --trainer.max_steps "$S1" &
wait
OMP_NUM_THREADS=2 $MF fit --config configs/tiny/joint.yaml --data.root data/bench --trainer.max_steps "$S2"
for pair in "mutual_forcing baseline_dmd_sf" "baseline_shortcut_tf baseline_dmd_tf"; do
  for stage in $pair; do
    $MF fit --config "configs/tiny/$stage.yaml" --data.root data/bench --trainer.max_steps "$S3" &
  done
  wait
done
unset OMP_NUM_THREADS
$MF fit --config configs/tiny/syncnet.yaml --data.root data/bench
(cd benchmarks && ../.venv/bin/python mutual_forcing.py headline --runs ../runs/tiny --data ../data/bench --seeds 0 1 2 \
  --syncnet ../runs/tiny/syncnet/checkpoints/last.ckpt --write ../docs/benchmarks.md)
