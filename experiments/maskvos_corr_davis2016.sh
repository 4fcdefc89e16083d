#!/usr/bin/env bash
# Does Mask-VOS correspondence learning learn? J&F on the 8 DAVIS2016 480p val sequences of
#   (a) corr_r18 trained on the DAVIS2016 240p train sequences (+ MIX synthetic clips) for STEPS
#       steps,
#   (b) the same network at random initialisation (one step at learning rate 0: only the
#       BatchNorm statistics see data),
#   (c) the raw-pixel baseline (configs/propagation/lab_pixels.py, crw preset).
# All three use the crw propagation preset and the official evaluation.
#
#   bash experiments/maskvos_corr_davis2016.sh [WORKDIR]
#   (env: STEPS CROP BATCH MIX WORKERS CKPT PIXELS RANDOM_INIT DAVIS STAGE;
#   STAGE=train trains (a) only, STAGE=eval evaluates (a)'s checkpoint of step STEPS and runs
#   (b) and (c); the default, all, does both)
#
# Numbers, budget and machine go into experiments/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
# On SIGTERM (a preemption, `timeout`): bash runs this once the running command has saved
# its checkpoint and exited, so no later step starts.
trap 'exit 143' TERM
W=${1:-/tmp/maskvos_corr_davis2016}
STEPS=${STEPS:-20000}
CROP=${CROP:-256}
BATCH=${BATCH:-16}
MIX=${MIX:-0.25}          # fraction of synthetic clips (vosjax_synthetic/small)
WORKERS=${WORKERS:-4}     # grain worker processes
CKPT=${CKPT:-1000}        # checkpoint every CKPT steps
PIXELS=${PIXELS:-1}       # 0: skip (c), whose number does not depend on training
RANDOM_INIT=${RANDOM_INIT:-1}  # 0: skip (b), whose number does not depend on training
DAVIS=${DAVIS:-../shared/data/DAVIS2016}
STAGE=${STAGE:-all}       # train | eval | all

common=(
  --config=configs/maskvos/corr_r18.py
  --config.batch_size="$BATCH"
  --config.data.crop="$CROP" --config.data.min_short="$CROP"
  --config.data.path="$DAVIS" --config.data.imageset=2016/train --config.data.resolution=240p
  --config.data.synthetic_mix="$MIX" --config.data.num_workers="$WORKERS"
  --config.eval.davis_root="$DAVIS" --config.eval.imageset=2016/val --config.eval.resolution=480p
  --config.eval_every_steps=0
)

# (a) trained (the same command resumes after an interruption), then evaluated.
trained=(
  --workdir="$W/trained"
  --config.num_train_steps="$STEPS" --config.optim.step_every=$((STEPS * 2 / 5))
  --config.checkpoint_every_steps="$CKPT"
)
if [[ "$STAGE" != eval ]]; then
  python -m vosjax.main "${common[@]}" "${trained[@]}" --config.eval_every_steps=-1
fi
if [[ "$STAGE" == train ]]; then
  exit 0
fi
python -m vosjax.main "${common[@]}" "${trained[@]}" --mode=eval --step="$STEPS"

# (b) random initialisation.
runs=(trained)
if [[ "$RANDOM_INIT" != 0 ]]; then
python -m vosjax.main "${common[@]}" --workdir="$W/random_init" \
  --config.num_train_steps=1 --config.optim.lr=0.0
runs+=(random_init)
fi

# (c) raw pixels.
if [[ "$PIXELS" != 0 ]]; then
python -m vosjax.evaluate --config=configs/propagation/lab_pixels.py:crw \
  --config.data.davis_root="$DAVIS" --config.data.imageset=2016/val --workdir="$W/pixels"
fi

for run in "${runs[@]}"; do
  step=$(ls "$W/$run/eval_results" | sort -t_ -k2 -n | tail -1)
  echo "$run ($step): $(sed -n 2p "$W/$run/eval_results/$step/global_results-val.csv")"
done
if [[ "$PIXELS" != 0 ]]; then
  echo "pixels: $(sed -n 2p "$W/pixels/results/global_results-val.csv")"
fi
