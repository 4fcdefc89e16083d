# Sourced by maskvos_full_davis2016.sh and maskvos_frozen_e.sh: the environment defaults and
# `full`, the flags of (b)'s joint run (configs/maskvos/davis2016.py from (a)'s checkpoint of
# step CORR_STEPS in $W/corr/trained). Needs W set.
STEPS=${STEPS:-1000}
CORR_STEPS=${CORR_STEPS:-800}
UPDATE=${UPDATE:-100}
CROP=${CROP:-128}
MIN_SHORT=${MIN_SHORT:-$CROP}  # the joint steps' frames: short side resized into [MIN_SHORT, MAX_SHORT]
MAX_SHORT=${MAX_SHORT:-320}  # before the CROP crop ((a) keeps [CROP, 320])
BATCH=${BATCH:-8}
MIX=${MIX:-0.25}
WORKERS=${WORKERS:-1}
LR=${LR:-1e-4}  # the joint steps' lr: the correspondence stage's starting lr, for the new V and D
SHORT=${SHORT:-480}  # mask decoding's input short side (480: the paper; 240 on a small CPU)
ROUNDS=${ROUNDS:-3}  # mask decoding's refinement rounds (3: the paper)
DAVIS=${DAVIS:-../shared/data/DAVIS2016}
STAGE=${STAGE:-all}  # train | eval | all
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}

full=(
  --config=configs/maskvos/davis2016.py
  --config.data.path="$DAVIS" --config.eval.davis_root="$DAVIS"
  --config.batch_size="$BATCH"
  --config.data.crop="$CROP" --config.data.min_short="$MIN_SHORT" --config.data.max_short="$MAX_SHORT"
  --config.data.synthetic_mix="$MIX" --config.data.num_workers="$WORKERS"
  --config.init_from.workdir="$W/corr/trained" --config.init_from.step="$CORR_STEPS"
  --config.init_from.into=encoder
  --config.num_train_steps=$((STEPS - CORR_STEPS))
  --config.schedule.warmup_steps=0 --config.schedule.update_every="$UPDATE"
  --config.optim.schedule=constant --config.optim.lr="$LR"
  --config.checkpoint_every_steps=50 --config.log_every_steps=10 --config.eval_every_steps=-1
  --config.eval.decoding.short_side="$SHORT" --config.eval.decoding.refine_rounds="$ROUNDS"
)
