"""SHLS trained on the frames of the DAVIS2016 240p train sequences, used as still images.

Usage (from the repository root, ../shared beside it):
  python -m vosjax.main --config=configs/shls/davis2016_frames.py --workdir=W
  python -m vosjax.main --config=configs/shls/davis2016_frames.py:smoke --workdir=W

Every one of the 2,079 frames of the 30 train sequences is a still image whose annotation is its
foreground mask (no video order is used); evaluated on the 8 DAVIS2016 480p val videos. An epoch
is a third of the frames. ':smoke' keeps the synthetic stills. Arguments: configs/shls/base.py.
"""

import ml_collections

from configs.shls import base

DAVIS = "../shared/data/DAVIS2016"
DAVIS2016_TRAIN_FRAMES = 2079
BATCH = 8


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    config = base.get_config(
        arg, batch_size=BATCH, steps_per_epoch=DAVIS2016_TRAIN_FRAMES // 3 // BATCH
    )
    smoke, _ = base.parse_arg(arg)
    if smoke:
        return config
    config.data.path = DAVIS
    config.data.imageset = "2016/train"
    config.data.resolution = "240p"
    config.eval.davis_root = DAVIS
    config.eval.imageset = "2016/val"
    config.eval.resolution = "480p"
    return config
