"""Mask-VOS inference exactly as the released `infer_mask.py` runs it (the `:code` protocol).

`inference.MaskDecodingSegmenter` is vosjax's mask decoding (the paper's recurrent refinement,
soft memory masks, a masked ring of memory slots). The released script computes something
else; this module reproduces it step by step with vosjax's E, V and D, for checking against the
authors' code and for reproducing their numbers:

1. Frames are normalised, halved (bilinear, align_corners=False) when they are at least
   `halve_from_width` pixels wide (the first mask is then subsampled [::2, ::2]) and zero
   padded to a multiple of 8, the padding split between both sides (`pad_divide_by`). The
   first mask is a one-hot [K + 1] map padded with zeros in every channel.
2. Memory: a long slot (frame 0) and a short FIFO of `num_recent` slots that starts as copies
   of frame 0. Each slot holds the key, the values V(frame, object maps) and a mask at /8.
   Frame 0's mask is the one-hot first mask resized to /8 (bilinear, align_corners=True).
3. Frame t >= 1: key dot products with every memory position, -1e10 outside a Euclidean radius
   (distance < `radius` cells) for every slot but the long one, divided by the temperature; the
   top-k over all memory positions; their exp, normalised (no max subtraction: exp(20) still
   fits float32). Readout = the top-k weighted memory values; coarse = the top-k weighted
   memory masks [K + 1, h, w].
4. Query value V(frame, coarse objects upsampled x8 with align_corners=True), D, sigmoid, soft
   aggregation -> agg_logits [K + 1, H, W]; the frame's output is (agg_logits + the coarse
   upsampled x8 with align_corners=True) / 2: log-odds and probabilities averaged as they are.
5. Memory entry of frame t: its key, V(frame, the output's object channels) (log-odds mixed with
   probabilities, fed to V as a "mask") and, as its mask, the COARSE map (not the output).
6. The outputs are unpadded, resized to the original size (bilinear, align_corners=True) and
   argmaxed.

Diagnostics: `run(..., tie_margin=...)` also reports, per query cell, the gap between the k-th
and the (k+1)-th memory score and whether float32 can pin the top-k result down at all (near-
ties between candidates with different memory masks, `ambiguous_selection`; inherited through
the memory masks, `unresolved_cells`), for comparing with another implementation.

Scope: every object is given in frame 0 (the DAVIS setting); the released script's handling of
objects that start later (`tracks`) and its two YouTube-VOS sequence hacks are not reproduced.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from vosjax.data import sequence as sequence_lib
from vosjax.methods.maskvos import encoder as encoder_lib
from vosjax.methods.maskvos import mask_model

STRIDE = 8
# Added to the similarity of memory positions outside the radius (the released constant).
OUTSIDE_RADIUS = -1e10
# Bound on one block of the [queries, memory positions] similarity matrix.
BLOCK_BYTES = 128 * 2**20
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


@dataclasses.dataclass(frozen=True)
class ReleasedDecodingConfig:
    """Settings of the released infer_mask.py (configs/ytvos_mask.yaml's TEST section).

    Attributes:
      top_k: memory positions kept per query position (TEST.KNN).
      temperature: divides the key dot products (MemoryBank_dotproduct's TEM).
      radius: Euclidean radius in cells at /8 (TEST.RADIUS) of every memory slot but the first.
      num_recent: short-memory slots (a FIFO; it starts as copies of frame 0).
      halve_from_width: frames at least this wide are halved before inference (960).
    """

    top_k: int = 10
    temperature: float = 0.05
    radius: float = 12.0
    num_recent: int = 5
    halve_from_width: int | None = 960

    def __post_init__(self):
        if self.top_k < 1 or self.num_recent < 1 or not self.temperature > 0:
            raise ValueError(
                f"released decoding top_k={self.top_k}, num_recent={self.num_recent}, "
                f"temperature={self.temperature}: expected top_k >= 1, num_recent >= 1, "
                "temperature > 0"
            )


def pad_amounts(height: int, width: int) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) zero padding to multiples of 8, split as `pad_divide_by`."""
    ph, pw = -height % STRIDE, -width % STRIDE
    return ph // 2, ph - ph // 2, pw // 2, pw - pw // 2


def radius_bias(h: int, w: int, radius: float) -> np.ndarray:
    """float32 [h w (query), h w (memory)]: 0 within the radius, -1e10 outside.

    As the released MaskedAttention: positions (i, j) on an h x w grid, distance
    sqrt(di^2 + dj^2) < radius (symmetric, so the axes' order does not matter).
    """
    ii, jj = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    ii, jj = ii.reshape(-1), jj.reshape(-1)
    d = np.sqrt(((ii[:, None] - ii[None]) ** 2 + (jj[:, None] - jj[None]) ** 2).astype(np.float32))
    return np.where(d < radius, 0.0, OUTSIDE_RADIUS).astype(np.float32)


def top_k_match(
    memory_keys: jax.Array,
    query_keys: jax.Array,
    bias: jax.Array,
    *,
    top_k: int,
    temperature: float,
    content: jax.Array | None = None,
    margin: float | jax.Array = 0.0,
    tolerance: float | jax.Array = 0.0,
) -> tuple[jax.Array, ...]:
    """The released top-k memory matching.

    Args:
      memory_keys: [S, n, C] keys of S memory slots (slot 0: the long one, no radius).
      query_keys: [n, C] keys of the query frame (n = h w).
      bias: [n, n] `radius_bias` (query x memory position), added to slots 1..S-1.
      top_k: positions kept over all S n memory positions.
      temperature: divides the biased dot products.
      content: a diagnostic: when given ([S n, X], what each memory position carries), also
        return `ambiguous_selection` for `margin` and `tolerance`. The kept positions are the
        same.

    Returns:
      (weights float32 [n, k] (exp of the kept values, normalised), indices int32 [n, k] into
      the S n memory positions, slot-major); with content also (ambiguous bool [n], gap
      float32 [n]: the k-th minus the (k+1)-th largest score).
    """
    s, n, c = memory_keys.shape
    flat = memory_keys.reshape(s * n, c)
    rows = max(1, min(n, BLOCK_BYTES // (4 * s * n)))
    blocks = -(-n // rows)
    pad = blocks * rows - n
    queries = jnp.pad(query_keys, ((0, pad), (0, 0))).reshape(blocks, rows, c)
    biases = jnp.pad(bias, ((0, pad), (0, 0))).reshape(blocks, rows, n)

    def scores(q, b):
        sim = jnp.einsum("rc,mc->rm", q, flat, precision=jax.lax.Precision.HIGHEST)
        sim = sim.reshape(rows, s, n)
        sim = jnp.concatenate([sim[:, :1], sim[:, 1:] + b[:, None]], axis=1)
        return sim.reshape(rows, s * n) / temperature

    def one_block(args):
        values, indices = jax.lax.top_k(scores(*args), top_k)
        weights = jnp.exp(values)
        return weights / jnp.sum(weights, axis=1, keepdims=True), values, indices

    weights, values, indices = jax.lax.map(one_block, (queries, biases))
    results = (weights, indices)
    if content is not None:
        # A separate pass (the scores recomputed): sharing them with the top-k makes XLA's CPU
        # top-k some 20x slower.
        def diagnose(args):
            q, b, kept_scores, kept = args
            return ambiguous_selection(
                scores(q, b), kept_scores, kept, content, margin=margin, tolerance=tolerance
            )

        results += jax.lax.map(diagnose, (queries, biases, values, indices))
    return tuple(r.reshape(blocks * rows, *r.shape[2:])[:n] for r in results)


def ambiguous_selection(
    scores: jax.Array,
    kept_scores: jax.Array,
    indices: jax.Array,
    content: jax.Array,
    *,
    margin: float,
    tolerance: float = 0.0,
) -> tuple[jax.Array, jax.Array]:
    """Query positions whose top-k result a score error below `margin` can change.

    A kept candidate and a dropped one can trade places when their scores may be misordered:
    the kept one within `margin` of the best dropped score (the (k+1)-th), the dropped one
    within `margin` of the worst kept score (the k-th). A trade replaces the kept candidate's
    content by the dropped one's at (nearly, the scores are within the margin) the same weight,
    so the weighted content moves by at most
        sum over kept band members i of  w_i max_{dropped band j} max |content_i - content_j|;
    a position is ambiguous when that bound exceeds `tolerance`. Identical copies (frame 0
    fills every memory slot at the start) trade harmlessly.

    Args:
      scores: float32 [n, M] every memory position's score (after the temperature).
      kept_scores: float32 [n, k] the kept scores in decreasing order (`jax.lax.top_k`).
      indices: int [n, k] the kept positions.
      content: [M, X] what each memory position carries (e.g. its memory mask).
      margin: bound on how far float32 noise can move the difference of two scores.
      tolerance: the change of the weighted content that is not counted.

    Returns:
      (ambiguous bool [n], gap float32 [n]: the k-th minus the (k+1)-th largest score).
    """
    n, k = indices.shape
    kept = jnp.zeros(scores.shape, bool).at[jnp.arange(n)[:, None], indices].set(True)
    best_dropped = jnp.max(jnp.where(kept, -jnp.inf, scores), axis=1)
    worst_kept = kept_scores[:, -1]
    dropped_band = ~kept & (worst_kept[:, None] - scores < margin)  # [n, M]
    band = dropped_band[..., None]
    high = jnp.max(jnp.where(band, content[None], -jnp.inf), axis=1)  # [n, X]
    low = jnp.min(jnp.where(band, content[None], jnp.inf), axis=1)
    carried = jnp.take(content, indices, axis=0)  # [n, k, X]
    worst = jnp.maximum(high[:, None] - carried, carried - low[:, None])
    worst = jnp.max(jnp.where(jnp.any(band, axis=1)[:, None], worst, 0.0), axis=-1)  # [n, k]
    weights = jnp.exp(kept_scores - kept_scores[:, :1])
    weights = weights / jnp.sum(weights, axis=1, keepdims=True)
    kept_band = kept_scores - best_dropped[:, None] < margin
    bound = jnp.sum(jnp.where(kept_band, weights * worst, 0.0), axis=1)
    return bound > tolerance, worst_kept - best_dropped


def unresolved_cells(
    ambiguous: jax.Array, indices: jax.Array, memory_unresolved: jax.Array
) -> jax.Array:
    """bool [n]: ambiguous positions and those that keep an unresolved memory position.

    Args:
      ambiguous: bool [n] (`ambiguous_selection`).
      indices: int [n, k] the kept memory positions (`top_k_match`).
      memory_unresolved: bool [S, n'] (or [M]) per memory position, slot-major: whether its
        memory mask (an earlier coarse map) was itself unresolved.
    """
    return ambiguous | jnp.any(jnp.take(memory_unresolved.reshape(-1), indices), axis=1)


def gather_weighted(weights: jax.Array, indices: jax.Array, memory: jax.Array) -> jax.Array:
    """sum_j weights[n, j] memory[..., indices[n, j], :] -> [..., n, X] (memory [..., M, X])."""
    picked = jnp.take(memory, indices, axis=-2)  # [..., n, k, X]
    return jnp.einsum("nk,...nkx->...nx", weights, picked, precision=jax.lax.Precision.HIGHEST)


@dataclasses.dataclass
class FrameOutput:
    """What the released step_seg computes for one frame (padded frame, channels K + 1).

    Attributes:
      output: float32 [K + 1, Hp, Wp] the frame's output (frame 0: the one-hot first mask;
        later frames: (agg_logits + upsampled coarse) / 2).
      coarse: float32 [K + 1, Hp / 8, Wp / 8] the top-k propagated memory masks (None at t = 0).
      agg_logits: float32 [K + 1, Hp, Wp] the decoder's aggregated log-odds (None at t = 0).
      top_k_gap: diagnostic (`run(..., tie_margin=...)`, else None; None at t = 0): float32
        [Hp / 8, Wp / 8] the k-th minus the (k+1)-th largest memory score (after the
        temperature) per query cell.
      ambiguous: diagnostic, bool [Hp / 8, Wp / 8]: cells whose top-k selection a score error
        below the tie margin can change for candidates with other memory masks
        (`ambiguous_selection`), so float32 cannot pin down their coarse values.
      unresolved: diagnostic, bool [Hp / 8, Wp / 8]: ambiguous cells and the cells that keep a
        memory position whose mask (an earlier coarse map) was unresolved: the coarse values
        float32 cannot pin down, directly or inherited through the memory.
    """

    output: np.ndarray
    coarse: np.ndarray | None = None
    agg_logits: np.ndarray | None = None
    top_k_gap: np.ndarray | None = None
    ambiguous: np.ndarray | None = None
    unresolved: np.ndarray | None = None


class ReleasedMaskDecoder:
    """The released infer_mask.step_seg with vosjax's E (`encoder`) and V, D (`head`)."""

    def __init__(
        self,
        encoder: encoder_lib.MaskVOSEncoder,
        head: mask_model.MaskHead,
        config: ReleasedDecodingConfig = ReleasedDecodingConfig(),
    ):
        self.config = config
        graphdef_e, state_e = nnx.split(encoder)
        graphdef_h, state_h = nnx.split(head)

        @jax.jit
        def encode(state, frame):
            return nnx.merge(graphdef_e, state)(frame[None], train=False)

        @jax.jit
        def value(state, frame, maps, res4):
            model = nnx.merge(graphdef_h, state)
            return model.encode(frame[None], maps[None], res4)[0]  # [K, h, w, C]

        @functools.partial(jax.jit, static_argnames="diagnose")
        def segment(state, *args, diagnose):
            return self._segment(nnx.merge(graphdef_h, state), *args, diagnose=diagnose)

        self._encode = lambda frame: encode(state_e, frame)
        self._value = lambda frame, maps, res4: value(state_h, frame, maps, res4)
        self._segment_jit = lambda *args, diagnose: segment(state_h, *args, diagnose=diagnose)

    def _segment(
        self,
        head,
        frame,
        features,
        keys,
        values,
        masks,
        bias,
        unresolved,
        margin,
        tolerance,
        *,
        diagnose,
    ):
        """One query frame: top-k match, readout, coarse, V, D, aggregation, mixing.

        With `diagnose`, also the top-k diagnostics (see FrameOutput) for the memory's
        `unresolved` flags [S, h w], the tie `margin` and the coarse `tolerance`; else the
        fourth result is None.
        """
        cfg = self.config
        _, h, w, c = features["key"].shape
        hp, wp = frame.shape[:2]
        match = top_k_match(
            keys,
            features["key"][0].reshape(h * w, c),
            bias,
            top_k=cfg.top_k,
            temperature=cfg.temperature,
            content=masks.transpose(0, 2, 1).reshape(-1, masks.shape[1]) if diagnose else None,
            margin=margin,
            tolerance=tolerance,
        )
        weights, indices = match[:2]
        k = values.shape[1]
        # values [S, K, h w, C] -> [K, S h w, C]; masks [S, K + 1, h w] -> [K + 1, S h w, 1].
        memory_values = values.transpose(1, 0, 2, 3).reshape(k, -1, values.shape[-1])
        readout = gather_weighted(weights, indices, memory_values)  # [K, h w, C]
        memory_masks = masks.transpose(1, 0, 2).reshape(k + 1, -1, 1)
        coarse = gather_weighted(weights, indices, memory_masks)[..., 0].reshape(k + 1, h, w)
        query_values = head.encode(frame[None], coarse[None, 1:], features["res4"])[0]
        logits = head.decoder(
            readout.reshape(k, h, w, -1),
            query_values,
            jnp.repeat(features["f3"], k, axis=0),
            jnp.repeat(features["f2"], k, axis=0),
            output_size=(hp, wp),
        )
        agg = mask_model.soft_aggregate(jax.nn.sigmoid(logits)[None])[0]
        output = (agg + mask_model.resize_align_corners(coarse, hp, wp)) / 2
        if not diagnose:
            return output, coarse, agg, None
        ambiguous, gap = match[2:]
        diagnostics = {
            "top_k_gap": gap.reshape(h, w),
            "ambiguous": ambiguous.reshape(h, w),
            "unresolved": unresolved_cells(ambiguous, indices, unresolved).reshape(h, w),
        }
        return output, coarse, agg, diagnostics

    def segment(self, sequence: sequence_lib.VideoSequence) -> Iterator[np.ndarray]:
        """`evaluate.Segmenter`: one uint8 [H, W] mask of object ids per frame.

        Frames are read lazily, normalised as the released DataSeg (x / 255, ImageNet mean /
        std) and halved when wide. Every object must start in frame 0.

        Raises:
          ValueError: an object starts after frame 0 (not reproduced, see the module doc).
        """
        size = tuple(int(v) for v in sequence.image_size)
        starts = sequence.start_frames
        if any(start != 0 for start in starts.values()):
            raise ValueError(
                f"{sequence.name}: objects starting after frame 0 ({starts}); the released "
                "protocol here covers objects given in frame 0 only"
            )
        if not starts:
            for _ in range(len(sequence)):
                yield np.zeros(size, np.uint8)
            return
        ids = sorted(starts)
        channel_of = np.zeros((256,), np.int64)
        channel_of[ids] = np.arange(1, len(ids) + 1)
        id_of = np.array([0, *ids], np.uint8)
        mask = channel_of[sequence.read_mask(0)]
        halve = self.config.halve_from_width is not None and size[1] >= self.config.halve_from_width
        if halve:
            mask = mask[::2, ::2]

        class Frames:
            def __len__(_):
                return len(sequence)

            def __getitem__(_, t):
                frame = normalize(sequence.read_frame(t))
                return prepare(frame[None], mask, self.config)[0][0]

        small = mask.shape
        for result in self.run(Frames(), mask, len(ids)):
            probs = unpad_and_resize(result.output, small, size)
            yield id_of[np.argmax(probs, axis=0)]

    def run(
        self,
        frames,
        first_mask: np.ndarray,
        num_objects: int,
        tie_margin: float | None = None,
        tie_tolerance: float = 0.0,
    ) -> Iterator[FrameOutput]:
        """Runs the protocol frame by frame on the padded frames.

        Args:
          frames: T frames, float32 [H, W, 3] each (an array [T, H, W, 3] or any sequence read
            lazily), normalised with ImageNet mean / std, already halved if they are wide (see
            `prepare`).
          first_mask: int [H, W] object channels of frame 0 (0 background, 1..K).
          num_objects: K.
          tie_margin: when given, the FrameOutputs carry the top-k diagnostics (`top_k_gap`,
            `ambiguous`, `unresolved`) for this bound (in score units, after the temperature)
            on how far float32 noise can move the difference of two memory scores. The
            outputs are the same either way.
          tie_tolerance: a trade of near-tied candidates that moves the coarse map by at most
            this much does not make a cell ambiguous (`ambiguous_selection`).

        Yields:
          one FrameOutput per frame, for the frame padded to multiples of 8.
        """
        cfg = self.config
        t_len = len(frames)
        height, width = first_mask.shape
        top, bottom, left, right = pad_amounts(height, width)
        hp, wp = height + top + bottom, width + left + right
        h, w = hp // STRIDE, wp // STRIDE
        one_hot = np.asarray(first_mask)[None] == np.arange(num_objects + 1)[:, None, None]
        one_hot = np.pad(one_hot.astype(np.float32), ((0, 0), (top, bottom), (left, right)))
        bias = jnp.asarray(radius_bias(h, w, cfg.radius))
        output = jnp.asarray(one_hot)
        first_small = mask_model.resize_align_corners(output, h, w).reshape(num_objects + 1, -1)
        keys = values = masks = unresolved = None
        diagnose = tie_margin is not None
        for t in range(t_len):
            frame = jnp.asarray(np.pad(frames[t], ((top, bottom), (left, right), (0, 0))))
            features = self._encode(frame)
            key = features["key"][0].reshape(h * w, -1)
            if t == 0:
                result = FrameOutput(np.asarray(output))
            else:
                output, coarse, agg, diagnostics = self._segment_jit(
                    frame,
                    features,
                    keys,
                    values,
                    masks,
                    bias,
                    unresolved,
                    None if tie_margin is None else jnp.float32(tie_margin),
                    None if tie_margin is None else jnp.float32(tie_tolerance),
                    diagnose=diagnose,
                )
                result = FrameOutput(np.asarray(output), np.asarray(coarse), np.asarray(agg))
                if diagnose:
                    for name, x in diagnostics.items():
                        setattr(result, name, np.asarray(x))
            yield result
            if t == t_len - 1:
                break  # the last frame's memory entry is never read
            value = self._value(frame, output[1:], features["res4"])
            value = value.reshape(num_objects, h * w, -1)
            if t == 0:  # the long slot and num_recent copies of frame 0
                copies = cfg.num_recent + 1
                keys = jnp.stack([key] * copies)
                values = jnp.stack([value] * copies)
                masks = jnp.stack([first_small] * copies)
                unresolved = jnp.zeros((copies, h * w), bool)
            else:  # FIFO: drop the oldest short slot, the COARSE map is the memory mask
                keep = lambda x, new: jnp.concatenate([x[:1], x[2:], new[None]])  # noqa: E731
                keys = keep(keys, key)
                values = keep(values, value)
                masks = keep(masks, coarse.reshape(num_objects + 1, -1))
                if diagnose:
                    unresolved = keep(unresolved, diagnostics["unresolved"].reshape(-1))


def normalize(frame: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> float32, as the released loader: x / 255, then ImageNet mean / std."""
    x = np.asarray(frame).astype(np.float32) / np.float32(255.0)
    return (x - IMAGENET_MEAN) / IMAGENET_STD


def prepare(
    frames: np.ndarray, first_mask: np.ndarray, config: ReleasedDecodingConfig
) -> tuple[np.ndarray, np.ndarray]:
    """Halves wide frames as the release does: (frames [T, H, W, 3], first_mask [H, W]).

    Frames at least `halve_from_width` wide are resized to half (bilinear, align_corners=False,
    no antialiasing: torch's F.interpolate) and the mask is subsampled [::2, ::2].
    """
    t, height, width = frames.shape[:3]
    if config.halve_from_width is None or width < config.halve_from_width:
        return frames, first_mask
    small = jax.image.resize(
        jnp.asarray(frames), (t, height // 2, width // 2, 3), "bilinear", antialias=False
    )
    return np.asarray(small), np.asarray(first_mask)[::2, ::2]


def unpad_and_resize(
    output: np.ndarray, padded_from: tuple[int, int], size: tuple[int, int]
) -> np.ndarray:
    """[C, Hp, Wp] -> [C, H, W]: crop the padding of a (H', W') frame, resize align_corners."""
    top, bottom, left, right = pad_amounts(*padded_from)
    hp, wp = output.shape[-2:]
    cropped = output[:, top : hp - bottom, left : wp - right]
    return np.asarray(mask_model.resize_align_corners(jnp.asarray(cropped), *size))
