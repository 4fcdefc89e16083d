"""The SHLS config shared by the dataset configs of configs/shls/.

Arguments after ':' (comma-separated):
  smoke   a tiny network on synthetic stills, a few steps (tests);
  slic    SLIC instead of ISEC superpixels at test time (faster; the paper uses ISEC).

Hyper-parameters (reference-methods.md section 3): pseudo-sequences of 3 frames of 256 x 256
made from still images with a foreground mask (at most 3 objects, 1 to 3 pasted), SLIC
superpixels for training (300 segments, compactness 20, sigma 1, Lab); the ResNet-18-like
backbone, 32-d superfeatures, NT-Xent (tau 0.07); the memory clusterer (kNN k=2 with vote
weights 0.5^i, 2 spherical k-means clusters per class), the segmentation net per object with
soft aggregation; loss = NT-Xent / seq_len + cross-entropy / (seq_len - 1); Adam at
base_lr 1e-4 x the sequences of a batch (the released code: 1e-4 x the number of GPUs, one
sequence per GPU), 200 epochs of 1/3 of the data. Inference: ISEC superpixels at 480p, a
memory of at most 10 x the superpixels of a frame (the first 5 x kept), superpixels with a
mean probability >= 0.4 x their class mean written to it, an ROI per object from the kNN
pre-segmentation (enlarged 30%).

Switches: --config.loss.ml_weight / ce_weight (0 switches a loss off), --config.memory.k,
--config.memory.clusters_per_class, --config.eval.superpixels ('isec' or 'slic'),
--config.eval.output ('decoder', the paper's, or 'preseg': the kNN pre-segmentation alone).
"""

import ml_collections

from configs.propagation import common as propagation_configs
from vosjax import train

SMOKE, SLIC = "smoke", "slic"


def parse_arg(arg: str | None) -> tuple[bool, bool]:
    """'smoke' / 'slic' -> (smoke, slic)."""
    tokens = [t for t in (arg or "").split(",") if t]
    unknown = sorted(set(tokens) - {SMOKE, SLIC})
    if unknown:
        raise ValueError(f"config argument(s) {unknown}: expected {SMOKE!r} or {SLIC!r}")
    return SMOKE in tokens, SLIC in tokens


def get_config(
    arg: str | None = None, *, batch_size: int = 8, steps_per_epoch: int = 1000
) -> ml_collections.ConfigDict:
    """The SHLS config; the dataset configs set the data and the epoch length."""
    smoke, slic = parse_arg(arg)
    config = train.default_config()
    config.method = "shls"
    config.model = ml_collections.ConfigDict(
        {
            "width": 8 if smoke else 64,  # backbone channels: layer1 w, layer2 2w, layer3/4 4w
            "blocks": (1, 1, 1, 1) if smoke else (2, 2, 2, 2),
            "superfeature_dim": 8 if smoke else 32,
            # The released My_Net widths: SegmenterN decoder 256 (layer2 128), Mem_select 32.
            "hidden": 16 if smoke else 256,
            "gate_hidden": 8 if smoke else 32,
        }
    )
    config.loss = ml_collections.ConfigDict(
        {"ml_weight": 1.0, "ce_weight": 1.0, "temperature": 0.07}
    )
    config.memory = ml_collections.ConfigDict(
        {
            "k": 2,
            "vote_ratio": 0.5,
            "clusters_per_class": 2,
            "kmeans_iters": 20,  # faiss: 300 iterations, 10 restarts
            "kmeans_restarts": 3,
            # eval.protocol='released': faiss's 300 iterations and 10 restarts.
            "released_kmeans_iters": 300,
            "released_kmeans_restarts": 10,
            "capacity_frames": 10,  # memory = 10 x max_superpixels entries
            "fixed_frames": 5,  # the first 5 x max_superpixels entries are never overwritten
            "confidence": 0.4,  # write superpixels with mean prob >= 0.4 x their class mean
            "roi_margin": 0.3,
            "outlier_overlap": 0.05,
        }
    )
    config.batch_size = 8 if smoke else batch_size  # smoke: one sequence per fake device
    config.data = ml_collections.ConfigDict(
        {
            "path": "",  # '' = synthetic stills; a folder of <name>.jpg + <name>.png; DAVIS
            "imageset": "2016/train",  # for a DAVIS root
            "resolution": "240p",
            "synthetic_config": "medium",  # a level of vosjax.data.synthetic
            "synthetic_count": 16 if smoke else 1000,
            "size": 32 if smoke else 256,
            "seq_len": 3,
            "max_objects": 3,
            "num_segments": 20 if smoke else 300,
            "compactness": 20.0,
            "sigma": 1.0,
            "max_superpixels": 64 if smoke else 512,
            # Image normalisation: the released training's MSRA10K statistics (config_LT).
            "mean": (0.4532, 0.4335, 0.3921),
            "std": (0.3025, 0.2918, 0.3122),
            "num_workers": 0 if smoke else 4,
            "read_threads": 2,  # threads building batches in each reading process
            "prefetch_batches": 4,  # batches built ahead by each reading process
        }
    )
    config.steps_per_epoch = ml_collections.FieldReference(
        1 if smoke else steps_per_epoch, field_type=int
    )
    config.num_train_steps = 2 if smoke else config.get_ref("steps_per_epoch") * 200
    config.base_lr = 1e-4  # lr per sequence of the batch: lr = base_lr x batch_size
    config.optim.name = "adam"
    config.optim.lr = config.get_ref("base_lr") * config.get_ref("batch_size")
    config.optim.schedule = "constant"
    config.log_every_steps = 1 if smoke else 100
    config.checkpoint_every_steps = 1 if smoke else 2000
    config.eval_every_steps = 0
    config.eval = propagation_configs.data_config(smoke)
    config.eval.write_pngs = False
    config.eval.num_overlays = 2 if smoke else 4
    config.eval.superpixels = "slic" if (slic or smoke) else "isec"
    config.eval.slic_segments = 20 if smoke else 1000  # SLIC at test time (the 'slic' switch)
    config.eval.max_superpixels = 96 if smoke else 2048
    config.eval.short_side = None if smoke else 480  # frames resized to this short side
    # 'decoder': the segmentation net (the paper); 'preseg': the kNN pre-segmentation alone.
    config.eval.output = "decoder"
    # 'released': the released test loop (superpixels merged to the first mask, memory fitted
    # on them, per-object boxes, RoIAlign, memory updates of confident superpixels); 'vosjax':
    # a fixed-size memory bank and whole-frame segmenter inputs (jitted; objects may start
    # after frame 0).
    config.eval.protocol = "vosjax" if smoke else "released"
    # The last prediction the segmenter sees after a predicted frame: 'log_odds' (released)
    # or 'prob'.
    config.eval.last_pred = "log_odds"
    # The released test-time normalisation (config_LT davis_mean / davis_std).
    config.eval.mean = (0.4512, 0.4448, 0.4111)
    config.eval.std = (0.2485, 0.2403, 0.2617)
    return config
