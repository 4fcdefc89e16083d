"""INO on Kinetics-400 (the paper's main setting), read as a folder of video files.

Usage (from the repository root):
  python -m vosjax.main --config=configs/ino/vits8_kinetics.py \
      --config.data.path=/data/kinetics400/train --workdir=W
  python -m vosjax.main --config=configs/ino/vits8_kinetics.py:smoke --workdir=W

8 GPUs x 4 clips (batch 32), base lr 3e-4 (peak 3.75e-5), 2 warm-up epochs of 25. An epoch is
5 clips of each of the 234,619 training videos (36,659 steps at batch 32). Arguments and
switches: configs/ino/base.py.
"""

import ml_collections

from configs.ino import base

KINETICS_TRAIN_VIDEOS = 234_619
CLIPS_PER_VIDEO = 5
BATCH = 32


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return base.get_config(
        arg,
        batch_size=BATCH,
        base_lr=3e-4,
        steps_per_epoch=KINETICS_TRAIN_VIDEOS * CLIPS_PER_VIDEO // BATCH,
        warmup_epochs=2,
    )
