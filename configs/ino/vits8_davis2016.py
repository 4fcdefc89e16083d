"""INO trained on the DAVIS2016 240p train sequences plus synthetic clips (small runs).

Usage (from the repository root, ../shared beside it):
  python -m vosjax.main --config=configs/ino/vits8_davis2016.py --workdir=W
  python -m vosjax.main --config=configs/ino/vits8_davis2016.py:smoke --workdir=W

The 30 DAVIS2016 train videos at 240p with 25% synthetic clips mixed in, evaluated by
propagation of block-7 features on the 8 DAVIS2016 480p val videos. Batch 16 with Charades'
base lr; an epoch is 5 clips of each of the 30 videos (9 steps). ':smoke' keeps the synthetic
default data. Arguments and switches: configs/ino/base.py.
"""

import ml_collections

from configs.ino import base

DAVIS = "../shared/data/DAVIS2016"
DAVIS2016_TRAIN_VIDEOS = 30
CLIPS_PER_VIDEO = 5
BATCH = 16


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = base.get_config(
        arg,
        batch_size=BATCH,
        base_lr=3e-3,
        steps_per_epoch=DAVIS2016_TRAIN_VIDEOS * CLIPS_PER_VIDEO // BATCH,
        warmup_epochs=5,
    )
    smoke, _, _ = base.parse_arg(arg)
    if smoke:
        return config
    config.data.path = DAVIS
    config.data.imageset = "2016/train"
    config.data.resolution = "240p"
    config.data.synthetic_mix = 0.25
    config.eval.davis_root = DAVIS
    config.eval.imageset = "2016/val"
    config.eval.resolution = "480p"
    return config
