#!/usr/bin/env bash
# The raw-pixel baseline under each released evaluation protocol: CIE Lab 8x8 patches at stride 8
# (configs/propagation/lab_pixels.py), label propagation with the `dino`, `crw` and `ino` presets
# (each its released code's reader, context, top-k and writer), official J&F on the 8 DAVIS2016
# 480p val sequences.
#
#   bash experiments/pixels_davis2016.sh [WORKDIR]
#   (env: PRESETS (default "dino crw ino"), DAVIS, SEQUENCES (e.g. blackswan,dog: a subset))
#
# Writes WORKDIR/<preset>/results/ and prints one row per preset.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/pixels_davis2016}
PRESETS=${PRESETS:-dino crw ino}
DAVIS=${DAVIS:-../shared/data/DAVIS2016}
subset=()
if [[ -n "${SEQUENCES:-}" ]]; then
  subset=(--config.data.sequences="$SEQUENCES")
fi

for preset in $PRESETS; do
  python -m vosjax.evaluate --config=configs/propagation/lab_pixels.py:"$preset" \
    --config.data.davis_root="$DAVIS" --config.data.imageset=2016/val "${subset[@]}" \
    --workdir="$W/$preset"
done
echo "preset: J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay"
for preset in $PRESETS; do
  echo "$preset: $(sed -n 2p "$W/$preset/results/global_results-val.csv")"
done
