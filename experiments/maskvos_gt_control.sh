#!/usr/bin/env bash
# A control for experiments/maskvos_full_davis2016.sh (b): the same 200 joint steps, but the
# DAVIS videos' pseudo masks are replaced by their annotations (not self-supervised). It tells
# whether mask-embedded learning and mask decoding beat propagation when the masks they learn
# from are objects, i.e. whether (b)'s gap comes from the pseudo masks or from the rest.
#
#   bash experiments/maskvos_gt_control.sh W
#   (W: a finished maskvos_full_davis2016.sh workdir: W/corr/trained/checkpoints/$CORR_STEPS and
#   W/full/pseudo_masks/step_0; env as that script: STEPS CORR_STEPS CROP BATCH MIX WORKERS LR
#   SHORT ROUNDS DAVIS; UPDATE is 0). Writes W/gt_control; its J&F is
#   W/gt_control/eval_results/step_<n>.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:?usage: maskvos_gt_control.sh W}
UPDATE=0  # cluster once, so the control set is never replaced
source experiments/maskvos_full_args.sh

# (b)'s first pseudo-mask set (the step-800 encoder's clusters) with annotations for DAVIS.
if [[ ! -f "$W/gt_control/pseudo_masks/step_0/meta.json" ]]; then
  rm -rf "$W/gt_control/pseudo_masks/step_0"
  mkdir -p "$W/gt_control/pseudo_masks"
  python experiments/maskvos_pseudo_masks_vs_gt.py replace \
    "$W/full/pseudo_masks/step_0" "$W/gt_control/pseudo_masks/step_0"
fi
# (b)'s joint run on the control set.
python -m vosjax.main "${full[@]}" --workdir="$W/gt_control"
python -m vosjax.main "${full[@]}" --workdir="$W/gt_control" --mode=eval \
  --step=$((STEPS - CORR_STEPS))
