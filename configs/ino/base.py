"""The INO config (ViT-S/8 by default) shared by the dataset configs of configs/ino/.

Arguments after ':' (comma-separated):
  smoke   a tiny ViT on the synthetic default data, a few steps (tests);
  code    the released code's choices where the paper says otherwise: global crops not
          augmented, one MIM mask shared by the whole batch, MIM masks of uniformly random
          patches (the paper: blockwise), clips at ~8 fps (frame gap 3);
  vits16 / vitb8   ViT-S/16 or ViT-B/8 instead of ViT-S/8.

Hyper-parameters (the paper and reference-methods.md section 2): clips of L=4 frames, 1 global
crop of 224 (scale 0.8-0.95) and 8 local crops of 64 (scale 0.05-0.8) per frame; losses
g2g + l2g + MIM + affinity at 1 : 1 : 1, tau_t 0.04, tau_s 0.1, centring momentum 0.9; MIM
with probability 0.5 over U(0.1, 0.5) of the patches, block-wise; EMA teacher 0.996 -> 1
(cosine); AdamW, peak lr = base x (clips x L) / 1024 with a linear warm-up and a cosine to
1e-6 over 25 epochs, weight decay 0.04 -> 0.4 (cosine; none on biases and 1-D parameters),
gradient clipping 3.0 (per parameter tensor, as the released code), bf16. Inference: block 7
of the student, short side 480, the 'ino' propagation preset.

Released-code details the paper leaves open (defaults; see vosjax/methods/ino/losses.py):
--config.loss.center_update ('per_call': each DINOLoss call centres, then moves its centre, as
main_VOS does; 'per_step': one update per step from all teacher outputs), --config.loss.mim_average
('frame': one MIM term per frame over the batch's masked tokens; 'image': per-image means),
--config.mim.style ('block': BEiT / iBOT-style rectangles, the paper's "blockwise masking";
'random': uniformly random patches as the released RandomMaskingGenerator, set by ':code').

Ablation switches (the paper's Table 4): --config.loss.global_to_global, local_to_global (bools),
--config.loss.out_weight / mim_weight / affinity_weight (0 switches a term off),
--config.data.num_local (M), --config.data.global_scale / local_scale, --config.eval.block.
"""

import ml_collections

from configs.propagation import common as propagation_configs
from vosjax import train
from vosjax.ops import propagation

SMOKE, CODE = "smoke", "code"
BACKBONES = {"vits8": ("vit_small", 8), "vits16": ("vit_small", 16), "vitb8": ("vit_base", 8)}


def parse_arg(arg: str | None) -> tuple[bool, bool, str]:
    """'smoke' / 'code' / a backbone token -> (smoke, code, backbone token)."""
    tokens = [t for t in (arg or "").split(",") if t]
    unknown = sorted(set(tokens) - {SMOKE, CODE, *BACKBONES})
    if unknown:
        raise ValueError(
            f"config argument(s) {unknown}: expected {SMOKE!r}, {CODE!r} or one of "
            f"{sorted(BACKBONES)}"
        )
    backbones = [t for t in tokens if t in BACKBONES] or ["vits8"]
    if len(backbones) > 1:
        raise ValueError(f"config argument: one backbone expected, got {backbones}")
    return SMOKE in tokens, CODE in tokens, backbones[0]


def get_config(
    arg: str | None = None,
    *,
    batch_size: int = 32,
    base_lr: float = 3e-4,
    steps_per_epoch: int = 1000,
    warmup_epochs: int = 2,
) -> ml_collections.ConfigDict:
    """The INO config; the dataset configs set the data, batch, lr and epoch length."""
    smoke, code, backbone = parse_arg(arg)
    name, patch = BACKBONES[backbone]
    config = train.default_config()
    config.method = "ino"
    config.model = ml_collections.ConfigDict(
        {
            "backbone": name,
            "patch_size": patch,
            "pos_embed_size": 64,  # position embeddings learned for 64 x 64, interpolated
            "drop_path": 0.1,
            "embed_dim": 0,  # 0: the backbone's; smoke sets a tiny custom ViT
            "depth": 12,
            "num_heads": 6,
            "hidden_dim": 2048,
            "bottleneck_dim": 256,
            "out_dim": 4096,
            "head_layers": 3,
            "norm_last_layer": True,
        }
    )
    config.loss = ml_collections.ConfigDict(
        {
            "out_weight": 1.0,
            "global_to_global": True,
            "local_to_global": True,
            "mim_weight": 1.0,
            "affinity_weight": 1.0,
            "teacher_temp": 0.04,
            "student_temp": 0.1,
            "affinity_teacher_temp": 0.04,
            "affinity_student_temp": 0.1,
            # The released code's DINOLoss calls (losses.CENTER_UPDATES): the class centre moves
            # after each frame pair, the patch centre after each frame's masked-token MIM term.
            "center_update": "per_call",
            # Released calc_mim_loss: per frame, the mean over the batch's masked tokens.
            "mim_average": "frame",
        }
    )
    config.mim = ml_collections.ConfigDict(
        {
            "prob": 0.5,
            "ratio_range": (0.1, 0.5),
            # 'block': BEiT / iBOT-style rectangles of at least min_block patches (the paper:
            # "blockwise masking"); 'random': uniformly random patches, as the released
            # RandomMaskingGenerator (':code').
            "style": "random" if code else "block",
            "min_block": 4,
            "shared_mask": code,
        }
    )
    config.center_momentum = 0.9
    config.ema = ml_collections.ConfigDict({"base": 0.996})
    config.batch_size = 8 if smoke else batch_size
    config.data = ml_collections.ConfigDict(
        {
            "path": "",  # '' = the synthetic default; a folder of videos, DAVIS root, 'tfds:...'
            "imageset": "2016/train",  # for a DAVIS root
            "resolution": "480p",
            "clip_len": 4,
            "frame_gap": 3 if code else 8,  # the paper's skip 8; the code resamples to 8 fps
            "sample_mode": "random",
            "permute": False,
            "global_size": 224,
            "global_scale": (0.8, 0.95),
            "local_size": 64,
            "local_scale": (0.05, 0.8),
            "num_local": 8,
            "augment_global": not code,
            "synthetic_config": "tiny" if smoke else "small",
            "synthetic_mix": 0.0,
            "batch_size": config.get_ref("batch_size"),
            "num_workers": 0 if smoke else 4,
            "read_threads": 2,  # threads building batches in each reading process
            "prefetch_batches": 4,  # batches built ahead by each reading process
        }
    )
    config.steps_per_epoch = ml_collections.FieldReference(
        1 if smoke else steps_per_epoch, field_type=int
    )
    epoch = config.get_ref("steps_per_epoch")
    config.num_train_steps = 2 if smoke else epoch * 25
    config.base_lr = base_lr  # peak lr = base_lr x (batch_size x clip_len) / 1024
    config.optim.name = "adamw"
    config.optim.lr = (
        config.get_ref("base_lr") * config.get_ref("batch_size") * config.data.clip_len / 1024
    )
    config.optim.schedule = "warmup_cosine"
    config.optim.warmup_steps = 0 if smoke else epoch * warmup_epochs
    config.optim.end_lr = 1e-6
    config.optim.weight_decay = 0.04
    config.optim.weight_decay_end = 0.4
    config.optim.bias_no_weight_decay = True
    config.optim.no_decay_1d = True
    config.optim.grad_clip_norm = 3.0
    config.optim.grad_clip_per_tensor = True  # the released utils.clip_gradients (DINO's)
    config.mixed_precision = not smoke
    config.log_every_steps = 1 if smoke else 100
    config.checkpoint_every_steps = 1 if smoke else 2000
    config.eval_every_steps = 0
    config.eval = propagation_configs.data_config(smoke)
    config.eval.write_pngs = False
    config.eval.num_overlays = 2 if smoke else 4
    config.eval.features = "student"  # or 'teacher'
    config.eval.block = 7
    config.eval.short_side = 480
    config.eval.propagation = dict(propagation.PRESETS["ino"].__dict__) | {"preset": "ino"}
    # Applied over eval.propagation when eval.layout is 'youtube_vos' (INO's YouTube-VOS run).
    config.eval.youtube_vos_propagation = {"num_recent": 20, "radius": 50.0}
    if smoke:
        config.model.update(
            {
                "patch_size": 8,
                "pos_embed_size": 32,
                "embed_dim": 32,
                "depth": 4,
                "num_heads": 2,
                "hidden_dim": 32,
                "bottleneck_dim": 16,
                "out_dim": 64,
            }
        )
        config.data.update(
            {"clip_len": 2, "frame_gap": 1, "global_size": 32, "local_size": 16, "num_local": 2}
        )
        config.eval.block = 3
        config.eval.short_side = None
    return config
