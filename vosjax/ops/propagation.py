"""Label propagation through a video: the protocol of CRW, DUL, DINO and INO.

Given the soft labels of annotated frames and the features of every frame, each new frame's
labels are predicted from a context (`affinity.propagate`): the frame where the labels were
given (the anchor, CRW's "long memory") plus the `num_recent` most recent frames with their
*predicted* soft labels, held in a fixed-size ring buffer with a validity mask so that one
compiled function serves every frame of every video with the same grid.

    config = propagation.PRESETS["dino"]
    labels0 = propagation.mask_to_labels(mask0, num_classes, (h, w), config.first_mask)
    prop = propagation.VideoPropagator(config, num_classes)
    for probs in prop.run(features, given={0: labels0}):   # probs: [h, w, K], frame 0 too
        ids = prop.to_mask(probs, (H, W))                   # uint8 [H, W]

Objects that first appear at a later frame (YouTube-VOS) follow DUL: every annotated frame s
opens its own context (anchor = frame s, recent frames = those after s), and the prediction is
the sum over contexts of `owned * pred`, where a context owns the channels of the objects
annotated at s (the first annotated frame also owns the background). All contexts share one
ring of recent frames holding the merged predictions, as in DUL, where every context's recent
frames carry the merged masks; an object is absent (probability 0) before its first mask. On an
annotated frame the annotated objects' channels are the given labels and the other channels are
scaled by (1 - the annotated objects' mass) (DUL blends the annotated channels too, which
squares soft given labels).

Each preset reproduces its released evaluation code (checked against it by
tests/reference/propagation_cases.py), reader and writer included:
- `dino` (eval_video_segmentation.py): frames read at short side 480, long side floored to a
  multiple of 64; first mask PIL-nearest to the grid; context = frame 0 + the 7 previous frames
  with their predicted soft labels, square |d| <= 12 on every context frame; top 5 with ties
  kept (`keep_ties`); x8 bilinear, `norm_mask`, argmax, PIL nearest to the frame size; frame
  0's output is the given mask.
- `crw` (videowalk test.py): native size (a patch extractor sees it edge-padded to a multiple
  of 8); soft first label (cv2 INTER_LINEAR); context = frame 0 unrestricted + the 20 previous
  frames, the missing ones being copies of frame 0 (`pad_with_anchor`), Euclidean < 12;
  top 10, softmax; bilinear straight to the frame size, argmax; frame 0's output is the argmax
  of its upsampled soft label.
- `ino` (infer_vos.py, DAVIS): as `dino` with 10 previous frames, R = 40, the long side
  floored to a multiple of 8 and a soft first label (bilinear, align_corners=True).
`pad_with_anchor=False` is the earlier vosjax behaviour (before `num_recent` frames exist
only the existing frames count), `upsample="frame"` upsamples straight to the frame size,
`keep_ties=False` keeps exactly `top_k` positions.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from vosjax.ops import affinity, label_resize

# Re-exported so that callers need only this module.
mask_to_labels = label_resize.mask_to_labels
labels_to_mask = label_resize.labels_to_mask


UPSAMPLE_MODES = ("reader", "frame")
FIRST_OUTPUTS = ("given", "labels")


@dataclasses.dataclass(frozen=True)
class PropagationConfig:
    """Settings of label propagation.

    Attributes:
      top_k: neighbours kept per query position, over all context frames jointly.
      temperature: softmax temperature of the cosine similarities.
      num_recent: recent frames in the context, besides the anchor (first) frame.
      radius: neighbourhood radius in feature cells; None for no restriction.
      neighbourhood: 'square' (|dy|, |dx| <= radius) or 'circle' (dy^2 + dx^2 < radius^2,
        CRW's Euclidean distance < radius).
      restrict_first_frame: apply the neighbourhood to the anchor frame too (CRW: False).
      first_mask: 'nearest' (hard, DINO) or 'bilinear' (soft, CRW / DUL / INO) downsampling of
        the given masks to the feature grid.
      norm_mask: DINO's per-channel min-max normalisation before the argmax (DINO, INO).
      keep_ties: keep every context position as similar as the k-th (DINO's and INO's
        `aff[aff < kth] = 0`); False keeps exactly `top_k` (CRW's `torch.topk`).
      pad_with_anchor: before `num_recent` recent frames exist, the missing ones are copies of
        the anchor frame (CRW pads the video in front with copies of frame 0), so the anchor's
        positions count several times in the top k; False: only existing frames count.
      short_side: the reader's short side (None: native size), see `fit`.
      size_multiple: the reader floors the long side ('resize') or pads both sides ('pad') to
        a multiple of this (DINO 64, INO 8, CRW 8).
      fit: 'resize' (cv2 INTER_LINEAR to `label_resize.reader_size`; DINO, INO) or 'pad'
        (edge padding at the bottom and right; CRW's native size).
      upsample: 'reader' (bilinear to the reader's frame size, argmax, PIL nearest to the
        frame size; DINO, INO) or 'frame' (bilinear straight to the frame size; CRW).
      first_output: the mask written for an annotated frame: 'given' (the given ids where an
        object is given, else the propagated argmax; DINO, INO write the first mask itself) or
        'labels' (the argmax of its labels on the grid, upsampled; CRW).
      block_size: query block (bh, bw) computed at once; None picks one per grid.
      blocks_per_step: blocks vectorised per step; None: 1 on CPU, more on an accelerator.
    """

    top_k: int = 5
    temperature: float = 0.1
    num_recent: int = 7
    radius: float | None = 12.0
    neighbourhood: str = "square"
    restrict_first_frame: bool = True
    first_mask: str = "nearest"
    norm_mask: bool = False
    keep_ties: bool = False
    pad_with_anchor: bool = False
    short_side: int | None = None
    size_multiple: int = 8
    fit: str = "pad"
    upsample: str = "frame"
    first_output: str = "labels"
    block_size: int | tuple[int, int] | None = None
    blocks_per_step: int | None = None

    def __post_init__(self):
        def fail(field: str, expected: str) -> None:
            raise ValueError(
                f"PropagationConfig.{field}: expected {expected}, got {getattr(self, field)!r}"
            )

        if not isinstance(self.top_k, int) or self.top_k < 1:
            fail("top_k", "an int >= 1")
        if not self.temperature > 0:
            fail("temperature", "a number > 0")
        if not isinstance(self.num_recent, int) or self.num_recent < 0:
            fail("num_recent", "an int >= 0")
        if self.neighbourhood not in affinity.NEIGHBOURHOODS:
            fail("neighbourhood", f"one of {affinity.NEIGHBOURHOODS}")
        if self.radius is not None and not self.radius > 0:
            fail("radius", "None or a number > 0")
        if self.first_mask not in label_resize.FIRST_MASK_MODES:
            fail("first_mask", f"one of {label_resize.FIRST_MASK_MODES}")
        if self.fit not in label_resize.READER_FITS:
            fail("fit", f"one of {label_resize.READER_FITS}")
        if self.short_side is not None and (
            not isinstance(self.short_side, int) or self.short_side < 1 or self.fit == "pad"
        ):
            fail("short_side", "None, or an int >= 1 with fit='resize'")
        if not isinstance(self.size_multiple, int) or self.size_multiple < 1:
            fail("size_multiple", "an int >= 1")
        if self.upsample not in UPSAMPLE_MODES:
            fail("upsample", f"one of {UPSAMPLE_MODES}")
        if self.first_output not in FIRST_OUTPUTS:
            fail("first_output", f"one of {FIRST_OUTPUTS}")
        if isinstance(self.block_size, list):
            object.__setattr__(self, "block_size", tuple(self.block_size))
        bs = self.block_size
        if bs is not None and not (
            (isinstance(bs, int) and bs >= 1)
            or (isinstance(bs, tuple) and len(bs) == 2 and all(int(b) >= 1 for b in bs))
        ):
            fail("block_size", "None, an int >= 1 or a pair (bh, bw)")
        bps = self.blocks_per_step
        if bps is not None and (not isinstance(bps, int) or bps < 1):
            fail("blocks_per_step", "None or an int >= 1")


PRESETS: dict[str, PropagationConfig] = {
    # DINO eval_video_segmentation.py: first + 7 previous, square |d| <= 12 on every frame.
    "dino": PropagationConfig(
        top_k=5,
        temperature=0.1,
        num_recent=7,
        radius=12.0,
        neighbourhood="square",
        restrict_first_frame=True,
        first_mask="nearest",
        norm_mask=True,
        keep_ties=True,
        pad_with_anchor=False,
        short_side=480,
        size_multiple=64,
        fit="resize",
        upsample="reader",
        first_output="given",
    ),
    # CRW test.py (and DUL): first + 20 previous (copies of the first before they exist),
    # Euclidean distance < 12 except on the first.
    "crw": PropagationConfig(
        top_k=10,
        temperature=0.05,
        num_recent=20,
        radius=12.0,
        neighbourhood="circle",
        restrict_first_frame=False,
        first_mask="bilinear",
        norm_mask=False,
        keep_ties=False,
        pad_with_anchor=True,
        short_side=None,
        size_multiple=8,
        fit="pad",
        upsample="frame",
        first_output="labels",
    ),
    # INO infer_vos.py on DAVIS: DINO's procedure with first + 10 previous, R = 40, long side
    # floored to a multiple of 8, soft first mask (bilinear, align_corners=True).
    "ino": PropagationConfig(
        top_k=5,
        temperature=0.1,
        num_recent=10,
        radius=40.0,
        neighbourhood="square",
        restrict_first_frame=True,
        first_mask="bilinear_align_corners",
        norm_mask=True,
        keep_ties=True,
        pad_with_anchor=False,
        short_side=480,
        size_multiple=8,
        fit="resize",
        upsample="reader",
        first_output="given",
    ),
}


def from_config_dict(config: ml_collections.ConfigDict | Mapping) -> PropagationConfig:
    """Builds a PropagationConfig from a ConfigDict with the same field names.

    An optional `preset` field ('dino', 'crw', 'ino') gives the starting values; the other
    fields override them.

    Raises:
      ValueError: unknown preset or field, or an invalid value (naming the field).
    """
    values = dict(config.to_dict() if isinstance(config, ml_collections.ConfigDict) else config)
    preset = values.pop("preset", None)
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"propagation.preset: expected one of {sorted(PRESETS)}, got {preset!r}")
    fields = {f.name for f in dataclasses.fields(PropagationConfig)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ValueError(
            f"propagation config: unknown field(s) {unknown}; expected 'preset' or {sorted(fields)}"
        )
    base = PRESETS[preset] if preset is not None else PropagationConfig()
    return dataclasses.replace(base, **values)


def _push(
    ring_features: jax.Array,
    ring_labels: jax.Array,
    slot: jax.Array,
    features: jax.Array,
    labels: jax.Array,
) -> tuple[jax.Array, jax.Array]:
    return ring_features.at[slot].set(features), ring_labels.at[slot].set(labels)


def _merge(predictions: jax.Array, owned: jax.Array) -> jax.Array:
    """[S, h, w, K] predictions, bool [S, K] -> [h, w, K] = sum_s owned[s] * pred[s]."""
    return jnp.einsum("shwk,sk->hwk", predictions, owned.astype(predictions.dtype))


def _override(merged: jax.Array, given: jax.Array, annotated: jax.Array) -> jax.Array:
    """Annotated channels := given labels; the rest scaled by 1 - their given mass."""
    given = jnp.where(annotated, given, 0.0)
    mass = jnp.sum(given, axis=-1, keepdims=True)
    return jnp.where(annotated, given, (1.0 - mass) * merged)


@dataclasses.dataclass
class _Context:
    start: int
    features: jax.Array  # [h, w, C], L2-normalised
    labels: jax.Array  # [h, w, K]
    owned: np.ndarray  # bool [K]


class VideoPropagator:
    """Propagates given labels through a video, one frame at a time.

    Compiled functions are kept on the instance: every video with the same grid, channels and
    number of classes reuses them.
    """

    def __init__(self, config: PropagationConfig, num_classes: int):
        """Args:
        config: the propagation settings.
        num_classes: K, label channels including the background (channel 0).
        """
        if not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes: expected an int >= 1, got {num_classes!r}")
        self.config = config
        self.num_classes = num_classes
        self._normalize = jax.jit(affinity.l2_normalize)
        self._predict = jax.jit(
            functools.partial(
                affinity.propagate,
                top_k=config.top_k,
                temperature=config.temperature,
                radius=config.radius,
                neighbourhood=config.neighbourhood,
                restrict_anchor=config.restrict_first_frame,
                block_size=config.block_size,
                blocks_per_step=config.blocks_per_step,
                keep_ties=config.keep_ties,
                pad_with_anchor=config.pad_with_anchor,
            )
        )
        self._push = jax.jit(_push, donate_argnums=(0, 1))
        self._merge = jax.jit(_merge)
        self._override = jax.jit(_override)

    def labels_from_mask(self, mask: np.ndarray, grid: tuple[int, int]) -> jax.Array:
        """Object ids [H, W] -> [h, w, K] labels, downsampled as `config.first_mask` says."""
        return label_resize.mask_to_labels(mask, self.num_classes, grid, self.config.first_mask)

    def reader_size(self, size: tuple[int, int]) -> tuple[int, int]:
        """The size (H', W') the config's reader gives a frame of `size`."""
        c = self.config
        return label_resize.reader_size(size, c.short_side, c.size_multiple, c.fit)

    def read_frame(self, frame: np.ndarray) -> np.ndarray:
        """uint8 [H, W, 3] -> the frame at `reader_size` (resized or padded as `config.fit`)."""
        return label_resize.read_frame(frame, self.reader_size(frame.shape[:2]), self.config.fit)

    def to_mask(self, labels: jax.Array, size: tuple[int, int]) -> np.ndarray:
        """[h, w, K] soft labels -> uint8 ids [H, W] (bilinear up, `norm_mask`, argmax; with
        `upsample='reader'` at the reader's size, then nearest to `size`)."""
        reader = self.reader_size(size) if self.config.upsample == "reader" else None
        return label_resize.labels_to_mask(
            labels, size, normalize=self.config.norm_mask, reader_size=reader
        )

    def run(
        self,
        features: Iterable[jax.Array | np.ndarray],
        given: Mapping[int, jax.Array | np.ndarray],
        objects: Mapping[int, Sequence[int]] | None = None,
    ) -> Iterator[jax.Array]:
        """Yields the soft labels of every frame, in order, computing features lazily.

        Args:
          features: yields [h, w, C] per frame (any stride, any extractor; normalised here).
          given: frame index -> [h, w, K] labels of the objects annotated there (for example
            from `mask_to_labels`). Frames before the first annotated one are background.
          objects: frame index -> ids of the objects annotated at that frame. Default: the
            channels > 0 with positive mass in `given[t]`.

        Yields:
          float32 [h, w, K] per frame. An annotated frame yields its given labels for the
          annotated objects.

        Raises:
          ValueError: a frame's features or given labels have an unexpected shape, an object id
            is out of range, or a given frame index is not in the video.
        """
        given = {int(t): v for t, v in given.items()}
        if any(t < 0 for t in given):
            raise ValueError(f"given: frame indices must be >= 0, got {sorted(given)}")
        k = self.num_classes
        n = self.config.num_recent
        contexts: list[_Context] = []
        ring_f = ring_l = None
        ring_frames = np.full((n,), -1, np.int64)
        pushes = 0
        grid = channels = None
        t = -1
        for t, frame_features in enumerate(features):
            if frame_features.ndim != 3:
                raise ValueError(
                    f"features of frame {t}: expected [h, w, C], got {frame_features.shape}"
                )
            if grid is None:
                grid, channels = tuple(frame_features.shape[:2]), frame_features.shape[2]
                ring_f = jnp.zeros((n, *grid, channels), jnp.float32)
                ring_l = jnp.zeros((n, *grid, k), jnp.float32)
            elif tuple(frame_features.shape) != (*grid, channels):
                raise ValueError(
                    f"features of frame {t}: shape {frame_features.shape} differs from frame "
                    f"0's {(*grid, channels)}"
                )
            feats = self._normalize(frame_features)

            if contexts:
                preds = [
                    self._predict(
                        feats, c.features, c.labels, ring_f, ring_l, ring_frames > c.start
                    )
                    for c in contexts
                ]
                owned = np.stack([c.owned for c in contexts])
                out = self._merge(jnp.stack(preds), owned)
            else:
                out = jnp.zeros((*grid, k), jnp.float32).at[..., 0].set(1.0)

            if t in given:
                labels = jnp.asarray(given[t], jnp.float32)
                if labels.shape != (*grid, k):
                    raise ValueError(
                        f"given[{t}]: expected labels [h, w, K] = {(*grid, k)}, got {labels.shape}"
                    )
                annotated = self._annotated(t, labels, objects)
                if not contexts:
                    annotated[0] = True  # the first annotated frame defines the background
                if annotated.any():
                    out = self._override(out, labels, annotated)
                    for c in contexts:
                        c.owned &= ~annotated
                    contexts = [c for c in contexts if c.owned.any()]
                    contexts.append(_Context(t, feats, out, annotated.copy()))

            if contexts and n > 0:
                slot = pushes % n
                ring_f, ring_l = self._push(ring_f, ring_l, slot, feats, out)
                ring_frames[slot] = t
                pushes += 1
            yield out

        missing = sorted(s for s in given if s > t)
        if missing:
            raise ValueError(
                f"given: labels for frame(s) {missing}, but the video has only {t + 1} frames"
            )

    def _annotated(
        self, t: int, labels: jax.Array, objects: Mapping[int, Sequence[int]] | None
    ) -> np.ndarray:
        """bool [K]: the channels annotated at frame t (never the background)."""
        annotated = np.zeros((self.num_classes,), bool)
        if objects is not None and t in objects:
            ids = [int(i) for i in objects[t]]
            bad = [i for i in ids if not 1 <= i < self.num_classes]
            if bad:
                raise ValueError(
                    f"objects[{t}]: ids {bad} outside [1, {self.num_classes}) "
                    f"(num_classes={self.num_classes})"
                )
            annotated[ids] = True
        else:
            annotated[1:] = np.asarray(jnp.max(labels, axis=(0, 1)))[1:] > 0
        return annotated
