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
#   (env: STEPS CORR_STEPS UPDATE CROP MIN_SHORT MAX_SHORT BATCH MIX WORKERS LR SHORT ROUNDS;
#   (a) reuses $WORKDIR/corr if it is there)
#
# Numbers, budget and machine go into experiments/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/maskvos_full_davis2016}
source experiments/maskvos_full_args.sh

# (a) correspondence only; keeps checkpoints every 100 steps (CORR_STEPS among them).
if [[ ! -d "$W/corr/trained/checkpoints/$CORR_STEPS" ]]; then
  STEPS=$STEPS CROP=$CROP BATCH=$BATCH MIX=$MIX WORKERS=$WORKERS CKPT=100 PIXELS=0 RANDOM_INIT=0 \
    bash experiments/maskvos_corr_davis2016.sh "$W/corr"
fi

# (b) the full method from (a)'s step CORR_STEPS; the same command resumes after an interruption.
python -m vosjax.main "${full[@]}" --workdir="$W/full"
n=$((STEPS - CORR_STEPS))
rm -rf "$W/full/decoding_step_$n" && cp -r "$W/full/eval_results/step_$n" "$W/full/decoding_step_$n"

# (b') the same checkpoint, its keys propagated with crw.
python -m vosjax.main "${full[@]}" --workdir="$W/full" --mode=eval \
  --config.eval.segmenter=propagation
rm -rf "$W/full/propagation_step_$n" && mv "$W/full/eval_results/step_$n" "$W/full/propagation_step_$n"
cp -r "$W/full/decoding_step_$n" "$W/full/eval_results/step_$n"

last=$(ls "$W/corr/trained/eval_results" | sort -t_ -k2 -n | tail -1)
row() { sed -n 2p "$1/global_results-val.csv"; }
echo "J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay"
echo "(a)  correspondence only, crw ($last): $(row "$W/corr/trained/eval_results/$last")"
echo "(b)  full method, mask decoding: $(row "$W/full/decoding_step_$n")"
echo "(b') full method's keys, crw: $(row "$W/full/propagation_step_$n")"
