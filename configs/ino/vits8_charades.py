"""INO on Charades, read as a folder of video files.

Usage (from the repository root):
  python -m vosjax.main --config=configs/ino/vits8_charades.py \
      --config.data.path=/data/Charades_v1_480 --workdir=W
  python -m vosjax.main --config=configs/ino/vits8_charades.py:smoke --workdir=W

4 GPUs x 4 clips (batch 16), base lr 3e-3 (peak 1.875e-4), 5 warm-up epochs of 25. An epoch is
5 clips of each of the 7,985 training videos (2,495 steps at batch 16). Arguments and switches:
configs/ino/base.py.
"""

import ml_collections

from configs.ino import base

CHARADES_TRAIN_VIDEOS = 7_985
CLIPS_PER_VIDEO = 5
BATCH = 16


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return base.get_config(
        arg,
        batch_size=BATCH,
        base_lr=3e-3,
        steps_per_epoch=CHARADES_TRAIN_VIDEOS * CLIPS_PER_VIDEO // BATCH,
        warmup_epochs=5,
    )
