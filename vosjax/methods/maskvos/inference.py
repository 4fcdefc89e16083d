"""Mask-VOS inference by mask decoding (Li et al., CVPR 2023): a `Segmenter` for vosjax.evaluate.

    segmenter = inference.MaskDecodingSegmenter(encoder, head, inference.from_config(
        config.eval.decoding))
    for ids in segmenter.segment(sequence):      # uint8 [H, W] object ids, one per frame
        ...

Per frame t (frames resized so that the short side is `short_side`, bottom / right padded with
the ImageNet mean colour to a multiple of 8, cropped back before the output is resized):
1. E gives the query key [h, w, 128] (L2-normalised, stride 8), res4, f3 and f2.
2. Affinity (`top_k_affinity`): cosine of the query key with every memory position; memory
   frames other than the first only within a Euclidean radius (dy^2 + dx^2 < 12^2 cells, as the
   released code); the top k = 10 over all memory frames jointly; softmax of sim / 0.05 over
   the kept k.
3. Readout (`read_memory`): V_q = A^T V_mem per object [K, h, w, C], and the coarse mask
   = A^T (the memory's soft masks) [K + 1, h, w] (background + objects, stride 8).
4. Decoding: round 0 is `MaskHead.decode(frame, coarse object masks, V_q, res4, f3, f2)`. Each
   of the `refine_rounds` further rounds (the paper's recurrent refinement) takes the previous
   round's per-object probabilities sigmoid(logits), averages them over 8 x 8 cells (stride 8)
   to a new coarse mask, and decodes again with the same readout V_q (the query value is
   re-encoded from the new coarse mask inside `decode`): rounds + 1 decoder calls per frame.
5. Soft aggregation of the last round's logits (`aggregate_objects`, objects not yet started
   have probability 0) to K + 1 class logits. With `mix_coarse` (the released code) these are
   averaged as they are with the coarse probabilities [K + 1] upsampled x8 (bilinear), once,
   after the last round. softmax over the valid classes gives the frame's probabilities.
6. Memory entry: the key, the probabilities averaged over 8 x 8 cells [h, w, K + 1] and the
   values V(frame, own object probabilities) [h, w, K, C].
7. Output: the probabilities cropped to the resized frame, bilinearly resized to the
   sequence's size, argmax, channel -> object id.

Memory: the first frame (the first annotated one; it holds every object given there) and every
later frame where new objects are given are kept for the whole video (long-term slots, one per
distinct start frame); the `num_recent` = 5 most recent predicted frames sit in a fixed-size
ring (short-term slots). Slots not yet filled are masked out, so one compiled step serves every
frame of every video with the same frame size, number of objects and number of start frames.
On a frame where objects are given, the given objects' channels are their one-hot masks, the
other channels (predicted for objects that started earlier) are scaled by 1 - the given mass,
and the output shows the given masks exactly.

Departures from the released `infer_mask.py`, by design: the recent ring starts empty (the
release fills it with 5 copies of frame 0, which duplicates frame 0's positions in the top-k;
`pad_recent_with_first=True` does that); masks go to stride 8 by 8 x 8 averaging (not bilinear
sampling); the output resize is half-pixel bilinear (not align_corners=True); frames >= 960
pixels wide are not halved and the two YouTube-VOS sequence-specific hacks are left out.
`released_inference.ReleasedMaskDecoder` (`config.eval.segmenter='released'`, the `:code`
configs' choice) computes the released protocol itself, step by step.
"""

from __future__ import annotations

import collections
import dataclasses
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from flax import nnx

from vosjax.data import sequence as sequence_lib
from vosjax.methods.maskvos import encoder as encoder_lib
from vosjax.methods.maskvos import mask_model
from vosjax.ops import affinity, color, label_resize

STRIDE = 8
# Similarity of excluded memory positions: finite, so that exp() is exactly 0 without NaNs.
_EXCLUDED = -1e30
# Bound on the gathered [rows, w, k, X] memory entries of one step of `read_memory`.
READOUT_STEP_BYTES = 64 * 2**20

# frames [B, Hp, Wp, 3] float32 in 0..255 units (padded) -> keys [B, Hp / 8, Wp / 8, D].
KeyFn = Callable[[jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class MaskDecodingConfig:
    """Settings of Mask-VOS's mask-decoding inference (defaults: the paper / released code).

    Attributes:
      top_k: memory positions kept per query position, over all memory frames jointly.
      temperature: softmax temperature of the key cosines.
      num_recent: recent frames in the short-term memory ring.
      radius: Euclidean radius (cells at stride 8, dy^2 + dx^2 < radius^2) of the memory frames
        other than the first; None for no restriction.
      restrict_first_frame: apply the radius to the first frame too (the release: False).
      refine_rounds: decoding rounds after the first (rounds + 1 decoder calls per frame).
      mix_coarse: average the aggregated logits with the x8 coarse probabilities (the release).
      pad_recent_with_first: start the recent ring with copies of the first frame (the release).
      short_side: frames are resized so that their short side is this; None keeps the size.
      block_size: query block (bh, bw) or side of the affinity computation; None picks one.
    """

    top_k: int = 10
    temperature: float = 0.05
    num_recent: int = 5
    radius: float | None = 12.0
    restrict_first_frame: bool = False
    refine_rounds: int = 3
    mix_coarse: bool = False
    pad_recent_with_first: bool = False
    short_side: int | None = 480
    block_size: int | tuple[int, int] | None = None

    def __post_init__(self):
        def fail(field: str, expected: str) -> None:
            raise ValueError(
                f"config.eval.decoding.{field}: expected {expected}, got {getattr(self, field)!r}"
            )

        def is_int(x: Any) -> bool:
            return isinstance(x, int | np.integer) and not isinstance(x, bool)

        def is_number(x: Any) -> bool:
            return isinstance(x, int | float | np.number) and not isinstance(x, bool)

        if not is_int(self.top_k) or self.top_k < 1:
            fail("top_k", "an int >= 1")
        if not is_number(self.temperature) or not self.temperature > 0:
            fail("temperature", "a number > 0")
        if not is_int(self.num_recent) or self.num_recent < 0:
            fail("num_recent", "an int >= 0")
        if self.radius is not None and (not is_number(self.radius) or not self.radius > 0):
            fail("radius", "None or a number > 0")
        if not is_int(self.refine_rounds) or self.refine_rounds < 0:
            fail("refine_rounds", "an int >= 0")
        for field in ("restrict_first_frame", "mix_coarse", "pad_recent_with_first"):
            if not isinstance(getattr(self, field), bool):
                fail(field, "a bool")
        if self.short_side is not None and (not is_int(self.short_side) or self.short_side < 8):
            fail("short_side", "None or an int >= 8")
        if isinstance(self.block_size, list):
            object.__setattr__(self, "block_size", tuple(self.block_size))
        bs = self.block_size
        if bs is not None and not (
            (is_int(bs) and bs >= 1)
            or (isinstance(bs, tuple) and len(bs) == 2 and all(is_int(b) and b >= 1 for b in bs))
        ):
            fail("block_size", "None, an int >= 1 or a pair (bh, bw)")


def from_config(decoding: ml_collections.ConfigDict | Mapping) -> MaskDecodingConfig:
    """MaskDecodingConfig from `config.eval.decoding` (any subset of its fields).

    Raises:
      ValueError: an unknown field or an invalid value (naming config.eval.decoding.<field>).
    """
    values = dict(decoding.to_dict() if hasattr(decoding, "to_dict") else decoding)
    fields = {f.name for f in dataclasses.fields(MaskDecodingConfig)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(
            f"config.eval.decoding: unknown field(s) {unknown}; expected some of {sorted(fields)}"
        )
    return MaskDecodingConfig(**values)


def _assemble(blocks: jax.Array, plan: affinity.BlockPlan) -> jax.Array:
    """[num_blocks, bh, bw, ...] -> [h, w, ...]; each position from the block that owns it."""
    h, w = plan.grid
    bh, bw = plan.block
    num_x = -(-w // bw)
    by = np.minimum(np.arange(h) // bh, -(-h // bh) - 1)
    bx = np.minimum(np.arange(w) // bw, num_x - 1)
    block_id = by[:, None] * num_x + bx[None, :]
    oy = np.arange(h)[:, None] - plan.starts[block_id, 0]
    ox = np.arange(w)[None, :] - plan.starts[block_id, 1]
    return blocks[block_id, oy, ox]


def top_k_affinity(
    query: jax.Array,
    memory: jax.Array,
    valid: jax.Array,
    *,
    top_k: int,
    temperature: float,
    radius: float | None = None,
    restrict_first: bool = False,
    block_size: int | tuple[int, int] | None = None,
    blocks_per_step: int | None = None,
    group_size: int = 32,
) -> tuple[jax.Array, jax.Array]:
    """Sparse affinity of every query position to the memory: top-k weights and their positions.

    Computed block-wise over the query grid against windows of the memory frames (the plans of
    `vosjax.ops.affinity`), never as a dense (h w) x (M h w) matrix.

    Args:
      query: [h, w, D] L2-normalised keys of the query frame.
      memory: [M, h, w, D] L2-normalised keys of the memory frames; frame 0 is the first frame.
      valid: bool [M]; positions of False frames are excluded.
      top_k: positions kept per query position, over all memory frames jointly.
      temperature: softmax temperature of the cosines.
      radius: memory frames 1.. (and 0 if `restrict_first`) only count within
        dy^2 + dx^2 < radius^2 cells of the query position; None for no restriction.
      restrict_first: apply the radius to memory frame 0 too.
      block_size: query block (bh, bw) or side; None: `affinity.choose_block`.
      blocks_per_step: blocks vectorised per loop step; None: 1 on CPU, more on accelerators.
      group_size: group length of `affinity.top_k_grouped`.

    Returns:
      (weights float32 [h, w, k]: softmax of sim / temperature over the kept k,
       indices int32 [h, w, k]: flat memory positions m h w + y w + x of the kept ones).

    Raises:
      ValueError: on shapes that do not fit, or fewer than `top_k` candidate positions.
    """
    h, w, d = query.shape
    m = memory.shape[0]
    if memory.ndim != 4 or memory.shape[1:] != (h, w, d) or valid.shape != (m,):
        raise ValueError(
            f"top_k_affinity: query {query.shape}, memory {memory.shape}, valid {valid.shape}; "
            "expected [h, w, D], [M, h, w, D] and [M]"
        )
    half = affinity.window_radius(radius, "circle")
    rest = m - 1
    if block_size is None:
        block_size = affinity.choose_block((h, w), half, rest, restrict_first)
    plan = affinity.plan_blocks((h, w), block_size, half)
    if blocks_per_step is None:
        blocks_per_step = 1
        if jax.default_backend() != "cpu":
            one = affinity.step_bytes(plan, rest, restrict_first, d, 2 * top_k)
            blocks_per_step = int(
                np.clip(affinity.ACCELERATOR_STEP_BYTES // one, 1, plan.num_blocks)
            )
    candidates = affinity.num_candidates(plan, rest, restrict_first)
    if candidates < top_k:
        raise ValueError(
            f"top_k={top_k} is more than the {candidates} memory positions per query block"
        )
    bh, bw = plan.block
    wh, ww = plan.window
    query = jnp.asarray(query, jnp.float32)
    memory = jnp.asarray(memory, jnp.float32)
    valid = jnp.asarray(valid, bool)

    def one_block(starts: jax.Array) -> tuple[jax.Array, jax.Array]:
        (y0, x0), (sy, sx) = starts[0], starts[1]
        q = jax.lax.dynamic_slice(query, (y0, x0, 0), (bh, bw, d)).reshape(bh * bw, d)
        wy, wx = sy + jnp.arange(wh), sx + jnp.arange(ww)
        dy = wy[None, :] - (y0 + jnp.arange(bh))[:, None]  # [bh, wh]
        dx = wx[None, :] - (x0 + jnp.arange(bw))[:, None]  # [bw, ww]
        near = affinity.in_neighbourhood(
            dy[:, None, :, None], dx[None, :, None, :], radius, "circle"
        )
        near = near.reshape(bh * bw, wh * ww)
        window_pos = (wy[:, None] * w + wx[None, :]).reshape(wh * ww)
        if restrict_first:
            first = jax.lax.dynamic_slice(memory[0], (sy, sx, 0), (wh, ww, d))
            sim = jnp.where(near & valid[0], q @ first.reshape(wh * ww, d).T, _EXCLUDED)
            sims, positions = [sim], [window_pos]
        else:
            sim = jnp.where(valid[0], q @ memory[0].reshape(h * w, d).T, _EXCLUDED)
            sims, positions = [sim], [jnp.arange(h * w)]
        if rest:
            win = jax.lax.dynamic_slice(memory, (1, sy, sx, 0), (rest, wh, ww, d))
            sim = (q @ win.reshape(rest * wh * ww, d).T).reshape(bh * bw, rest, wh * ww)
            keep = near[:, None, :] & valid[1:][None, :, None]
            sims.append(jnp.where(keep, sim, _EXCLUDED).reshape(bh * bw, rest * wh * ww))
            frame_offset = jnp.arange(1, m)[:, None] * (h * w)
            positions.append((frame_offset + window_pos[None, :]).reshape(-1))
        top_sim, j = affinity.top_k_grouped(jnp.concatenate(sims, axis=1), top_k, group_size)
        weights = jax.nn.softmax(top_sim / temperature, axis=-1)
        picked = jnp.concatenate(positions)[j].astype(jnp.int32)
        return weights.reshape(bh, bw, top_k), picked.reshape(bh, bw, top_k)

    starts = jnp.asarray(np.stack([plan.starts, plan.window_starts], 1))
    weights, indices = jax.lax.map(one_block, starts, batch_size=blocks_per_step)
    return _assemble(weights, plan), _assemble(indices, plan)


def read_memory(weights: jax.Array, indices: jax.Array, memory: jax.Array) -> jax.Array:
    """A^T memory: the top-k-weighted sum of memory entries for every query position.

    Args:
      weights: float32 [h, w, k] from `top_k_affinity`.
      indices: int [h, w, k] flat memory positions from `top_k_affinity`.
      memory: [M, h', w', X] entries (masks or values) of the memory frames.

    Returns:
      float32 [h, w, X]; computed a few query rows at a time.
    """
    m, hm, wm, x = memory.shape
    h, w, k = weights.shape
    flat = memory.reshape(m * hm * wm, x)
    rows = int(max(1, min(h, READOUT_STEP_BYTES // max(1, w * k * x * 4))))

    def one_row(args: tuple[jax.Array, jax.Array]) -> jax.Array:
        row_weights, row_indices = args  # [w, k]
        picked = jnp.take(flat, row_indices, axis=0).astype(jnp.float32)  # [w, k, X]
        return jnp.einsum("wk,wkx->wx", row_weights, picked, precision="highest")

    return jax.lax.map(one_row, (weights, indices), batch_size=rows)


def downsample_cells(x: jax.Array) -> jax.Array:
    """Mean over STRIDE x STRIDE cells of the last two axes [..., H, W] (multiples of 8)."""
    *lead, hp, wp = x.shape
    cells = x.reshape(*lead, hp // STRIDE, STRIDE, wp // STRIDE, STRIDE)
    return jnp.mean(cells, axis=(-3, -1))


def padded_size(size: tuple[int, int]) -> tuple[int, int]:
    """(H, W) rounded up to multiples of STRIDE."""
    return tuple(-(-s // STRIDE) * STRIDE for s in size)


def prepare_frame(frame: jax.Array, resized: tuple[int, int]) -> jax.Array:
    """uint8 [H, W, 3] -> float32 [1, Hp, Wp, 3] in 0..255 units: bicubic resize, mean padding.

    The padding is the ImageNet mean colour, which `color.normalize_frames` maps to 0.
    """
    x = frame.astype(jnp.float32)
    if tuple(x.shape[:2]) != tuple(resized):
        x = jnp.clip(jax.image.resize(x, (*resized, 3), "bicubic"), 0.0, 255.0)
    hp, wp = padded_size(resized)
    mean = 255.0 * jnp.asarray(color.IMAGENET_MEAN, jnp.float32)
    pads = ((0, hp - resized[0]), (0, wp - resized[1]), (0, 0))
    return (jnp.pad(x - mean, pads) + mean)[None]


class Memory(NamedTuple):
    """Memory frames (leading axis M) or one frame's entry (no M axis), stride-8 grid (h, w)."""

    keys: jax.Array  # [M, h, w, D] L2-normalised
    masks: jax.Array  # [M, h, w, K + 1] soft masks, background first
    values: jax.Array  # [M, h, w, K, C] V(frame, own object mask)


@dataclasses.dataclass(frozen=True)
class FrameResult:
    """What `MaskDecodingSegmenter.run` yields for one frame.

    Attributes:
      index: frame index.
      mask: uint8 [H, W] object ids at the sequence's size.
      probs: float32 [H', W', K + 1] class probabilities at the resized frame size (background,
        then the objects in increasing id order); None before the first annotated frame.
      memory_frames: frames in memory when this frame was predicted: the long-term frames, then
        the recent ones oldest first; () for frames that were not predicted.
    """

    index: int
    mask: np.ndarray
    probs: jax.Array | None
    memory_frames: tuple[int, ...]


class _Slots:
    """Host bookkeeping of the memory slots: long-term slots first, then the recent ring."""

    def __init__(self, num_long: int, num_recent: int):
        self.num_long, self.num_recent = num_long, num_recent
        self.frames = np.full((num_long + num_recent,), -1, np.int64)
        self.ages = np.zeros((num_long + num_recent,), np.int64)
        self.writes = 0
        self.pushes = 0

    def put(self, slot: int, frame: int) -> None:
        self.frames[slot] = frame
        self.ages[slot] = self.writes
        self.writes += 1

    def next_recent(self) -> int:
        slot = self.num_long + self.pushes % self.num_recent
        self.pushes += 1
        return slot

    def in_use(self) -> tuple[int, ...]:
        long = [int(f) for f in self.frames[: self.num_long] if f >= 0]
        ring = [s for s in range(self.num_long, len(self.frames)) if self.frames[s] >= 0]
        ring.sort(key=lambda s: self.ages[s])
        return tuple(long + [int(self.frames[s]) for s in ring])


def _empty_memory(entry: Memory, num_slots: int) -> Memory:
    """Zeroed memory of `num_slots` frames shaped like one frame's entry."""
    return jax.tree.map(lambda e: jnp.zeros((num_slots, *e.shape), e.dtype), entry)


class MaskDecodingSegmenter:
    """Mask-VOS segmentation of a video by memory readout and mask decoding (`Segmenter`).

    Holds the modules (their state is read at the start of every sequence, so weights loaded
    later are used) and the compiled per-frame step. `trace_counts` counts the traces of the
    jitted functions ('step', 'write'): the step compiles once per (frame size, objects,
    start frames, first / later frame), never again as the memory fills.
    """

    def __init__(
        self,
        encoder: encoder_lib.MaskVOSEncoder,
        head: mask_model.MaskHead,
        config: MaskDecodingConfig = MaskDecodingConfig(),
        *,
        key_fn: KeyFn | None = None,
    ):
        """Builds the segmenter.

        Args:
          encoder: E; gives res4, f3, f2 and (without key_fn) the keys.
          head: the MaskHead (V and D).
          config: the inference settings.
          key_fn: optional jnp function frames [B, Hp, Wp, 3] (float32, 0..255 units, padded)
            -> keys [B, Hp / 8, Wp / 8, D] that replaces E's keys (L2-normalised here), e.g.
            colour patches for tests or for a baseline.

        Raises:
          ValueError: E's output stride is not 8.
        """
        if encoder.output_stride != STRIDE:
            raise ValueError(
                f"encoder.output_stride={encoder.output_stride}; Mask-VOS decoding expects 8"
            )
        self.encoder = encoder
        self.head = head
        self.config = config
        self.key_fn = key_fn
        self.trace_counts: collections.Counter[str] = collections.Counter()
        self._graphdef, _ = nnx.split((encoder, head))
        self._step = jax.jit(self._step_impl, static_argnames=("resized", "predict"))
        self._write = jax.jit(self._write_impl, donate_argnums=0)

    @classmethod
    def from_config(
        cls,
        encoder: encoder_lib.MaskVOSEncoder,
        head: mask_model.MaskHead,
        decoding: ml_collections.ConfigDict | Mapping,
        *,
        key_fn: KeyFn | None = None,
    ) -> MaskDecodingSegmenter:
        """The segmenter with the settings of `config.eval.decoding` (see `from_config`)."""
        return cls(encoder, head, from_config(decoding), key_fn=key_fn)

    def resized_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The (H', W') frames are resized to: short side `short_side` (rounded)."""
        short = self.config.short_side
        if short is None:
            return int(size[0]), int(size[1])
        scale = short / min(size)
        return max(1, round(size[0] * scale)), max(1, round(size[1] * scale))

    def segment(self, sequence: sequence_lib.VideoSequence) -> Iterator[np.ndarray]:
        """Yields one uint8 [H, W] mask of object ids per frame of `sequence`."""
        for result in self.run(sequence):
            yield result.mask

    def run(self, sequence: sequence_lib.VideoSequence) -> Iterator[FrameResult]:
        """Yields a `FrameResult` per frame, computing frames lazily, in order."""
        size = tuple(int(s) for s in sequence.image_size)
        starts = sequence.start_frames
        if not starts:
            logging.warning("%s: the given masks hold no object", sequence.name)
            for t in range(len(sequence)):
                yield FrameResult(t, np.zeros(size, np.uint8), None, ())
            return
        ids = sorted(starts)
        k = len(ids)
        channel_of = np.zeros((256,), np.int32)
        channel_of[ids] = np.arange(1, k + 1)
        id_of = np.array([0, *ids], np.uint8)
        object_start = np.array([starts[i] for i in ids])
        start_list = sorted(set(starts.values()))
        long_slot = {s: i for i, s in enumerate(start_list)}
        first = start_list[0]
        resized = self.resized_size(size)
        slots = _Slots(len(start_list), self.config.num_recent)
        state = nnx.state((self.encoder, self.head))
        no_given = jnp.zeros(padded_size(resized), jnp.int32)
        none_annotated = np.zeros((k + 1,), bool)
        memory = None

        for t in range(len(sequence)):
            if t < first:
                yield FrameResult(t, np.zeros(size, np.uint8), None, ())
                continue
            given = None
            given_channels, annotated = no_given, none_annotated
            if t in long_slot:
                given, given_channels, annotated = self._given(sequence, t, channel_of, resized, k)
            predict = t > first
            used = slots.in_use() if predict else ()
            probs, entry = self._step(
                state,
                jnp.asarray(sequence.read_frame(t)),
                memory if predict else None,
                slots.frames >= 0 if predict else None,
                object_start < t,
                given_channels,
                annotated,
                resized=resized,
                predict=predict,
            )
            if memory is None:
                memory = _empty_memory(entry, len(slots.frames))
            if t in long_slot:
                write_to = [long_slot[t]]
                if t == first and self.config.pad_recent_with_first:
                    write_to += list(range(slots.num_long, len(slots.frames)))
            else:
                write_to = [slots.next_recent()] if slots.num_recent else []
            for slot in write_to:
                memory = self._write(memory, entry, slot)
                slots.put(slot, t)

            mask = id_of[label_resize.labels_to_mask(probs, size)]
            if given is not None:
                starting = np.array(sequence.objects_starting_at(t))
                mask = np.where(given > 0, given, np.where(np.isin(mask, starting), 0, mask))
            yield FrameResult(t, mask.astype(np.uint8), probs, used)

    def _given(
        self,
        sequence: sequence_lib.VideoSequence,
        t: int,
        channel_of: np.ndarray,
        resized: tuple[int, int],
        num_objects: int,
    ) -> tuple[np.ndarray, jax.Array, np.ndarray]:
        """The objects given at frame t: (ids [H, W], channels [Hp, Wp], annotated [K + 1])."""
        mask = sequence.read_mask(t)
        starting = np.array(sequence.objects_starting_at(t), np.int64)
        given = np.where(np.isin(mask, starting), mask, 0).astype(np.uint8)
        small = channel_of[given][label_resize.nearest_indices(given.shape[0], resized[0])]
        small = small[:, label_resize.nearest_indices(given.shape[1], resized[1])]
        channels = np.zeros(padded_size(resized), np.int32)
        channels[: resized[0], : resized[1]] = small
        annotated = np.zeros((num_objects + 1,), bool)
        annotated[channel_of[starting]] = True
        return given, jnp.asarray(channels), annotated

    def _write_impl(self, memory: Memory, entry: Memory, slot: jax.Array) -> Memory:
        self.trace_counts["write"] += 1
        return jax.tree.map(lambda mem, e: mem.at[slot].set(e.astype(mem.dtype)), memory, entry)

    def _step_impl(
        self,
        state: Any,
        frame: jax.Array,
        memory: Memory | None,
        slot_valid: jax.Array | None,
        object_valid: jax.Array,
        given_channels: jax.Array,
        annotated: jax.Array,
        *,
        resized: tuple[int, int],
        predict: bool,
    ) -> tuple[jax.Array, Memory]:
        """One frame: (probabilities [H', W', K + 1], the frame's memory entry)."""
        self.trace_counts["step"] += 1
        encoder, head = nnx.merge(self._graphdef, state)
        x = prepare_frame(frame, resized)
        normed = color.normalize_frames(x)
        features = encoder(normed, train=False)
        grid = (x.shape[1] // STRIDE, x.shape[2] // STRIDE)
        if self.key_fn is None:
            key = features["key"][0]
        else:
            key = affinity.l2_normalize(self.key_fn(x))
            if key.ndim != 4 or key.shape[:3] != (1, *grid):
                raise ValueError(
                    f"key_fn returned keys of shape {key.shape}; expected [1, {grid[0]}, "
                    f"{grid[1]}, D] for frames {x.shape}"
                )
            key = key[0]
        k = object_valid.shape[0]
        if predict:
            probs = self._predict(head, normed, features, key, memory, slot_valid, object_valid)
        else:
            probs = jnp.zeros((k + 1, *x.shape[1:3]), jnp.float32).at[0].set(1.0)
        given = jax.nn.one_hot(given_channels, k + 1, axis=0, dtype=jnp.float32)
        given = jnp.where(annotated[:, None, None], given, 0.0)
        mass = jnp.sum(given, axis=0, keepdims=True)
        probs = jnp.where(annotated[:, None, None], given, (1.0 - mass) * probs)
        values = head.encode(normed, probs[None, 1:], features["res4"], train=False)[0]
        entry = Memory(
            keys=key,
            masks=downsample_cells(probs).transpose(1, 2, 0),
            values=values.transpose(1, 2, 0, 3),
        )
        return probs[:, : resized[0], : resized[1]].transpose(1, 2, 0), entry

    def _affinity(
        self, key: jax.Array, memory: Memory, slot_valid: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """`top_k_affinity` of the query key [h, w, D] to the memory with this config."""
        cfg = self.config
        return top_k_affinity(
            key,
            memory.keys,
            slot_valid,
            top_k=cfg.top_k,
            temperature=cfg.temperature,
            radius=cfg.radius,
            restrict_first=cfg.restrict_first_frame,
            block_size=cfg.block_size,
        )

    def _predict(
        self,
        head: mask_model.MaskHead,
        normed: jax.Array,
        features: Mapping[str, jax.Array],
        key: jax.Array,
        memory: Memory,
        slot_valid: jax.Array,
        object_valid: jax.Array,
    ) -> jax.Array:
        """Class probabilities [K + 1, Hp, Wp] of the query frame from the memory."""
        cfg = self.config
        m, h, w, k, c = memory.values.shape
        weights, indices = self._affinity(key, memory, slot_valid)
        coarse = read_memory(weights, indices, memory.masks)  # [h, w, K + 1]
        readout = read_memory(weights, indices, memory.values.reshape(m, h, w, k * c))
        readout = readout.reshape(h, w, k, c).transpose(2, 0, 1, 3)[None]
        readout = readout.astype(memory.values.dtype)

        def decode(coarse_objects: jax.Array) -> jax.Array:
            return head.decode(
                normed,
                coarse_objects,
                readout,
                features["res4"],
                features["f3"],
                features["f2"],
                train=False,
            )

        logits = decode(coarse[..., 1:].transpose(2, 0, 1)[None])
        if cfg.refine_rounds:
            logits = jax.lax.fori_loop(
                0,
                cfg.refine_rounds,
                lambda _, prev: decode(downsample_cells(jax.nn.sigmoid(prev))),
                logits,
            )
        scores = mask_model.aggregate_objects(logits, object_valid[None])[0]  # [K + 1, Hp, Wp]
        if cfg.mix_coarse:
            up = label_resize.resize_labels(coarse, scores.shape[1:])
            scores = 0.5 * (scores + up.transpose(2, 0, 1))
        valid = jnp.concatenate([jnp.ones((1,), bool), object_valid])
        scores = jnp.where(valid[:, None, None], scores, -jnp.inf)
        return jax.nn.softmax(scores, axis=0)
