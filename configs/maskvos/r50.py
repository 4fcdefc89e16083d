"""Mask-VOS, the full method with a ResNet-50 encoder (the released code's backbone).

Usage:
  python -m vosjax.main --config=configs/maskvos/r50.py --workdir=W \
      --config.data.path=/data/youtube-vos

Same fields, arguments ('smoke', 'code') and ablation switches as r18.py; E's and V's ResNet is
a ResNet-50 (layer3's 1024 channels mapped to 512 by down_dim, as in the released code).
"""

import ml_collections

from configs.maskvos import r18


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    return r18.get_config(arg, backbone="resnet50")
