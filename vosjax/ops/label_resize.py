"""Object-id masks to soft labels on the feature grid, and soft labels back to id masks.

Two ways to bring the first mask to the feature grid, as the propagation codes do:
- `nearest` (DINO): nearest-neighbour resize of the id mask (PIL's NEAREST: output cell i reads
  input pixel floor((i + 0.5) * H / h)), then one-hot: hard labels.
- `bilinear` (CRW, DUL, INO): one-hot at full resolution, then bilinear resize: soft labels.

Bilinear here is the half-pixel bilinear of OpenCV's INTER_LINEAR and PyTorch's
`interpolate(..., align_corners=False)`: no antialiasing, sample coordinates clamped to the
border. It is written as two small interpolation matrices so that resizing is two matmuls.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from vosjax.data import image_io

FIRST_MASK_MODES = ("nearest", "bilinear")


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


def nearest_indices(n_in: int, n_out: int) -> np.ndarray:
    """Input index read by each output sample of a nearest resize (as PIL's NEAREST)."""
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
      mode: 'nearest' (hard one-hot of the nearest-resized mask, DINO) or 'bilinear' (one-hot
        resized bilinearly, CRW / DUL / INO).

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
        small = ids[nearest_indices(big_h, h)][:, nearest_indices(big_w, w)]
        return jnp.asarray(np.eye(num_classes, dtype=np.float32)[small])
    one_hot = np.eye(num_classes, dtype=np.float32)[ids]  # [H, W, K]
    wy, wx = linear_weights(big_h, h), linear_weights(big_w, w)
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


def labels_to_mask(labels: jax.Array, size: tuple[int, int], normalize: bool = False) -> np.ndarray:
    """Soft labels on the feature grid -> object ids at full resolution.

    Args:
      labels: [h, w, K] soft labels (K <= 256).
      size: (H, W) of the frame.
      normalize: apply DINO's `norm_mask` after upsampling, before the argmax (DINO, INO).

    Returns:
      uint8 [H, W]: argmax over K of the bilinearly upsampled labels.

    Raises:
      ValueError: labels not [h, w, K], or K > 256.
    """
    if labels.ndim != 3 or labels.shape[-1] > 256:
        raise ValueError(f"labels: expected [h, w, K] with K <= 256, got shape {labels.shape}")
    return np.asarray(_labels_to_ids(labels, (int(size[0]), int(size[1])), bool(normalize)))
