"""Mask-VOS, the full method (ResNet-18): clustering rounds, L_seg + L_short + L_long, decoding.

Usage:
  python -m vosjax.main --config=configs/maskvos/r18.py --workdir=W \
      --config.data.path=/data/youtube-vos          # the paper's YouTube-VOS train frames
  python -m vosjax.main --config=configs/maskvos/r18.py:smoke --workdir=W   # synthetic, tiny

Arguments after ':' (comma-separated): 'smoke' (tiny synthetic run for tests) and 'code' (the
released code's choices where it departs from the paper: the correspondence losses of
corr_r18's 'code', M=7 clusters fitted on every 8th frame without position encoding, argmax
coarse masks in training, lr 1e-5 with biases at 2x and no decay, a frozen backbone (res4's
down_dim with it) in the mask stage, and at inference the released infer_mask.py protocol
(`eval.segmenter='released'`; with 'decoding', the decoder output averaged with the coarse
mask and the recent memory filled with the first frame).

The paper's setting (reference-methods.md section 1): the correspondence stage's
hyper-parameters (corr_r18.py: Adam lr 1e-4, beta1 0.5, weight decay 5e-4, lr x0.5 every 100
epochs of 500, clips of 5 frames, 256 x 256 crops) with the released mask stage's batch of 12.
An "epoch" is one pass over YouTube-VOS's 94,588 training frames; `--config.steps_per_epoch=N`
rescales the run, the lr steps, the evaluation period, the correspondence-only warm-up and the
re-clustering period (every 10 epochs: the paper's Table 4d).

Ablation switches (the paper's Table 4):
  losses           --config.loss.seg_weight / short_weight / long_weight (0 switches one off)
  reference frames --config.loss.seg_queries (training) and --config.eval.decoding.num_recent
  M                --config.clustering.num_clusters
  mask update      --config.schedule.update_every (steps; 0: cluster once)
  refinement       --config.eval.decoding.refine_rounds
  features only    --config.eval.segmenter=propagation (E's keys, crw propagation)
"""

import ml_collections

from configs.maskvos import corr_r18
from vosjax.methods.maskvos import method

YOUTUBE_VOS_STEPS_PER_EPOCH = 94_588 // 12


def get_config(arg: str | None = None, backbone: str = "resnet18") -> ml_collections.ConfigDict:
    smoke, code = corr_r18.parse_arg(arg)
    config = corr_r18.get_config(arg, backbone=backbone)
    method.add_config_fields(config, smoke=smoke, code=code)
    if not smoke:
        config.batch_size = 12
        config.steps_per_epoch = YOUTUBE_VOS_STEPS_PER_EPOCH
    if code:
        config.optim.lr = 1e-5  # "LR 1e-4 x 0.1 (all groups)"
        config.optim.bias_lr_mult = 2.0
        config.optim.bias_no_weight_decay = True
        # The released Net runs its backbone, down_dim4 included, under torch.no_grad().
        config.optim.frozen = ("encoder/backbone", "encoder/down_conv", "encoder/down_norm")
    return config
