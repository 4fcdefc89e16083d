"""The released per-object segmentation step (`My_Net.segment`), on each object's boxes.

For every object k = 1..K (channel k of the predictions; label k + 1 in the released code), with
boxes (rmin, rmax, cmin, cmax), end-exclusive, of the first, the last and this frame:
1. crops: the first frame's mask (channel k of the first prediction) and L1 inside its first
   box, the last prediction's channel k, L1 and attention maps inside the last box, this
   frame's L1 and attention maps inside this box;
2. everything is resized to this box's size: the first mask with torch's 'nearest', the rest
   bilinearly (align_corners=False), then zero-padded (centred) to multiples of 4: h x w;
3. the L4 maps of the three frames are cut by RoIAlign (aligned=False, sampling ratio -1,
   scale 1/4) with each frame's own box in pixels, to h/4 x w/4 cells;
4. MemorySelect gates the last and this frame's L4 with their attention maps and L1 ->
   518 channels, after the first frame's RoI L4: 777 channels; SegmenterN takes
   [first mask, last prediction, first L1] (69 channels), those 777 and this frame's
   attention maps, and gives 2 logits on h x w;
5. the padding is removed, the logits are placed in the frame, the foreground probability is
   softmax(logits)[1] inside the box and 0 outside (the released code adds 1e7 to the
   background logit there);
then `soft_aggregation.soft_aggregate_logits(..., odds='ratio')` gives the frame's log-odds.

Boxes set the shapes: the crops and resizes run op by op, the networks are jitted per padded
box size.
The "last prediction" is what the caller passes: a one-hot mask on the first frame and the
previous call's log-odds later (as the released test loop does).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from vosjax.methods.shls import model as model_lib
from vosjax.ops import roi, soft_aggregation

Box = tuple[int, int, int, int]  # rmin, rmax, cmin, cmax (end-exclusive), as the released code


class FrameMaps(NamedTuple):
    """One frame's embedding maps: l1 [H, W, l1_dim], l4 [h4, w4, l4_dim]."""

    l1: jax.Array
    l4: jax.Array


class ObjectOutput(NamedTuple):
    """Intermediate values of one object.

    Attributes:
      mem_select: [1, h/4, w/4, 2 l4_dim], MemorySelect's output.
      logits: [1, h, w, 2], SegmenterN's logits on the padded box.
      l1_input_shape: (h, w, l1_dim + 2) of SegmenterN's L1 input.
      fg_prob: [H, W], the object's foreground probability (0 outside its box).
    """

    mem_select: jax.Array
    logits: jax.Array
    l1_input_shape: tuple[int, int, int]
    fg_prob: jax.Array


class SegmentOutput(NamedTuple):
    """log_odds [K + 1, H, W] (channel 0 background), fg_prob [K, H, W], objects."""

    log_odds: jax.Array
    fg_prob: jax.Array
    objects: list[ObjectOutput]


def _crop(x: jax.Array, box: Box) -> jax.Array:
    """[..., H, W, C] inside box (rmin, rmax, cmin, cmax)."""
    r0, r1, c0, c1 = box
    return x[..., r0:r1, c0:c1, :]


def _check_box(name: str, box: Box, size: tuple[int, int]) -> Box:
    box = tuple(int(v) for v in box)
    r0, r1, c0, c1 = box
    if not (0 <= r0 < r1 <= size[0] and 0 <= c0 < c1 <= size[1]):
        raise ValueError(f"{name}={box}: expected 0 <= rmin < rmax <= {size[0]} and "
                         f"0 <= cmin < cmax <= {size[1]}")  # fmt: skip
    return box


@functools.partial(nnx.jit, static_argnames="train")
def _networks(
    model: model_lib.SHLSModel,
    att: jax.Array,
    l1_pair: jax.Array,
    l4_pair: jax.Array,
    first_l4: jax.Array,
    l1_in: jax.Array,
    *,
    train: bool,
) -> tuple[jax.Array, jax.Array]:
    """MemorySelect + SegmenterN on one padded box, compiled once per padded box size (the
    crops and resizes around them run op by op)."""
    mem = model.mem_select(att[None], l1_pair[None], l4_pair[None])  # [1, h4, w4, 2 C]
    l4_in = jnp.concatenate([first_l4[None], mem], -1)
    return mem, model.segmenter(l1_in, l4_in, att[1:], train=train)  # [1, hp, wp, 2]


def segment_object(
    model: model_lib.SHLSModel,
    *,
    first: FrameMaps,
    first_mask: jax.Array,
    first_box: Box,
    last: FrameMaps,
    last_pred: jax.Array,
    last_box: Box,
    last_attention: jax.Array,
    this: FrameMaps,
    this_box: Box,
    this_attention: jax.Array,
    train: bool = False,
) -> ObjectOutput:
    """Steps 1-5 of the module docstring for one object.

    Args:
      model: the SHLS model (mem_select, segmenter).
      first, last, this: the frames' maps.
      first_mask: [H, W] the object's channel of the first prediction.
      first_box, last_box, this_box: the object's boxes in those frames.
      last_pred: [H, W] the object's channel of the last prediction.
      last_attention: [h_l, w_l, 4] attention maps inside last_box.
      this_attention: [h_t, w_t, 4] attention maps inside this_box.
      train: batch statistics in the segmenter's BatchNorms.

    Returns:
      An `ObjectOutput`.

    Raises:
      ValueError: on a box outside the frame or attention maps of another size than their box.
    """
    size = this.l1.shape[:2]
    fb = _check_box("first_box", first_box, size)
    lb = _check_box("last_box", last_box, size)
    tb = _check_box("this_box", this_box, size)
    for name, att, box in (
        ("last_attention", last_attention, lb),
        ("this_attention", this_attention, tb),
    ):
        if att.shape[:2] != (box[1] - box[0], box[3] - box[2]):
            raise ValueError(f"{name} of shape {att.shape}: expected the box {box}'s size")
    th, tw = tb[1] - tb[0], tb[3] - tb[2]
    fs = roi.resize_nearest(_crop(first_mask[..., None], fb), (th, tw))
    ff = roi.resize_bilinear(_crop(first.l1, fb), (th, tw))
    lam = roi.resize_bilinear(last_attention, (th, tw))
    ls = roi.resize_bilinear(_crop(last_pred[..., None].astype(jnp.float32), lb), (th, tw))
    lf = roi.resize_bilinear(_crop(last.l1, lb), (th, tw))
    tf = _crop(this.l1, tb)

    att, pad = roi.pad_divide_by(jnp.stack([lam, this_attention]), 4)
    l1_pair, _ = roi.pad_divide_by(jnp.stack([lf, tf]), 4)
    hp, wp = att.shape[1:3]
    cells = (hp // 4, wp // 4)

    def roi_l4(maps: FrameMaps, box: Box) -> jax.Array:
        r0, r1, c0, c1 = box
        return roi.roi_align(maps.l4, (c0, r0, c1, r1), cells, spatial_scale=0.25)

    l4_pair = jnp.stack([roi_l4(last, lb), roi_l4(this, tb)])
    l1_in, _ = roi.pad_divide_by(jnp.concatenate([fs, ls, ff], -1)[None], 4)
    mem, logits = _networks(model, att, l1_pair, l4_pair, roi_l4(first, fb), l1_in, train=train)

    inside = jax.nn.softmax(roi.pad_remove(logits, pad)[0], axis=-1)[..., 1]
    r0, r1, c0, c1 = tb
    fg = jnp.zeros(size, jnp.float32).at[r0:r1, c0:c1].set(inside)
    return ObjectOutput(mem, logits, tuple(int(v) for v in l1_in.shape[1:]), fg)


def segment(
    model: model_lib.SHLSModel,
    *,
    first: FrameMaps,
    first_pred: jax.Array,
    first_boxes: Sequence[Box],
    last: FrameMaps,
    last_pred: jax.Array,
    last_boxes: Sequence[Box],
    last_attention: Sequence[jax.Array],
    this: FrameMaps,
    this_boxes: Sequence[Box],
    this_attention: Sequence[jax.Array],
    train: bool = False,
) -> SegmentOutput:
    """The released `My_Net.segment` for K objects (module docstring).

    Args:
      model: the SHLS model.
      first, last, this: the frames' maps.
      first_pred: [K + 1, H, W] the first frame's prediction (one-hot; channel 0 background).
      first_boxes: K boxes of the first frame.
      last_pred: [K + 1, H, W] the last prediction (one-hot, or the last call's log-odds).
      last_boxes, last_attention: K boxes and [h, w, 4] attention maps of the last frame.
      this_boxes, this_attention: the same for this frame.
      train: batch statistics in the segmenter's BatchNorms.

    Returns:
      A `SegmentOutput`.

    Raises:
      ValueError: when the numbers of objects differ.
    """
    k = len(this_boxes)
    lengths = {len(first_boxes), len(last_boxes), len(last_attention), len(this_attention),
               first_pred.shape[0] - 1, last_pred.shape[0] - 1}  # fmt: skip
    if lengths != {k}:
        raise ValueError(f"segment: {k} objects in this_boxes, but the other inputs hold "
                         f"{sorted(lengths)} (predictions have K + 1 channels)")  # fmt: skip
    objects = [
        segment_object(
            model,
            first=first,
            first_mask=first_pred[c],
            first_box=first_boxes[c - 1],
            last=last,
            last_pred=last_pred[c],
            last_box=last_boxes[c - 1],
            last_attention=last_attention[c - 1],
            this=this,
            this_box=this_boxes[c - 1],
            this_attention=this_attention[c - 1],
            train=train,
        )
        for c in range(1, k + 1)
    ]
    fg = jnp.stack([o.fg_prob for o in objects])
    log_odds = soft_aggregation.soft_aggregate_logits(fg, jnp.ones((k,), bool), odds="ratio")
    return SegmentOutput(log_odds, fg, objects)


def segment_full_frame(
    model: model_lib.SHLSModel,
    *,
    first: FrameMaps,
    first_mask: jax.Array,
    last: FrameMaps,
    last_pred: jax.Array,
    last_attention: jax.Array,
    this: FrameMaps,
    this_attention: jax.Array,
    train: bool = False,
) -> jax.Array:
    """`segment_object` with every box the whole frame, batched and jittable.

    The crops and resizes are then identities and the frame is padded to multiples of 4; the
    RoIAlign of the whole frame still samples (its cells sit half a cell off the /4 grid).
    vosjax's training and inference use it (boxes that follow the data would change shapes
    from step to step); a caller multiplies the foreground by its region of interest.

    Args:
      model: the SHLS model.
      first, last, this: FrameMaps with a leading batch axis B: l1 [B, H, W, l1_dim],
        l4 [B, h4, w4, l4_dim].
      first_mask: [B, H, W] each object's mask in the first frame.
      last_pred: [B, H, W] each object's last prediction.
      last_attention: [B, H, W, 4] attention maps of the last frame.
      this_attention: [B, H, W, 4] of this frame.
      train: batch statistics in the segmenter's BatchNorms.

    Returns:
      float32 [B, H, W, 2] logits (background first).
    """
    b, h, w = first_mask.shape
    cells = (-(-h // 4), -(-w // 4))
    box = (0, 0, w, h)

    def roi_l4(maps: FrameMaps) -> jax.Array:
        return roi.roi_align(maps.l4, box, cells, spatial_scale=0.25)

    att, pad = roi.pad_divide_by(jnp.stack([last_attention, this_attention], 1), 4)
    l1_pair, _ = roi.pad_divide_by(jnp.stack([last.l1, this.l1], 1), 4)
    l4_pair = jnp.stack([roi_l4(last), roi_l4(this)], 1)
    mem = model.mem_select(att, l1_pair, l4_pair)
    l4_in = jnp.concatenate([roi_l4(first), mem], -1)
    masks = jnp.stack([first_mask, last_pred], -1).astype(first.l1.dtype)
    l1_in, _ = roi.pad_divide_by(jnp.concatenate([masks, first.l1], -1), 4)
    logits = model.segmenter(l1_in, l4_in, att[:, 1], train=train)
    return roi.pad_remove(logits, pad)
