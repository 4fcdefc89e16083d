"""Object-id masks to soft labels on the feature grid, and soft labels back to id masks.

Three ways to bring the first mask to the feature grid, as the propagation codes do:
- `nearest` (DINO): nearest-neighbour resize of the id mask by PIL's NEAREST (output cell i
  reads input pixel about floor((i + 0.5) * H / h); PIL accumulates the coordinate, which
  rounds the other way where that is an integer), then one-hot: hard labels.
- `bilinear` (CRW, DUL): one-hot at full resolution, then bilinear resize: soft labels.
- `bilinear_align_corners` (INO's `F.interpolate(..., align_corners=True)`): the same with the
  corner samples of both grids aligned (output i reads input i * (H - 1) / (h - 1)).

Bilinear here is the half-pixel bilinear of OpenCV's INTER_LINEAR and PyTorch's
`interpolate(..., align_corners=False)`: no antialiasing, sample coordinates clamped to the
border. It is written as two small interpolation matrices so that resizing is two matmuls.

The readers of the released codes also fix the frame size that features are computed at
(`reader_size`, `read_frame`): DINO resizes the short side to 480 and floors the long side to
a multiple of 64 (854 -> 832), INO floors it to a multiple of 8 (854 -> 848), CRW keeps the
native size (its stride-8 network sees ceil(W / 8) cells: edge padding to a multiple of 8 gives
a patch extractor the same grid). Back from the grid, DINO and INO upsample the soft labels to
the reader's frame size (x stride), take the argmax and resize the ids with PIL's NEAREST to
the original size (`labels_to_mask(..., reader_size=...)`); CRW upsamples straight to it.
"""

from __future__ import annotations

import functools

import cv2
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from vosjax.data import image_io

FIRST_MASK_MODES = ("nearest", "bilinear", "bilinear_align_corners")
READER_FITS = ("resize", "pad")


def linear_weights(n_in: int, n_out: int) -> np.ndarray:
    """Half-pixel bilinear interpolation matrix along one axis.

    Args:
      n_in: input length.
      n_out: output length.

    Returns:
      float32 [n_out, n_in]; row i holds the weights of output sample i (they sum to 1).
    """
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    src = np.clip(src, 0.0, n_in - 1)
    lo = np.floor(src).astype(np.int64)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    weights = np.zeros((n_out, n_in), np.float64)
    rows = np.arange(n_out)
    np.add.at(weights, (rows, lo), 1.0 - frac)
    np.add.at(weights, (rows, hi), frac)
    return weights.astype(np.float32)


def align_corners_weights(n_in: int, n_out: int) -> np.ndarray:
    """Bilinear interpolation matrix [n_out, n_in] with aligned corners (align_corners=True)."""
    scale = (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
    src = np.arange(n_out) * scale
    lo = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    hi = np.minimum(lo + 1, n_in - 1)
    frac = src - lo
    weights = np.zeros((n_out, n_in), np.float64)
    rows = np.arange(n_out)
    np.add.at(weights, (rows, lo), 1.0 - frac)
    np.add.at(weights, (rows, hi), frac)
    return weights.astype(np.float32)


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Input index floor((i + 0.5) * n_in / n_out) of each output sample of a nearest resize
    (PIL's NEAREST but where that product is an integer: `resize_nearest` is PIL's own)."""
    return np.minimum(np.floor((np.arange(n_out) + 0.5) * (n_in / n_out)), n_in - 1).astype(
        np.int64
    )


def _check_ids(mask: np.ndarray, num_classes: int) -> np.ndarray:
    if mask.ndim != 2:
        raise ValueError(f"mask: expected object ids [H, W], got shape {mask.shape}")
    if not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"mask: expected integer object ids, got dtype {mask.dtype}")
    ids = np.where(mask == image_io.VOID, 0, mask).astype(np.int64)
    bad = ids[(ids < 0) | (ids >= num_classes)]
    if bad.size:
        raise ValueError(
            f"mask: object id {int(bad.flat[0])} is outside [0, {num_classes}) "
            f"(num_classes={num_classes}; 255 is void and counts as background)"
        )
    return ids


def mask_to_labels(
    mask: np.ndarray, num_classes: int, grid: tuple[int, int], mode: str = "bilinear"
) -> jax.Array:
    """Object-id mask -> soft labels on the feature grid.

    Args:
      mask: integer object ids [H, W]; 0 is background and 255 (void) counts as background.
      num_classes: K, the number of label channels (background included).
      grid: (h, w) of the feature grid.
      mode: 'nearest' (hard one-hot of the nearest-resized mask, DINO), 'bilinear' (one-hot
        resized bilinearly, CRW / DUL) or 'bilinear_align_corners' (INO).

    Returns:
      float32 [h, w, K]; every position sums to 1.

    Raises:
      ValueError: unknown mode, not a 2-D integer mask, or an id >= num_classes.
    """
    if mode not in FIRST_MASK_MODES:
        raise ValueError(f"first_mask: expected one of {FIRST_MASK_MODES}, got {mode!r}")
    ids = _check_ids(np.asarray(mask), num_classes)
    h, w = grid
    big_h, big_w = ids.shape
    if mode == "nearest":
        small = (
            resize_nearest(ids, (h, w))
            if num_classes <= 256
            else (ids[nearest_indices(big_h, h)][:, nearest_indices(big_w, w)])
        )
        return jnp.asarray(np.eye(num_classes, dtype=np.float32)[small])
    one_hot = np.eye(num_classes, dtype=np.float32)[ids]  # [H, W, K]
    if mode == "bilinear":
        # OpenCV itself, as CRW's reader: its float INTER_LINEAR rounds its weights (up to
        # 1e-5 from the exact bilinear for some channel counts), and the labels should be CRW's.
        small = cv2.resize(one_hot, (w, h), interpolation=cv2.INTER_LINEAR)
        return jnp.asarray(small.reshape(h, w, num_classes))
    wy, wx = align_corners_weights(big_h, h), align_corners_weights(big_w, w)
    return jnp.asarray(np.einsum("yY,YXk,xX->yxk", wy, one_hot, wx, optimize=True))


def resize_labels(labels: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Half-pixel bilinear resize of [h, w, K] soft labels to [H, W, K]."""
    h, w, _ = labels.shape
    wy = jnp.asarray(linear_weights(h, size[0]))
    wx = jnp.asarray(linear_weights(w, size[1]))
    out = jnp.einsum("Yy,yxk->Yxk", wy, labels, precision="highest")
    return jnp.einsum("Xx,Yxk->YXk", wx, out, precision="highest")


def norm_mask(labels: jax.Array) -> jax.Array:
    """DINO's per-channel min-max normalisation; channels whose maximum is <= 0 are unchanged.

    Args:
      labels: [H, W, K].

    Returns:
      [H, W, K]; each channel with a positive maximum rescaled to [0, 1].
    """
    lo = jnp.min(labels, axis=(0, 1), keepdims=True)
    hi = jnp.max(labels, axis=(0, 1), keepdims=True)
    shifted = labels - lo
    span = jnp.max(shifted, axis=(0, 1), keepdims=True)
    scaled = shifted / jnp.where(span > 0, span, 1.0)
    return jnp.where(hi > 0, scaled, labels)


@functools.partial(jax.jit, static_argnames=("size", "normalize"))
def _labels_to_ids(labels: jax.Array, size: tuple[int, int], normalize: bool) -> jax.Array:
    up = resize_labels(jnp.asarray(labels, jnp.float32), size)
    if normalize:
        up = norm_mask(up)
    return jnp.argmax(up, axis=-1).astype(jnp.uint8)


def labels_to_mask(
    labels: jax.Array,
    size: tuple[int, int],
    normalize: bool = False,
    reader_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """Soft labels on the feature grid -> object ids at full resolution.

    Args:
      labels: [h, w, K] soft labels (K <= 256).
      size: (H, W) of the frame.
      normalize: apply DINO's `norm_mask` after upsampling, before the argmax (DINO, INO).
      reader_size: None: upsample straight to `size` (CRW). Else (H', W'), the size the reader
        resized the frame to: upsample to it, take the argmax there and resize the ids to
        `size` with PIL's NEAREST (DINO, INO).

    Returns:
      uint8 [H, W]: argmax over K of the bilinearly upsampled labels.

    Raises:
      ValueError: labels not [h, w, K], or K > 256.
    """
    if labels.ndim != 3 or labels.shape[-1] > 256:
        raise ValueError(f"labels: expected [h, w, K] with K <= 256, got shape {labels.shape}")
    size = (int(size[0]), int(size[1]))
    if reader_size is None or tuple(reader_size) == size:
        return np.asarray(_labels_to_ids(labels, size, bool(normalize)))
    reader_size = (int(reader_size[0]), int(reader_size[1]))
    ids = np.asarray(_labels_to_ids(labels, reader_size, bool(normalize)))
    return resize_nearest(ids, size)


def resize_nearest(ids: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """PIL's NEAREST resize of a uint8 id map [h, w] to (H, W), by PIL itself: it accumulates
    the source coordinate per pixel, which differs from floor((i + 0.5) h / H) where that is
    an integer (48 -> 53 rows: output row 26)."""
    return np.asarray(Image.fromarray(np.asarray(ids, np.uint8)).resize(size[::-1], Image.NEAREST))


def reader_size(size: tuple[int, int], short_side: int | None, multiple: int, fit: str) -> tuple:
    """The frame size a released reader computes features at.

    Args:
      size: (H, W) of the frame.
      short_side: 'resize': the short side becomes exactly this, the long side
        int(short_side * long / short) floored to a multiple of `multiple` (DINO: 480 and 64,
        INO: 480 and 8); None floors both sides. Must be None with 'pad'.
      multiple: see above; 'pad': both sides are padded up to a multiple of it (CRW: 8).
      fit: 'resize' or 'pad'.

    Returns:
      (H', W').

    Raises:
      ValueError: unknown fit, or a size that leaves nothing.
    """
    if fit not in READER_FITS:
        raise ValueError(f"reader fit: expected one of {READER_FITS}, got {fit!r}")
    h, w = int(size[0]), int(size[1])
    if fit == "pad":
        if short_side is not None:
            raise ValueError(f"reader fit 'pad' keeps the native size: short_side={short_side}")
        return -(-h // multiple) * multiple, -(-w // multiple) * multiple
    if short_side is None:
        out = (h // multiple * multiple, w // multiple * multiple)
    elif h > w:  # portrait: DINO's and INO's `ori_h > ori_w` branch
        out = (int((short_side * h / w) // multiple * multiple), short_side)
    else:
        out = (short_side, int((short_side * w / h) // multiple * multiple))
    if min(out) < 1:
        raise ValueError(f"frame {size} read at {out}: expected at least {multiple} pixels a side")
    return out


def read_frame(frame: np.ndarray, size: tuple[int, int], fit: str) -> np.ndarray:
    """A uint8 frame [H, W, 3] at the reader's size: cv2 INTER_LINEAR resize, or edge padding
    at the bottom and right ('pad')."""
    h, w = frame.shape[:2]
    if (h, w) == tuple(size):
        return frame
    if fit == "pad":
        return np.pad(frame, ((0, size[0] - h), (0, size[1] - w), (0, 0)), mode="edge")
    return cv2.resize(
        np.ascontiguousarray(frame), (size[1], size[0]), interpolation=cv2.INTER_LINEAR
    )
