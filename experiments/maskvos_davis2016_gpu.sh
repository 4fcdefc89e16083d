#!/usr/bin/env bash
# experiments/maskvos_full_davis2016.sh with a GPU budget, split between a GPU machine that holds
# the training frames but not the validation frames (nor TensorFlow), and this one:
#
#   # There: (a) and (b) trained (STAGE=train; no synthetic clips, which need TensorFlow
#   # Datasets), their last checkpoints exported to OUT as bf16 .npz shards (about 65 MB, six
#   # files of at most 15 MiB) with each run's metrics.jsonl.
#   DAVIS=<DAVIS2016 with JPEGImages/240p and ImageSets> \
#     bash experiments/maskvos_davis2016_gpu.sh train W OUT
#   # Here: the shards imported into W as checkpoints, then maskvos_full_davis2016.sh's
#   # evaluation (STAGE=eval): (a) crw propagation, (b) mask decoding, (b') crw with (b)'s keys.
#   bash experiments/maskvos_davis2016_gpu.sh eval W OUT
#
# Env as maskvos_full_davis2016.sh, with defaults for one H100 / H200 in about 7 minutes: the
# paper's crops and batch (256, 16), 3,000 steps of which the last 1,000 are joint steps,
# pseudo masks re-clustered every 500 steps, 8 grain workers, mask decoding at short side 480
# with no refinement round (ROUNDS=3 is the paper's; on a 2-core CPU it triples the 35 minutes).
# Give both calls the same env. If the training is cut short (LIMIT seconds), OUT holds the
# last saved steps (the export prints them); set STEPS and CORR_STEPS to match them
# for the evaluation.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:?usage: maskvos_davis2016_gpu.sh train|eval W OUT}
W=${2:?usage: maskvos_davis2016_gpu.sh train|eval W OUT}
OUT=${3:?usage: maskvos_davis2016_gpu.sh train|eval W OUT}
export STEPS=${STEPS:-3000} CORR_STEPS=${CORR_STEPS:-2000} UPDATE=${UPDATE:-500}
export CROP=${CROP:-256} BATCH=${BATCH:-16} WORKERS=${WORKERS:-8} MIX=${MIX:-0}
export MIN_SHORT=${MIN_SHORT:-320} MAX_SHORT=${MAX_SHORT:-480} SHORT=${SHORT:-480}
export ROUNDS=${ROUNDS:-0}
source experiments/maskvos_full_args.sh
n=$((STEPS - CORR_STEPS))

case "$what" in
  train)
    # LIMIT > 0: stop the training after LIMIT seconds (SIGTERM: the step reached is saved).
    limit=()
    if [[ "${LIMIT:-0}" != 0 ]]; then limit=(timeout "$LIMIT"); fi
    STAGE=train "${limit[@]}" bash experiments/maskvos_full_davis2016.sh "$W" || status=$?
    # Whatever was saved comes back, also after a failure or a cut.
    python experiments/state_npz.py --action=export --workdir="$W/corr/trained" --out="$OUT" \
      --name=corr || status=${status:-1}
    python experiments/state_npz.py --action=export --workdir="$W/full" --out="$OUT" \
      --name=full || status=${status:-1}
    cp "$W/corr/trained/metrics.jsonl" "$OUT/corr_metrics.jsonl" || true
    cp "$W/full/metrics.jsonl" "$OUT/full_metrics.jsonl" || true
    exit "${status:-0}"
    ;;
  eval)
    python experiments/state_npz.py --action=import --config=configs/maskvos/corr_r18.py \
      --npz="$OUT/corr" --workdir="$W/corr/trained" --step="$STEPS"
    python experiments/state_npz.py --action=import "${full[@]}" --npz="$OUT/full" \
      --workdir="$W/full" --step="$n"
    STAGE=eval bash experiments/maskvos_full_davis2016.sh "$W"
    ;;
  *)
    echo "maskvos_davis2016_gpu.sh: expected train or eval, got '$what'" >&2
    exit 1
    ;;
esac
