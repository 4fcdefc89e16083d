#!/usr/bin/env bash
# Mask decoding against propagation with the same keys: the released code's mask stage, in which
# E is frozen (`torch.no_grad()`, `.eval()`) and only V and D learn, from E's pseudo masks.
# E is (a)'s checkpoint of step E_STEP (experiments/maskvos_full_davis2016.sh), frozen with its
# BatchNorm statistics; V and D train for HEAD_STEPS steps of L_seg alone (no correspondence
# term), pseudo masks clustered once with that E. So the keys are (a)'s: the decoder's J&F
# against (a)'s crw J&F tells whether mask decoding adds anything over propagating the same
# keys, with more training than (a) had, not less.
#
#   bash experiments/maskvos_frozen_e.sh W
#   (W: a maskvos_full_davis2016.sh workdir with W/corr/trained/checkpoints/$E_STEP; env as that
#   script: CROP MIN_SHORT MAX_SHORT BATCH MIX WORKERS LR SHORT ROUNDS DAVIS STAGE, plus E_STEP
#   (default 1000) and HEAD_STEPS (default 600)). Writes W/frozen_e; its J&F is
#   W/frozen_e/eval_results/step_$HEAD_STEPS.
set -euo pipefail
cd "$(dirname "$0")/.."
trap 'exit 143' TERM
W=${1:?usage: maskvos_frozen_e.sh W}
E_STEP=${E_STEP:-1000}
HEAD_STEPS=${HEAD_STEPS:-600}
CORR_STEPS=$E_STEP
STEPS=$((E_STEP + HEAD_STEPS))
UPDATE=0  # E does not change, so neither do its clusters
source experiments/maskvos_full_args.sh

frozen=(
  "${full[@]}"
  --config.optim.frozen="('encoder',)"
  --config.loss.short_weight=0 --config.loss.long_weight=0
)
if [[ "$STAGE" != eval ]]; then
  python -m vosjax.main "${frozen[@]}" --workdir="$W/frozen_e"
fi
if [[ "$STAGE" != train ]]; then
  python -m vosjax.main "${frozen[@]}" --workdir="$W/frozen_e" --mode=eval --step="$HEAD_STEPS"
  echo "J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay"
  echo "frozen E, mask decoding: $(sed -n 2p "$W/frozen_e/eval_results/step_$HEAD_STEPS/global_results-val.csv")"
fi
