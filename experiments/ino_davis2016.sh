#!/usr/bin/env bash
# Does INO learn? J&F on the 8 DAVIS2016 480p val sequences (official evaluation) of
#   (a) INO (ViT-S/8, all four losses) trained on the DAVIS2016 240p train sequences (+ MIX
#       synthetic clips) for STEPS steps (configs/ino/vits8_davis2016.py);
#   (b) the same run with the in-generative losses off (MIM and affinity weights 0: the
#       paper's Table 4 says this is lower);
#   (c) the same ViT at random initialisation (one step at learning rate 0);
#   (d) the raw-pixel baseline (configs/propagation/lab_pixels.py, ino preset) on the feature
#       grid of (a)-(c): Lab patches of the 480p frames at stride 8 x 480 / SHORT.
# With TABLE4=1, also the other rows of the paper's Table 4 (losses added one by one):
#   out_g2g (global-to-global class tokens only), no_affinity (out-generative + MIM),
#   no_mim (out-generative + affinity; not a row of the paper) and the control masked_input
#   (no_affinity with the MIM weight 1e-9: the student sees masked crops, the MIM term adds
#   nothing to the gradient).
# (a)-(c) and those: block-7 student features at short side SHORT, the ino propagation preset.
#
#   bash experiments/ino_davis2016.sh [WORKDIR]
#   (env: STEPS BATCH GLOBAL LOCAL NLOCAL MIX WORKERS EMA BASE_LR SHORT CKPT PIXELS TABLE4 SEED)
#
# The defaults fit a small CPU budget (crops 64 / 32, batch 8); the paper's setting is
# GLOBAL=224 LOCAL=64 BATCH=32 on a GPU. Numbers, budget and machine go into
# experiments/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."
W=${1:-/tmp/ino_davis2016}
STEPS=${STEPS:-300}
BATCH=${BATCH:-8}
GLOBAL=${GLOBAL:-64}      # global crop side (paper 224)
LOCAL=${LOCAL:-32}        # local crop side (paper 64)
NLOCAL=${NLOCAL:-8}       # local crops per frame (paper 8)
MIX=${MIX:-0.25}          # fraction of synthetic clips (vosjax_synthetic/small)
WORKERS=${WORKERS:-1}     # grain worker processes
EMA=${EMA:-0.996}         # teacher momentum at step 0 (cosine to 1 over STEPS)
BASE_LR=${BASE_LR:-3e-3}  # peak lr = BASE_LR x BATCH x 4 frames / 1024 (Charades' base)
SHORT=${SHORT:-480}       # evaluation input short side (paper 480)
CKPT=${CKPT:-100}
PIXELS=${PIXELS:-1}       # 0: skip (d), whose number does not depend on training
TABLE4=${TABLE4:-0}       # 1: also the Table 4 rows out_g2g, no_affinity, no_mim, masked_input
SEED=${SEED:-0}
DAVIS=${DAVIS:-../shared/data/DAVIS2016}
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
if [[ "$PIXELS" != 0 ]] && (( 3840 % SHORT )); then
  echo "ino_davis2016.sh: SHORT=$SHORT: the pixel baseline needs 8 x 480 / SHORT to be an" \
    "integer stride (e.g. 480, 240, 160); set PIXELS=0 to skip it" >&2
  exit 1
fi

common=(
  --config=configs/ino/vits8_davis2016.py
  --config.batch_size="$BATCH"
  --config.data.global_size="$GLOBAL" --config.data.local_size="$LOCAL"
  --config.data.num_local="$NLOCAL"
  --config.data.synthetic_mix="$MIX" --config.data.num_workers="$WORKERS"
  --config.ema.base="$EMA" --config.base_lr="$BASE_LR" --config.eval.short_side="$SHORT"
  --config.num_train_steps="$STEPS" --config.optim.warmup_steps=$((STEPS / 10))
  --config.checkpoint_every_steps="$CKPT" --config.log_every_steps=10
  --config.eval_every_steps=0 --config.seed="$SEED"
)

# (a) and (b); the same command resumes after an interruption.
python -m vosjax.main "${common[@]}" --workdir="$W/ino"
python -m vosjax.main "${common[@]}" --workdir="$W/no_in_generative" \
  --config.loss.mim_weight=0 --config.loss.affinity_weight=0

runs=(ino no_in_generative)
if [[ "$TABLE4" != 0 ]]; then
  python -m vosjax.main "${common[@]}" --workdir="$W/out_g2g" --config.loss.local_to_global=False \
    --config.loss.mim_weight=0 --config.loss.affinity_weight=0
  python -m vosjax.main "${common[@]}" --workdir="$W/no_affinity" --config.loss.affinity_weight=0
  python -m vosjax.main "${common[@]}" --workdir="$W/no_mim" --config.loss.mim_weight=0
  python -m vosjax.main "${common[@]}" --workdir="$W/masked_input" --config.loss.mim_weight=1e-9 \
    --config.loss.affinity_weight=0
  runs+=(out_g2g no_affinity no_mim masked_input)
fi
runs+=(random_init)

# (c) random initialisation.
python -m vosjax.main "${common[@]}" --workdir="$W/random_init" \
  --config.num_train_steps=1 --config.optim.lr=0.0 --config.optim.warmup_steps=0

# (d) raw pixels.
if [[ "$PIXELS" != 0 ]]; then
python -m vosjax.evaluate --config=configs/propagation/lab_pixels.py:ino \
  --config.features.stride=$((8 * 480 / SHORT)) \
  --config.data.davis_root="$DAVIS" --config.data.imageset=2016/val --workdir="$W/pixels"
fi

echo "J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay"
for run in "${runs[@]}"; do
  step=$(ls "$W/$run/eval_results" | sort -t_ -k2 -n | tail -1)
  echo "$run ($step): $(sed -n 2p "$W/$run/eval_results/$step/global_results-val.csv")"
done
if [[ "$PIXELS" != 0 ]]; then
  echo "pixels: $(sed -n 2p "$W/pixels/results/global_results-val.csv")"
fi
