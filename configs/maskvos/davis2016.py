"""Mask-VOS (ResNet-18) trained on the DAVIS2016 240p train sequences plus synthetic clips.

Usage (from the repository root, ../shared beside it):
  python -m vosjax.main --config=configs/maskvos/davis2016.py --workdir=W
  python -m vosjax.main --config=configs/maskvos/davis2016.py:smoke --workdir=W

The data of `experiments/maskvos_full_davis2016.sh`: the 30 DAVIS2016 train videos at 240p with
25% synthetic clips mixed in, evaluated with mask decoding on the 8 DAVIS2016 480p val videos.
An epoch here is one pass over the 2,079 training frames at batch 12 (173 steps). Every other
field, argument ('smoke', 'code') and ablation switch is r18.py's; ':smoke' keeps the synthetic
default data.
"""

import ml_collections

from configs.maskvos import r18

DAVIS = "../shared/data/DAVIS2016"
DAVIS2016_TRAIN_FRAMES = 2_079


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = r18.get_config(arg)
    smoke, _ = r18.corr_r18.parse_arg(arg)
    if smoke:
        return config
    config.data.path = DAVIS
    config.data.imageset = "2016/train"
    config.data.resolution = "240p"
    config.data.synthetic_mix = 0.25
    config.steps_per_epoch = DAVIS2016_TRAIN_FRAMES // config.batch_size
    config.eval.davis_root = DAVIS
    config.eval.imageset = "2016/val"
    config.eval.resolution = "480p"
    return config
