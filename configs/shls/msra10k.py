"""SHLS trained on MSRA10K (the paper's setting): a folder of <name>.jpg + <name>.png pairs.

Usage (from the repository root):
  python -m vosjax.main --config=configs/shls/msra10k.py --workdir=W \
      --config.data.path=/data/MSRA10K_Imgs_GT --config.eval.davis_root=/data/DAVIS \
      --config.eval.imageset=2017/val
  python -m vosjax.main --config=configs/shls/msra10k.py:smoke --workdir=W

10,000 images; an epoch is a third of them (the released code's split_data=3) in sequences of
batch_size, 200 epochs. ':smoke' trains on synthetic stills. Arguments: configs/shls/base.py.
"""

import ml_collections

from configs.shls import base

MSRA10K_IMAGES = 10_000
BATCH = 8


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return base.get_config(arg, batch_size=BATCH, steps_per_epoch=MSRA10K_IMAGES // 3 // BATCH)
