#!/usr/bin/env bash
# Does the mask embedding help? (the paper's Table 4f: +5.7 J&F over correspondence alone)
# Same training budget, DAVIS2016 240p train sequences + MIX synthetic clips, J&F on the 8
# DAVIS2016 480p val sequences (official evaluation):
#   (a) correspondence learning only for STEPS steps (experiments/maskvos_corr_davis2016.sh),
#       its keys propagated with the crw preset;
#   (b) the full method (configs/maskvos/davis2016.py): the first CORR_STEPS steps are (a)'s
#       (its checkpoint of step CORR_STEPS initialises E, as the released code starts its mask
#       stage from a correspondence checkpoint), then STEPS - CORR_STEPS steps of
#       L_seg + L_short + L_long with pseudo masks re-clustered every UPDATE steps, evaluated
#       with mask decoding; (b') the same network's keys with crw propagation.
#
#   bash experiments/maskvos_full_davis2016.sh [WORKDIR]
#   (env: STEPS CORR_STEPS UPDATE CROP MIN_SHORT MAX_SHORT BATCH MIX WORKERS LR SHORT ROUNDS
#   DAVIS STAGE; (a) reuses $WORKDIR/corr if it is there. STAGE=train trains (a) and (b) and
#   evaluates nothing (for a machine without the val frames),
#   STAGE=eval evaluates their checkpoints of step STEPS and STEPS - CORR_STEPS; default all)
#
# Numbers, budget and machine go into experiments/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
# On SIGTERM (a preemption, `timeout`): bash runs this once the running command has saved
# its checkpoint and exited, so no later step starts.
trap 'exit 143' TERM
W=${1:-/tmp/maskvos_full_davis2016}
source experiments/maskvos_full_args.sh

n=$((STEPS - CORR_STEPS))
# (a) keeps its checkpoints of steps CORR_STEPS and STEPS (every n steps, the last 3 kept).
if (( n <= 0 || CORR_STEPS % n )); then
  echo "STEPS=$STEPS, CORR_STEPS=$CORR_STEPS: expected 0 < CORR_STEPS < STEPS with CORR_STEPS a" \
    "multiple of STEPS - CORR_STEPS" >&2
  exit 1
fi
corr_env=(STEPS="$STEPS" CROP="$CROP" BATCH="$BATCH" MIX="$MIX" WORKERS="$WORKERS" CKPT="$n"
  PIXELS=0 RANDOM_INIT=0 DAVIS="$DAVIS")

if [[ "$STAGE" != eval ]]; then
  # (a) correspondence only (resumes, or does nothing if it is done).
  env "${corr_env[@]}" STAGE=train bash experiments/maskvos_corr_davis2016.sh "$W/corr"
  # (b) the full method from (a)'s step CORR_STEPS; the same command resumes after an interruption.
  python -m vosjax.main "${full[@]}" --workdir="$W/full"
fi
if [[ "$STAGE" == train ]]; then
  exit 0
fi

# (a) evaluated with crw propagation (unless it was).
if [[ ! -f "$W/corr/trained/eval_results/step_$STEPS/global_results-val.csv" ]]; then
  env "${corr_env[@]}" STAGE=eval bash experiments/maskvos_corr_davis2016.sh "$W/corr"
fi
# (b) mask decoding.
python -m vosjax.main "${full[@]}" --workdir="$W/full" --mode=eval --step="$n"
rm -rf "$W/full/decoding_step_$n" && mv "$W/full/eval_results/step_$n" "$W/full/decoding_step_$n"

# (b') the same checkpoint, its keys propagated with crw.
python -m vosjax.main "${full[@]}" --workdir="$W/full" --mode=eval --step="$n" \
  --config.eval.segmenter=propagation
rm -rf "$W/full/propagation_step_$n" && mv "$W/full/eval_results/step_$n" "$W/full/propagation_step_$n"
cp -r "$W/full/decoding_step_$n" "$W/full/eval_results/step_$n"

row() { sed -n 2p "$1/global_results-val.csv"; }
echo "J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay"
echo "(a)  correspondence only, crw (step_$STEPS): $(row "$W/corr/trained/eval_results/step_$STEPS")"
echo "(b)  full method, mask decoding: $(row "$W/full/decoding_step_$n")"
echo "(b') full method's keys, crw: $(row "$W/full/propagation_step_$n")"
