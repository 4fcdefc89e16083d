"""SHLS, superfeatures in a high-compressed latent space (Mendonça and Oliveira, 2023), as a
vosjax training method.

Training data: pseudo-sequences of T frames made from still images with a foreground mask
(`vosjax.data.pseudo_sequences`), each frame with its SLIC superpixels. Per sequence:
- every frame is encoded (`model.encode`): one superfeature per superpixel, labelled by the
  majority object of its pixels;
- metric learning: NT-Xent (tau 0.07) over the superfeatures of frames 0..t for every frame t
  (frame t against the memory of the earlier ones; frame 0 alone), summed over t;
- segmentation, for every frame t >= 1 and object k: the memory clusterer over frames 0..t-1
  (frame 0: over itself) gives 4 attention channels per class (the released kNN
  `dist_per_class2`, 2 spherical k-means centres per class), painted onto the superpixels'
  pixels; the released networks (MemorySelect + SegmenterN) take, on whole frames
  (`roi_segment.segment_full_frame`), frame 0's mask of k and maps, frame t-1's maps,
  attention maps and mask of k, and frame t's maps and attention maps, and predict object k
  inside its ROI; the objects are joined by soft aggregation and scored with a cross-entropy
  against the pseudo mask. The memory labels, the previous masks and the ROIs are the ground
  truth (teacher forcing; the released loop feeds back its own predictions and boxes after
  the first frame) and no gradient flows through the clusterer;
loss = ml_weight NT-Xent / T + ce_weight CE / (T - 1).

Batch (`make_train_loader` through the grain pipeline, B sequences of T frames of S x S):
  'frames' uint8 [B, T, S, S, 3], 'masks' uint8 [B, T, S, S] (0 background, 1..K objects),
  'superpixels' int32 [B, T, S, S] (< max_superpixels; -1: none), 'num_objects' int32 [B].
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vosjax.data import pseudo_sequences, still_images
from vosjax.data.superpixels import slic
from vosjax.methods.shls import inference, released_inference, roi_segment
from vosjax.methods.shls import model as model_lib
from vosjax.ops import contrastive, memory_clustering, segment_pooling, soft_aggregation

KMEANS_STREAM = 1
PROTOCOLS = ("released", "vosjax")  # config.eval.protocol


@dataclasses.dataclass(frozen=True)
class CappedSLIC:
    """frame uint8 [H, W, 3] -> SLIC labels int32 [H, W]; labels >= max_superpixels -> -1.

    A picklable callable for grain workers. SLIC at 300 segments on 256 x 256 gives about 300
    superpixels; the cap only guards the fixed size of the training step.
    """

    num_segments: int = 300
    compactness: float = 20.0
    sigma: float = 1.0
    max_superpixels: int = 512

    def __call__(self, frame: np.ndarray) -> np.ndarray:
        labels = slic.slic(
            frame,
            num_segments=self.num_segments,
            compactness=self.compactness,
            sigma=self.sigma,
        )
        return np.where(labels < self.max_superpixels, labels, -1).astype(np.int32)


def roi_boxes(masks: jax.Array, margin: float) -> jax.Array:
    """bool [..., H, W] -> float [..., H, W]: 1 inside each mask's box enlarged by `margin`
    (a fraction of the box's side, split over both ends), 0 elsewhere and for empty masks."""
    h, w = masks.shape[-2:]
    rows, cols = masks.any(-1), masks.any(-2)

    def extent(present: jax.Array, n: int) -> tuple[jax.Array, jax.Array]:
        idx = jnp.arange(n)
        low = jnp.min(jnp.where(present, idx, n), -1)
        high = jnp.max(jnp.where(present, idx, -1), -1)
        pad = (high - low + 1) * margin / 2
        return low - pad, high + pad

    y0, y1 = extent(rows, h)
    x0, x1 = extent(cols, w)
    ys = jnp.arange(h, dtype=jnp.float32)[:, None]
    xs = jnp.arange(w, dtype=jnp.float32)[None, :]
    inside = (
        (ys >= y0[..., None, None])
        & (ys <= y1[..., None, None])
        & (xs >= x0[..., None, None])
        & (xs <= x1[..., None, None])
    )
    return inside.astype(jnp.float32)


class SHLS:
    """The SHLS method (`vosjax.train.Method`): model, pseudo-sequences, losses, segmenter."""

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config
        if config.data.seq_len < 2:
            raise ValueError(
                f"config.data.seq_len={config.data.seq_len}: expected >= 2 (frame 0 is the "
                "reference of the segmentation loss)"
            )
        if config.data.size % 4:
            raise ValueError(f"config.data.size={config.data.size}: expected a multiple of 4")
        if config.data.max_objects < 1:
            raise ValueError(f"config.data.max_objects={config.data.max_objects}: expected >= 1")
        if config.eval.protocol not in PROTOCOLS:
            raise ValueError(
                f"config.eval.protocol={config.eval.protocol!r}: expected one of {PROTOCOLS}"
            )
        if config.eval.superpixels not in ("isec", "slic"):
            raise ValueError(
                f"config.eval.superpixels={config.eval.superpixels!r}: expected 'isec' or 'slic'"
            )

    def build_model(self, config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> nnx.Module:
        return model_lib.SHLSModel(config.model, rngs=rngs)

    def make_train_loader(self) -> pseudo_sequences.PseudoSequenceLoader:
        """The grain random-map callable: still-image index -> one pseudo-sequence example."""
        data = self.config.data
        source = still_images.open_still_source(
            data.path or None,
            imageset=data.imageset,
            resolution=data.resolution,
            synthetic_config=data.synthetic_config,
            synthetic_count=data.synthetic_count,
        )
        maker = pseudo_sequences.PseudoSequenceMaker(
            size=data.size, seq_len=data.seq_len, max_objects=data.max_objects
        )
        superpixel_fn = CappedSLIC(
            num_segments=data.num_segments,
            compactness=data.compactness,
            sigma=data.sigma,
            max_superpixels=data.max_superpixels,
        )
        return pseudo_sequences.PseudoSequenceLoader(source, maker, superpixel_fn)

    def loss_fn(
        self,
        model: model_lib.SHLSModel,
        batch: dict[str, jax.Array],
        rng: jax.Array,
        step: jax.Array,
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The SHLS loss of a batch of pseudo-sequences (see the module docstring)."""
        del step
        cfg = self.config.loss
        num_segments = self.config.data.max_superpixels
        frames, masks = batch["frames"], batch["masks"].astype(jnp.int32)
        spx = batch["superpixels"].astype(jnp.int32)
        b, t, h, w = masks.shape
        num_objects = self.config.data.max_objects
        num_classes = num_objects + 1
        enc = model_lib.encode(
            model,
            frames.reshape(b * t, h, w, 3),
            spx.reshape(b * t, h, w),
            num_segments,
            train=True,
            mean=tuple(self.config.data.mean),
            std=tuple(self.config.data.std),
        )
        sf = enc.superfeatures.reshape(b, t, num_segments, -1)
        valid = enc.valid.reshape(b, t, num_segments)
        classes = jax.vmap(
            lambda lab, cls: segment_pooling.majority_labels(lab, cls, num_segments, num_classes)
        )(spx.reshape(b * t, h, w), masks.reshape(b * t, h, w)).reshape(b, t, num_segments)
        valid = valid & (classes >= 0)

        terms = {}
        if cfg.ml_weight:
            ml = 0.0
            for i in range(t):  # frame i against the memory of frames 0..i-1
                ml += jnp.mean(
                    jax.vmap(
                        lambda f, c, v: contrastive.nt_xent(  # noqa: B023
                            f, c, v, temperature=cfg.temperature
                        )
                    )(
                        sf[:, : i + 1].reshape(b, -1, sf.shape[-1]),
                        classes[:, : i + 1].reshape(b, -1),
                        valid[:, : i + 1].reshape(b, -1),
                    )
                )
            terms["ml_loss"] = ml / t
        if cfg.ce_weight:
            terms["ce_loss"] = self._segmentation_loss(
                model, enc, sf, classes, valid, masks, spx, batch["num_objects"], rng
            ) / (t - 1)
        loss = sum(
            {"ml_loss": cfg.ml_weight, "ce_loss": cfg.ce_weight}[k] * v for k, v in terms.items()
        )
        return jnp.asarray(loss, jnp.float32), {
            **terms,
            "superpixels": jnp.mean(jnp.sum(valid, -1).astype(jnp.float32)),
        }

    def _segmentation_loss(
        self,
        model: model_lib.SHLSModel,
        enc: model_lib.Encoded,
        sf: jax.Array,
        classes: jax.Array,
        valid: jax.Array,
        masks: jax.Array,
        superpixels: jax.Array,
        num_objects: jax.Array,
        rng: jax.Array,
    ) -> jax.Array:
        """Sum over frames t >= 1 of the mean pixel cross-entropy of the soft-aggregated
        per-object predictions (teacher-forced memory, previous masks and ROIs).

        Per object the segmenter sees (as the released `My_Net.segment`) the first frame's
        mask and maps, the last frame's mask, maps and attention maps, and this frame's maps
        and attention maps, on whole frames (`roi_segment.segment_full_frame`). Frame i's
        attention maps come from the memory of frames 0..i-1 (frame 0's from itself, as the
        released code predicts the first frame with the memory fitted on it).
        """
        mem = self.config.memory
        b, t, h, w = masks.shape
        k_obj = self.config.data.max_objects
        num_classes = k_obj + 1
        s = sf.shape[2]
        l1 = enc.l1.reshape(b, t, *enc.l1.shape[1:])
        l4 = enc.l4.reshape(b, t, *enc.l4.shape[1:])
        spx_ids = jnp.arange(1, num_classes)  # object ids 1..K
        object_valid = spx_ids[None, :] <= num_objects[:, None]  # [B, K]

        def attention(key, query, mem_f, mem_c, mem_v):  # [S, C, 4]
            bank = memory_clustering.MemoryBank(
                features=mem_f,
                labels=mem_c,
                valid=mem_v,
                count=jnp.sum(mem_v).astype(jnp.int32),
            )
            return model_lib.memory_attention(key, query, bank, num_classes, mem).features

        def fold(x: jax.Array) -> jax.Array:  # [B, ...] -> [B K, ...] (each object)
            return jnp.repeat(x, k_obj, axis=0)

        def object_masks(i: int) -> jax.Array:  # [B K, H, W] one-hot masks of frame i
            return (masks[:, i, None] == spx_ids[None, :, None, None]).reshape(b * k_obj, h, w)

        pixel_att = []
        for i in range(t):
            key = jax.random.fold_in(jax.random.fold_in(rng, KMEANS_STREAM), i)
            memory_frames = max(i, 1)
            att = jax.vmap(attention)(
                jax.random.split(key, b),
                jax.lax.stop_gradient(sf[:, i]),
                jax.lax.stop_gradient(sf[:, :memory_frames].reshape(b, memory_frames * s, -1)),
                classes[:, :memory_frames].reshape(b, memory_frames * s),
                valid[:, :memory_frames].reshape(b, memory_frames * s),
            )
            maps = jax.vmap(model_lib.object_attention_maps)(att, superpixels[:, i])
            pixel_att.append(jax.lax.stop_gradient(maps).reshape(b * k_obj, h, w, -1))

        first = roi_segment.FrameMaps(fold(l1[:, 0]), fold(l4[:, 0]))
        total = 0.0
        for i in range(1, t):
            now = masks[:, i, None] == spx_ids[None, :, None, None]  # [B, K, H, W]
            roi = roi_boxes(now, mem.roi_margin)
            logits = roi_segment.segment_full_frame(
                model,
                first=first,
                first_mask=object_masks(0),
                last=roi_segment.FrameMaps(fold(l1[:, i - 1]), fold(l4[:, i - 1])),
                last_pred=object_masks(i - 1),
                last_attention=pixel_att[i - 1],
                this=roi_segment.FrameMaps(fold(l1[:, i]), fold(l4[:, i])),
                this_attention=pixel_att[i],
                train=True,
            )
            probs = jax.nn.softmax(logits, -1)[..., 1].reshape(b, k_obj, h, w) * roi
            logits = jax.vmap(soft_aggregation.soft_aggregate_logits)(probs, object_valid)
            log_probs = jax.nn.log_softmax(logits, axis=1)  # [B, C, H, W]
            target = jax.nn.one_hot(masks[:, i], num_classes, axis=1)  # [B, C, H, W]
            total += -jnp.mean(jnp.sum(target * log_probs, 1))
        return total

    def make_segmenter(self, model: model_lib.SHLSModel):
        """The memory-clustering segmenter of `config.eval` and `config.memory`:
        `config.eval.protocol` 'released' (the released test loop, boxes per object) or
        'vosjax' (a fixed-size memory bank, whole-frame segmenter inputs, jitted)."""
        if self.config.eval.protocol == "released":
            return released_inference.ReleasedSegmenter(model, self.config)
        return inference.SHLSSegmenter(model, self.config)
