"""SHLS inference as the released test loop (`shls_LT.test`), `config.eval.protocol='released'`.

For a video whose objects are all given on its first frame (labels 1-based inside: background
1, object k = k + 1):
1. frame 0: superpixels (1-based) made to follow the given mask's borders and labelled by
   majority (`memory.spx_pools(merge=True)`); their superfeatures fit the memory clusterer
   (`memory.ReleasedMemory.fit`); `predict` with the given mask gives frame 0's boxes and
   attention maps;
2. each later frame: its superfeatures -> `predict` (kNN pre-segmentation, outlier filtering,
   boxes, attention maps) -> `roi_segment.segment` per object on the boxes, with the first
   frame's maps and mask, the last frame's maps, boxes, attention maps and prediction (the
   one-hot given mask after frame 0, then the log-odds) -> soft-aggregated log-odds, whose
   arg-max is the segmentation;
3. before the last frame, the confident superpixels (`memory.confident_pools`) enter the
   memory with their pre-segmentation majority label (`ReleasedMemory.update`).
Frames go through the working size of `config.eval.short_side` as in `inference`; the masks
come back to the frame's size by nearest resizing.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import cv2
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vosjax import evaluate
from vosjax.data import sequence as sequence_lib
from vosjax.methods.shls import inference, memory, roi_segment
from vosjax.methods.shls import model as model_lib


class ReleasedSegmenter:
    """`evaluate.Segmenter` running the released SHLS test loop (module docstring)."""

    def __init__(self, model: model_lib.SHLSModel, config: ml_collections.ConfigDict):
        self.config = config
        self.model = model
        self.short_side = config.eval.short_side
        self.superpixel_fn = inference.superpixel_function(config)  # 0-based, as inference's
        self.max_superpixels = config.eval.max_superpixels
        mem = config.memory
        self.make_memory = functools.partial(
            memory.ReleasedMemory,
            k=mem.k,
            ratio=mem.vote_ratio,
            clusters_per_class=mem.clusters_per_class,
            kmeans_iters=mem.released_kmeans_iters,
            kmeans_restarts=mem.released_kmeans_restarts,
            outlier_overlap=mem.outlier_overlap,
            roi_margin=mem.roi_margin,
            seed=config.seed,
        )
        mean, std = tuple(config.eval.mean), tuple(config.eval.std)

        @functools.partial(nnx.jit, static_argnums=3)
        def encode(model, frame, labels, num_segments):
            images = model_lib.normalize(frame[None], mean, std)
            enc = model_lib.embed(model, images, labels[None], num_segments, train=False)
            return enc.l1[0], enc.l4[0], enc.superfeatures[0]

        self._encode = encode

    def _frame(self, frame: np.ndarray, spx: np.ndarray):
        """1-based superpixels -> (FrameMaps, superfeatures [max(spx), D] numpy)."""
        count = int(spx.max())
        if count > self.max_superpixels:
            raise ValueError(
                f"{count} superpixels > config.eval.max_superpixels={self.max_superpixels}"
            )
        l1, l4, sf = self._encode(
            self.model, jnp.asarray(frame), jnp.asarray(spx - 1, jnp.int32), self.max_superpixels
        )
        return roi_segment.FrameMaps(l1, l4), np.asarray(sf[:count])

    def segment(self, sequence: sequence_lib.VideoSequence) -> Iterator[np.ndarray]:
        inputs = evaluate.given_masks(sequence)
        if set(inputs) - {0}:
            raise ValueError(
                f"{sequence.name}: config.eval.protocol='released' needs every object on the "
                f"first frame; objects start at frames {sorted(inputs)}"
            )
        height, width = sequence.image_size
        size = inference.working_size((height, width), self.short_side)
        given = cv2.resize(inputs[0], size[::-1], interpolation=cv2.INTER_NEAREST)
        num_cls = 1 + max(sequence.start_frames, default=0)
        label0 = given.astype(np.int32) + 1
        frame0 = cv2.resize(sequence.read_frame(0), size[::-1], interpolation=cv2.INTER_LINEAR)
        pools, spx0 = memory.spx_pools(self.superpixel_fn(frame0) + 1, label0, merge=True)
        first, sf0 = self._frame(frame0, spx0)
        mem = self.make_memory()
        mem.fit(sf0, pools, num_cls)
        lastseg = label0
        onehot = jnp.asarray(memory.to_onehot(label0, num_cls), jnp.float32)
        lastpred = onehot
        start = mem.predict(sf0, spx0, lastseg, gt=label0)
        boxes, attention = start.boxes, [jnp.asarray(a.transpose(1, 2, 0)) for a in start.attmaps]
        first_boxes, last = boxes, first
        yield inputs[0]
        for t in range(1, len(sequence)):
            frame = cv2.resize(sequence.read_frame(t), size[::-1], interpolation=cv2.INTER_LINEAR)
            spx = self.superpixel_fn(frame) + 1
            this, sf = self._frame(frame, spx)
            pred = mem.predict(sf, spx, lastseg)
            this_attention = [jnp.asarray(a.transpose(1, 2, 0)) for a in pred.attmaps]
            out = roi_segment.segment(
                self.model,
                first=first,
                first_pred=onehot,
                first_boxes=first_boxes,
                last=last,
                last_pred=lastpred,
                last_boxes=boxes,
                last_attention=attention,
                this=this,
                this_boxes=pred.boxes,
                this_attention=this_attention,
            )
            log_odds = np.asarray(out.log_odds)
            seg = np.argmax(log_odds, 0).astype(np.int32) + 1
            boxes, attention, last = pred.boxes, this_attention, this
            lastseg, lastpred = seg, jnp.asarray(log_odds)
            if t < len(sequence) - 1:
                confident = memory.confident_pools(spx, seg, log_odds, num_cls)
                if confident is not None:
                    labels = memory.spx_pools(spx, pred.preseg)
                    keep = confident == 1
                    mem.update(sf[keep], labels[keep])
            mask = (seg - 1).astype(np.uint8)
            yield cv2.resize(mask, (width, height), interpolation=cv2.INTER_NEAREST)
