#!/usr/bin/env bash
# A control for experiments/maskvos_full_davis2016.sh (b): the same 200 joint steps, but the
# DAVIS videos' pseudo masks are replaced by their annotations (not self-supervised). It tells
# whether mask-embedded learning and mask decoding beat propagation when the masks they learn
# from are objects, i.e. whether (b)'s gap comes from the pseudo masks or from the rest.
#
#   bash experiments/maskvos_gt_control.sh W
#   (W: a finished maskvos_full_davis2016.sh workdir: W/corr/trained/checkpoints/$CORR_STEPS and
#   W/full/pseudo_masks/step_0; env as that script: STEPS CORR_STEPS CROP BATCH MIX WORKERS LR
#   SHORT). Writes W/gt_control; its J&F is W/gt_control/eval_results/step_<n>.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:?usage: maskvos_gt_control.sh W}
STEPS=${STEPS:-1000}
CORR_STEPS=${CORR_STEPS:-800}
CROP=${CROP:-128}
BATCH=${BATCH:-8}
MIX=${MIX:-0.25}
WORKERS=${WORKERS:-1}
LR=${LR:-1e-4}
SHORT=${SHORT:-480}
export PYTHONPATH=.

# (b)'s first pseudo-mask set (the step-800 encoder's clusters) with annotations for DAVIS.
if [[ ! -f "$W/gt_control/pseudo_masks/step_0/meta.json" ]]; then
  rm -rf "$W/gt_control/pseudo_masks/step_0"
  mkdir -p "$W/gt_control/pseudo_masks"
  python experiments/maskvos_pseudo_masks_vs_gt.py replace \
    "$W/full/pseudo_masks/step_0" "$W/gt_control/pseudo_masks/step_0"
fi
# (b)'s command, clustering once (update_every=0), so the control set is never replaced.
python -m vosjax.main --config=configs/maskvos/davis2016.py --workdir="$W/gt_control" \
  --config.batch_size="$BATCH" \
  --config.data.crop="$CROP" --config.data.min_short="$CROP" \
  --config.data.synthetic_mix="$MIX" --config.data.num_workers="$WORKERS" \
  --config.init_from.workdir="$W/corr/trained" --config.init_from.step="$CORR_STEPS" \
  --config.init_from.into=encoder \
  --config.num_train_steps=$((STEPS - CORR_STEPS)) \
  --config.schedule.warmup_steps=0 --config.schedule.update_every=0 \
  --config.optim.schedule=constant --config.optim.lr="$LR" \
  --config.checkpoint_every_steps=50 --config.log_every_steps=10 --config.eval_every_steps=0 \
  --config.eval.decoding.short_side="$SHORT"
