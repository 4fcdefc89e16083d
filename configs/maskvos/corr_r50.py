"""Mask-VOS dense correspondence learning, ResNet-50 encoder (the released code's backbone).

Usage:
  python -m vosjax.main --config=configs/maskvos/corr_r50.py --workdir=W

Same fields and arguments ('smoke', 'code') as corr_r18.py; only the backbone differs
(layer3 gives 1024 channels, down_dim maps them to 512 as in the released code).
"""

import ml_collections

from configs.maskvos import corr_r18


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return corr_r18.get_config(arg, backbone="resnet50")
