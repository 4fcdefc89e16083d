"""SHLS inference, `config.eval.protocol='vosjax'`: a fixed-size memory bank and whole-frame
segmenter inputs, jitted (the released test loop is `released_inference`, the default).

For a video with the objects' masks given on the frame each starts (`evaluate.given_masks`):
1. every frame is resized so that its short side is `short_side` and both sides are multiples
   of 4, and cut into superpixels (ISEC by default; `config.eval.superpixels`), at most
   `max_superpixels` of them (the rest are ignored);
2. the first frame's superpixels enter the memory with the label of the majority of their
   pixels; the memory holds `capacity_frames x max_superpixels` entries and never overwrites
   its first `fixed_frames x max_superpixels` ones;
3. for each later frame: the memory clusterer (kNN with k=2 and vote weights 0.5^i; spherical
   k-means with 2 centres per class, refitted every frame) gives every superpixel 4 attention
   channels per class and a kNN label (the pre-segmentation). For each object the
   pre-segmentation's connected components that overlap the previous mask by more than
   `outlier_overlap` of their area are kept and closed by their convex hull; the ROI is its
   box enlarged by `roi_margin`, no smaller than the object's first box (the previous mask's
   box when nothing is kept). The released networks (MemorySelect + SegmenterN) predict each
   object on the whole frame (`roi_segment.segment_full_frame`) from the first given frame's
   maps and the object's given mask, the previous frame's maps, attention maps and
   prediction (`config.eval.last_pred`: its log-odds as the released loop, or probabilities)
   and this frame's maps and attention maps; the foreground is zeroed outside the ROI and
   soft aggregation (the released float32 log-odds) joins the objects;
4. superpixels whose mean probability of their arg-max class is at least `confidence` x that
   class's mean over the frame are written to the memory with that class.

`config.eval.output='preseg'` (an ablation, not the paper's pipeline) skips the segmentation
net: each object's mask is its pre-segmentation inside its ROI, one-hot probabilities.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterator
from typing import Any

import cv2
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vosjax import evaluate
from vosjax.data import sequence as sequence_lib
from vosjax.data import transforms
from vosjax.data.superpixels import isec, slic
from vosjax.methods.shls import model as model_lib
from vosjax.methods.shls import roi_segment
from vosjax.ops import memory_clustering, segment_pooling, soft_aggregation

_LOG = logging.getLogger(__name__)

OUTPUTS = ("decoder", "preseg")  # config.eval.output
# config.eval.last_pred: what the segmenter gets as the last prediction of each object after a
# predicted frame: 'log_odds' (the released test loop passes its soft-aggregated log-odds) or
# 'prob' (the aggregated probability). After a given frame it is the one-hot mask either way.
LAST_PREDS = ("log_odds", "prob")


def working_size(size: tuple[int, int], short_side: int | None) -> tuple[int, int]:
    """(H', W'): short side `short_side` (None: unchanged), both sides rounded down to
    multiples of 4 (the backbone's stride), at least 8 pixels."""
    return transforms.short_side_size(size, short_side, 4, min_side=8)


def _box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(y0, x0, y1, x1) inclusive of a bool mask, None when empty."""
    ys, xs = np.nonzero(mask)
    if not len(ys):
        return None
    return int(ys.min()), int(xs.min()), int(ys.max()), int(xs.max())


def roi_mask(
    preseg: np.ndarray,
    previous: np.ndarray,
    first_box: tuple[int, int, int, int] | None,
    *,
    margin: float,
    min_overlap: float,
) -> np.ndarray:
    """The ROI of one object: float32 [H, W], 1 inside.

    Args:
      preseg: bool [H, W], the object's kNN pre-segmentation.
      previous: bool [H, W], the object's previous mask.
      first_box: the object's box on its first frame (the ROI's minimum size), or None.
      margin: the box is enlarged by this fraction of its sides (half on each end).
      min_overlap: a pre-segmentation component is kept when more than this fraction of its
        pixels lie in `previous`.
    """
    h, w = preseg.shape
    count, components = cv2.connectedComponents(preseg.astype(np.uint8), connectivity=8)
    keep = np.zeros((h, w), bool)
    for c in range(1, count):
        comp = components == c
        if (comp & previous).sum() > min_overlap * comp.sum():
            keep |= comp
    if keep.any():
        points = cv2.findNonZero(keep.astype(np.uint8))
        hull = cv2.convexHull(points)
        filled = np.zeros((h, w), np.uint8)
        cv2.fillConvexPoly(filled, hull, 1)
        box = _box(filled.astype(bool))
    else:
        box = _box(previous)
    if box is None:
        return np.ones((h, w), np.float32)
    y0, x0, y1, x1 = box
    bh, bw = (y1 - y0 + 1) * (1 + margin), (x1 - x0 + 1) * (1 + margin)
    if first_box is not None:
        bh = max(bh, first_box[2] - first_box[0] + 1)
        bw = max(bw, first_box[3] - first_box[1] + 1)
    cy, cx = (y0 + y1) / 2, (x0 + x1) / 2
    ys = np.arange(h)[:, None]
    xs = np.arange(w)[None, :]
    inside = (np.abs(ys - cy) <= bh / 2) & (np.abs(xs - cx) <= bw / 2)
    return inside.astype(np.float32)


def _preseg_probs(preseg: np.ndarray, rois: np.ndarray, object_valid: np.ndarray) -> np.ndarray:
    """The kNN pre-segmentation int [H, W] as one-hot probabilities [K + 1, H, W]: object k
    inside its ROI (`rois` [K, H, W]) when it is valid, background elsewhere."""
    objects = np.arange(1, len(rois) + 1)[:, None, None]
    fg = (preseg[None] == objects) & (rois > 0) & object_valid[:, None, None]
    return np.concatenate([~fg.any(0, keepdims=True), fg]).astype(np.float32)


def superpixel_function(config: ml_collections.ConfigDict):
    """frame uint8 [H, W, 3] -> 0-based superpixels int [H, W] of `config.eval.superpixels`."""
    ev = config.eval
    if ev.superpixels == "isec":
        return isec.isec
    return functools.partial(
        slic.slic,
        num_segments=ev.slic_segments,
        compactness=config.data.compactness,
        sigma=config.data.sigma,
    )


class SHLSSegmenter:
    """`evaluate.Segmenter` of a trained SHLS model (a snapshot of its weights)."""

    def __init__(self, model: model_lib.SHLSModel, config: ml_collections.ConfigDict):
        ev, mem = config.eval, config.memory
        self.config = config
        self.max_superpixels = ev.max_superpixels
        self.short_side = ev.short_side
        if ev.output not in OUTPUTS:
            raise ValueError(f"config.eval.output={ev.output!r}: expected one of {OUTPUTS}")
        self.output = ev.output
        if ev.last_pred not in LAST_PREDS:
            raise ValueError(
                f"config.eval.last_pred={ev.last_pred!r}: expected one of {LAST_PREDS}"
            )
        self.last_pred = ev.last_pred
        self.superpixel_fn = superpixel_function(config)
        self.capacity = mem.capacity_frames * self.max_superpixels
        self.num_fixed = mem.fixed_frames * self.max_superpixels
        self.graphdef, self.state = nnx.split(model)
        self._warned = False

        norm = {"mean": tuple(ev.mean), "std": tuple(ev.std)}

        def encode(state: Any, frame: jax.Array, labels: jax.Array) -> model_lib.Encoded:
            module = nnx.merge(self.graphdef, state)
            return model_lib.encode(
                module, frame[None], labels[None], self.max_superpixels, train=False, **norm
            )

        def attention(
            key: jax.Array, query: jax.Array, bank: memory_clustering.MemoryBank, num_classes: int
        ) -> tuple[jax.Array, jax.Array]:
            out = model_lib.memory_attention(key, query, bank, num_classes, mem)
            return out.features, out.knn_label

        def decode(
            state: Any,
            first: roi_segment.FrameMaps,
            first_masks: jax.Array,
            prev: roi_segment.FrameMaps,
            prev_pred: jax.Array,
            prev_att: jax.Array,
            cur: roi_segment.FrameMaps,
            att: jax.Array,
            roi: jax.Array,
            object_valid: jax.Array,
        ) -> tuple[jax.Array, jax.Array]:
            module = nnx.merge(self.graphdef, state)
            k = first_masks.shape[0]
            rep = lambda m: roi_segment.FrameMaps(*(jnp.repeat(x, k, axis=0) for x in m))  # noqa: E731
            logits = roi_segment.segment_full_frame(
                module,
                first=rep(first),
                first_mask=first_masks,
                last=rep(prev),
                last_pred=prev_pred,
                last_attention=prev_att,
                this=rep(cur),
                this_attention=att,
            )
            probs = jax.nn.softmax(logits, -1)[..., 1] * roi
            log_odds = soft_aggregation.soft_aggregate_logits(probs, object_valid, odds="ratio")
            return jax.nn.softmax(log_odds, axis=0), log_odds  # [K + 1, H, W] each

        def pixel_attention(att: jax.Array, labels: jax.Array) -> jax.Array:
            return model_lib.object_attention_maps(att, labels)

        def update(
            bank: memory_clustering.MemoryBank,
            features: jax.Array,
            valid: jax.Array,
            labels: jax.Array,
            probs: jax.Array,
        ) -> memory_clustering.MemoryBank:
            spx_probs, _ = segment_pooling.segment_mean(
                probs.transpose(1, 2, 0), labels, self.max_superpixels
            )  # [S, C]
            label = jnp.argmax(spx_probs, -1)
            conf = jnp.max(spx_probs, -1)
            num_classes = probs.shape[0]
            onehot = jax.nn.one_hot(label, num_classes) * valid[:, None]
            class_mean = (onehot * conf[:, None]).sum(0) / jnp.maximum(onehot.sum(0), 1)
            keep = valid & (conf >= mem.confidence * class_mean[label])
            return memory_clustering.write_memory(
                bank, features, label.astype(jnp.int32), keep, self.num_fixed
            )

        def write(bank, features, valid, classes):
            return memory_clustering.write_memory(
                bank, features, classes, valid & (classes >= 0), self.num_fixed
            )

        self._encode = jax.jit(encode)
        self._attention = jax.jit(attention, static_argnums=3)
        self._decode = jax.jit(decode)
        self._pixel_attention = jax.jit(pixel_attention)
        self._update = jax.jit(update)
        self._write = jax.jit(write)
        self._majority = jax.jit(segment_pooling.majority_labels, static_argnums=(2, 3))

    def _superpixels(self, frame: np.ndarray) -> np.ndarray:
        labels = self.superpixel_fn(frame).astype(np.int32)
        if labels.max() >= self.max_superpixels:
            if not self._warned:
                _LOG.warning(
                    "%d superpixels > config.eval.max_superpixels=%d: the extra ones are ignored",
                    labels.max() + 1,
                    self.max_superpixels,
                )
                self._warned = True
            labels = np.where(labels < self.max_superpixels, labels, -1)
        return labels

    def _predict(
        self,
        key: jax.Array,
        enc: model_lib.Encoded,
        labels: jax.Array,
        bank: memory_clustering.MemoryBank,
        ctx: dict[str, Any],
        object_valid: np.ndarray,
        first_boxes: dict[int, tuple[int, int, int, int] | None],
    ) -> tuple[np.ndarray, np.ndarray, jax.Array]:
        """One later frame: (probabilities [K + 1, H, W] (a writable array), the log-odds or
        None, the objects' pixel attention maps [K, H, W, 4]): memory clusterer,
        pre-segmentation, ROIs, then the segmentation net (or the pre-segmentation alone)."""
        mem = self.config.memory
        prev_probs = ctx["probs"]
        num_classes = len(prev_probs) + 1
        att, knn_label = self._attention(key, enc.superfeatures[0], bank, num_classes)
        pixel_att = self._pixel_attention(att, labels)
        preseg = np.asarray(segment_pooling.paint(knn_label[:, None], labels))[..., 0]
        hard_prev = np.argmax(np.concatenate([1 - prev_probs.max(0, keepdims=True), prev_probs]), 0)
        rois = np.stack(
            [
                roi_mask(
                    preseg == k,
                    hard_prev == k,
                    first_boxes.get(k),
                    margin=mem.roi_margin,
                    min_overlap=mem.outlier_overlap,
                )
                for k in range(1, num_classes)
            ]
        )
        if self.output == "preseg":
            return _preseg_probs(preseg, rois, object_valid), None, pixel_att
        probs, log_odds = self._decode(
            self.state,
            ctx["first"],
            ctx["first_masks"],
            ctx["prev"],
            jnp.asarray(ctx["prev_pred"]),
            ctx["prev_att"],
            roi_segment.FrameMaps(enc.l1, enc.l4),
            pixel_att,
            jnp.asarray(rois),
            jnp.asarray(object_valid),
        )
        return np.array(probs), np.asarray(log_odds), pixel_att  # a copy: given masks overwrite

    def segment(self, sequence: sequence_lib.VideoSequence) -> Iterator[np.ndarray]:
        inputs = evaluate.given_masks(sequence)
        num_classes = 1 + max(sequence.start_frames, default=0)
        height, width = sequence.image_size
        size = working_size((height, width), self.short_side)
        bank = memory_clustering.init_memory(self.capacity, self.config.model.superfeature_dim)
        object_valid = np.zeros(num_classes - 1, bool)
        first_boxes: dict[int, tuple[int, int, int, int] | None] = {}
        ctx: dict[str, Any] | None = None
        first: roi_segment.FrameMaps | None = None
        first_masks = np.zeros((num_classes - 1, *size), np.float32)
        key = jax.random.key(self.config.seed)
        for t in range(len(sequence)):
            frame = cv2.resize(sequence.read_frame(t), size[::-1], interpolation=cv2.INTER_LINEAR)
            labels = self._superpixels(frame)
            device_labels = jnp.asarray(labels)  # one transfer for every use below
            enc = self._encode(self.state, jnp.asarray(frame), device_labels)
            features, valid = enc.superfeatures[0], enc.valid[0]
            frame_key = jax.random.fold_in(key, t)
            given = inputs.get(t)
            if given is not None:
                given = cv2.resize(given, size[::-1], interpolation=cv2.INTER_NEAREST)
            log_odds, pixel_att = None, None
            if ctx is None or not object_valid.any():
                probs = np.zeros((num_classes, *size), np.float32)
                probs[0] = 1.0
            else:
                probs, log_odds, pixel_att = self._predict(
                    frame_key, enc, device_labels, bank, ctx, object_valid, first_boxes
                )
            cur = roi_segment.FrameMaps(enc.l1, enc.l4)
            if given is not None:  # objects that start here: their given mask wins
                starting = given > 0
                probs[:, starting] = 0.0
                probs[given[starting], np.nonzero(starting)[0], np.nonzero(starting)[1]] = 1.0
                for k in np.unique(given[starting]):
                    object_valid[k - 1] = True
                    first_boxes[int(k)] = _box(given == k)
                    first_masks[k - 1] = given == k
                if first is None and starting.any():
                    first = cur
                classes = self._majority(
                    device_labels, jnp.asarray(probs.argmax(0)), self.max_superpixels,
                    num_classes,
                )  # fmt: skip
                bank = self._write(bank, features, valid, classes)
                # The given frame's attention maps: from the memory it was just written to
                # (the released code predicts the first frame with the memory fitted on it).
                att, _ = self._attention(frame_key, features, bank, num_classes)
                pixel_att = self._pixel_attention(att, device_labels)
                log_odds = None
            elif ctx is not None and object_valid.any():
                bank = self._update(bank, features, valid, device_labels, jnp.asarray(probs))
            if pixel_att is None:
                pixel_att = jnp.zeros((num_classes - 1, *size, model_lib.ATTENTION_DIM))
            use_log_odds = log_odds is not None and self.last_pred == "log_odds"
            if first is not None:
                ctx = {
                    "first": first,
                    "first_masks": jnp.asarray(first_masks),
                    "prev": cur,
                    "prev_pred": log_odds[1:] if use_log_odds else probs[1:],
                    "prev_att": pixel_att,
                    "probs": probs[1:],
                }
            mask = probs.argmax(0).astype(np.uint8)
            yield cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
