#!/usr/bin/env bash
# The runs notebooks/ablations.ipynb compares, at tiny scale on the CPU: four stage-3 runs from one joint checkpoint.
#   mutual_forcing   ShortCut + DMD, self-rollout history (the method)
#   shortcut_only    DMD weight 0
#   dmd_only         ShortCut weight 0
#   teacher_forcing  real history
# Each logs eval/* for Few 1/2/4/8 and Multi 50 + CFG (notebooks/ablation_eval.yaml) halfway and at the end, to
# OUT/<run> with its checkpoints.
#   bash notebooks/make_ablation_runs.sh [STEPS=100] [JOINT_CKPT=runs/demo/joint/checkpoints/last.ckpt] [DATA=data/tiny] [OUT=runs/ablations] [CLIPS=4]
# CLIPS: held-out clips each evaluation generates (at least 2; fewer: quicker, wider intervals).
# The default joint checkpoint is the one `bash scripts/demo.sh` trains. Relative paths are from the repository root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
STEPS=${1:-100}; JOINT=${2:-runs/demo/joint/checkpoints/last.ckpt}; DATA=${3:-data/tiny}; OUT=${4:-runs/ablations}; CLIPS=${5:-4}
EVERY=$(( STEPS / 2 > 0 ? STEPS / 2 : 1 ))
[ -f "$JOINT" ] || { echo "no joint checkpoint at $JOINT: run bash scripts/demo.sh first, or pass one" >&2; exit 2; }
declare -A OVERRIDES=(
  [mutual_forcing]=""
  [shortcut_only]="--model.init_args.dmd_weight 0"
  [dmd_only]="--model.init_args.sc_weight 0"
  [teacher_forcing]="--model.init_args.history real"
)
for run in mutual_forcing shortcut_only dmd_only teacher_forcing; do
  # shellcheck disable=SC2086
  .venv/bin/lightning-mf fit --config configs/tiny/mutual_forcing.yaml --config notebooks/ablation_eval.yaml \
    --data.root "$DATA" --trainer.max_steps "$STEPS" --model.init_args.init_ckpt "$JOINT" \
    --trainer.logger.init_args.save_dir "$OUT" --trainer.logger.init_args.name "$run" \
    --trainer.callbacks.every_n_steps="$EVERY" --trainer.callbacks.num_clips="$CLIPS" ${OVERRIDES[$run]}
done
echo "runs in $OUT; open notebooks/ablations.ipynb (LMF_ABLATION_RUNS=$OUT if not runs/ablations)"
