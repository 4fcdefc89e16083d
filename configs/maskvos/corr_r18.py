"""Mask-VOS dense correspondence learning, ResNet-18 encoder (keys at stride 8, 128-d).

Usage:
  python -m vosjax.main --config=configs/maskvos/corr_r18.py --workdir=W
  python -m vosjax.main --config=configs/maskvos/corr_r18.py:smoke --workdir=W

Arguments after ':' (comma-separated): 'smoke' (tiny synthetic run for tests) and 'code' (the
released code's loss choices: the short-term term between two views of the same frame, weight
0.1, plus the `temp` anchor term, instead of the paper's short- + long-term terms at 1 : 1).

Hyper-parameters from the paper and the released code (reference-methods.md section 1):
Adam lr 1e-4 with beta1 0.5 (the code's default), L2 weight decay 5e-4, lr x0.5 every 100
epochs for 500 epochs, clips of 5 frames with frame gap 2, 256 x 256 crops, batch 16. An
"epoch" is one pass over YouTube-VOS's 94,588 training frames (5,912 steps at batch 16); for
another data set set `--config.steps_per_epoch=N`: the run length (500 epochs), the lr steps
(every 100) and the evaluation period (every 10) follow it.
"""

import ml_collections

from configs.propagation import common as propagation_configs
from vosjax import train
from vosjax.ops import propagation

SMOKE = "smoke"
CODE = "code"
YOUTUBE_VOS_STEPS_PER_EPOCH = 94_588 // 16


def parse_arg(arg: str | None) -> tuple[bool, bool]:
    """'smoke' / 'code' tokens -> (smoke, code)."""
    tokens = [t for t in (arg or "").split(",") if t]
    unknown = sorted(set(tokens) - {SMOKE, CODE})
    if unknown:
        raise ValueError(f"config argument(s) {unknown}: expected {SMOKE!r} and/or {CODE!r}")
    return SMOKE in tokens, CODE in tokens


def get_config(arg: str | None = None, backbone: str = "resnet18") -> ml_collections.ConfigDict:
    smoke, code = parse_arg(arg)
    config = train.default_config()
    config.method = "maskvos_correspondence"
    config.model = ml_collections.ConfigDict(
        {
            "backbone": backbone,
            "output_stride": 8,
            "embed_dim": 512,  # down_dim output and key-head hidden width
            "key_dim": 128,
            "norm": "batch",
        }
    )
    config.loss = ml_collections.ConfigDict(
        {
            "short_term": "cross_key" if code else "paper",  # 'paper' | 'cross_key'
            "short_weight": 0.1 if code else 1.0,
            "long_weight": 0.0 if code else 1.0,
            "temp_weight": 1.0 if code else 0.0,
            "temperature": 0.05,  # InfoNCE tau
            "affinity_temperature": 0.05,  # softmax affinity of the long-term term
            "grid_size": 4 if code else 8,  # grid points per side (code: GRID_SIZE_REF 4)
            "long_min_gap": 5,  # frames; closer pairs do not count for the long-term term
            "temp_grid_size": 8,  # anchors per side of the `temp` term (code: GRID_SIZE 8)
            "temp_temperature": 0.05,
        }
    )
    config.batch_size = 8 if smoke else 16
    crop = 64 if smoke else 256
    config.data = ml_collections.ConfigDict(
        {
            "path": "",  # '' = the synthetic default; a DAVIS / YouTube-VOS root, 'tfds:...'
            "imageset": "2016/train",  # for a DAVIS root
            "resolution": "480p",
            "clip_len": 3 if smoke else 5,
            "frame_gap": 2,
            "permute": False,  # the code shuffles the clip's frames; the partners follow time
            "crop": crop,
            "min_short": crop,
            "max_short": crop if smoke else 320,
            "flip": 0.5,
            "view_scale": (1.0, 2.0),
            "view_rotation": (0.0, 0.0),
            "view_translation": 0.15,
            "view_flip": 0.5,
            "view_jitter": 0.0,
            "sample_mode": "random",  # 'random' start with `frame_gap`, or 'consecutive'
            "synthetic_config": "tiny" if smoke else "small",  # vosjax_synthetic, when no path
            "synthetic_mix": 0.0,  # with a path: this fraction of the clips is synthetic
            "batch_size": config.get_ref("batch_size"),  # follows config.batch_size
            "num_workers": 0 if smoke else 4,
            "read_threads": 2,  # threads building batches in each reading process
            "prefetch_batches": 4,  # batches built ahead by each reading process
        }
    )
    # Epoch-based fields follow `steps_per_epoch`: `--config.steps_per_epoch=N` rescales them
    # (each stays overridable on its own).
    config.steps_per_epoch = ml_collections.FieldReference(
        1 if smoke else YOUTUBE_VOS_STEPS_PER_EPOCH, field_type=int
    )
    epoch = config.get_ref("steps_per_epoch")
    config.num_train_steps = 2 if smoke else epoch * 500
    config.optim.name = "adam"
    config.optim.lr = 1e-4
    config.optim.b1 = 0.5
    config.optim.b2 = 0.999
    config.optim.weight_decay = 5e-4
    config.optim.schedule = "step"
    config.optim.step_every = epoch * 100
    config.optim.gamma = 0.5
    config.log_every_steps = 1 if smoke else 100
    config.eval_every_steps = 0 if smoke else epoch * 10
    config.checkpoint_every_steps = 1 if smoke else 1000
    # Validation videos: the fields of the propagation configs (layout, davis_root, imageset,
    # sequences, synthetic default, ...), plus how this method is evaluated.
    config.eval = propagation_configs.data_config(smoke)
    config.eval.write_pngs = False
    config.eval.num_overlays = 2 if smoke else 4
    config.eval.propagation = dict(propagation.PRESETS["crw"].__dict__) | {"preset": "crw"}
    if smoke:
        config.model.embed_dim = 64
        config.model.key_dim = 32
        config.loss.grid_size = 4
        config.loss.long_min_gap = 2
        config.loss.temp_grid_size = 4
    return config
