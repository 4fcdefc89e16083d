#!/usr/bin/env bash
# Does SHLS learn? J&F on the 8 DAVIS2016 480p val sequences (official evaluation) of
#   (a) SHLS trained on the frames of the DAVIS2016 240p train sequences used as still images
#       (configs/shls/davis2016_frames.py) for STEPS steps;
#   (b) the same network at random initialisation (one step at learning rate 0);
#   (c) (a)'s checkpoint with the kNN pre-segmentation alone as the output (no segmentation
#       net: --config.eval.output=preseg), its results in W/preseg/step_<STEPS>;
#   the raw-pixel baseline is experiments/README.md's first table (configs/propagation/
#   lab_pixels.py on the same 8 sequences at 480p), which does not depend on training.
# All three evaluate with the memory clusterer at short side SHORT, with SPX superpixels
# ('isec', the paper's, or 'slic'); (a) and (b) with the segmentation net, (c) without it.
#
#   bash experiments/shls_davis2016.sh [WORKDIR]
#   (env: STEPS BATCH SIZE WIDTH BASE_LR WORKERS SHORT SPX CKPT)
#
# The defaults fit a small CPU budget; the paper's setting is SIZE=256 WIDTH=64 and 200 epochs
# of MSRA10K (configs/shls/msra10k.py). Numbers, budget and machine go into
# experiments/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/shls_davis2016}
STEPS=${STEPS:-400}
BATCH=${BATCH:-4}
SIZE=${SIZE:-128}       # pseudo-sequence frame side (paper 256)
SEGMENTS=${SEGMENTS:-$((300 * SIZE * SIZE / 65536))}  # SLIC superpixels (paper 300 at 256)
WIDTH=${WIDTH:-32}      # backbone base width (paper 64)
BASE_LR=${BASE_LR:-1e-4}  # lr = BASE_LR x BATCH (the released code's scaling)
WORKERS=${WORKERS:-1}
SHORT=${SHORT:-480}
SPX=${SPX:-isec}
CKPT=${CKPT:-100}
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}

common=(
  --config=configs/shls/davis2016_frames.py
  --config.batch_size="$BATCH" --config.data.size="$SIZE"
  --config.data.num_segments="$SEGMENTS" --config.model.width="$WIDTH"
  --config.base_lr="$BASE_LR" --config.data.num_workers="$WORKERS"
  --config.eval.short_side="$SHORT" --config.eval.superpixels="$SPX"
  --config.num_train_steps="$STEPS"
  --config.checkpoint_every_steps="$CKPT" --config.log_every_steps=10
  --config.eval_every_steps=0
)

# (a); the same command resumes after an interruption.
python -m vosjax.main "${common[@]}" --workdir="$W/shls"

# (b) random initialisation.
python -m vosjax.main "${common[@]}" --workdir="$W/random_init" \
  --config.num_train_steps=1 --config.base_lr=0.0

# (c) (a)'s latest checkpoint, pre-segmentation only (its own results folder).
python -m vosjax.main "${common[@]}" --workdir="$W/shls" --mode=eval --eval_dir="$W/preseg" \
  --config.eval.output=preseg
