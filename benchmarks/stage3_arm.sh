#!/usr/bin/env bash
# One stage-3 arm of docs/benchmarks.md ("Stage 3's drift ...", "What stage 3's drift is"): N minutes of
# configs/tiny/mutual_forcing.yaml from the reference run's stage-2 checkpoint (bash benchmarks/reference.sh first),
# seed 0, alone on the CPU, with extra CLI options; then Few 4 and Multi 50 (CFG 1) on 16 held-out clips, one seed.
#   bash benchmarks/stage3_arm.sh NAME [--minutes 4] [--runs runs/reference] [--data data/reference] [-- OPTIONS...]
#   e.g. bash benchmarks/stage3_arm.sh sd03 -- --model.init_args.sd_weight 0.3
# Writes runs/arms/NAME/ (checkpoints, TensorBoard) and runs/arms/NAME-eval.json.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
name=${1:?usage: stage3_arm.sh NAME [--minutes M] [--runs DIR] [--data DIR] [-- OPTIONS...]}
shift
minutes=4 runs=runs/reference data=data/reference
while [[ $# -gt 0 ]]; do
  case $1 in
    --minutes) minutes=$2; shift 2 ;;
    --runs) runs=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "stage3_arm.sh: unknown option $1 (put training options after --)" >&2; exit 2 ;;
  esac
done
init="$runs/joint/checkpoints/last.ckpt"
[[ -f $init ]] || { echo "stage3_arm.sh: no stage-2 checkpoint at $init; run bash benchmarks/reference.sh first" >&2; exit 1; }
out=runs/arms/$name
[[ -e $out ]] && { echo "stage3_arm.sh: $out exists; remove it or pick another name" >&2; exit 1; }
mkdir -p "$out"
cat > "$out/overlay.yaml" <<YAML
seed_everything: 0
model: {init_args: {init_ckpt: $init}}
trainer:
  max_steps: 10000000
  max_time: "00:00:$(printf %02d "$minutes"):00"
  limit_val_batches: 0
  logger:
    class_path: lightning.pytorch.loggers.TensorBoardLogger
    init_args: {save_dir: runs/arms, name: $name, version: "", default_hp_metric: false}
  callbacks:
  - class_path: lightning_mf.callbacks.ModelCheckpoint
    init_args: {dirpath: $out/checkpoints, save_last: true, save_top_k: -1}
  - class_path: lightning_mf.callbacks.TimedCheckpoint
    init_args: {dirpath: $out/checkpoints, every_seconds: 60.0}
YAML
.venv/bin/python -m lightning_mf fit --config configs/tiny/mutual_forcing.yaml --config "$out/overlay.yaml" \
  --data.root "$data" "$@" > "$out/fit.log" 2>&1
.venv/bin/python -m lightning_mf evaluate --ckpt "$out/checkpoints/last.ckpt" --data "$data" --modes "[few4, multi50]" \
  --num_clips 16 --cfg_scale 1 --bootstraps 0 --out "runs/arms/$name-eval.json" > "$out/eval.log" 2>&1
echo "stage3_arm.sh: $name done: runs/arms/$name-eval.json"
