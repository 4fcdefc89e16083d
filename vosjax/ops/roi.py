"""Box crops as PyTorch computes them: resizes, centred padding to a multiple, RoIAlign.

SHLS's segmenter works on each object's box: crops of the full-size maps resized with
`F.interpolate` (bilinear, align_corners=False; or nearest), zero-padded to a multiple of 4
(`pad_divide_by`) and /4 maps cut by torchvision's `RoIAlign(aligned=False,
sampling_ratio=-1)`. Boxes and sizes are Python ints (they set array shapes); the arrays are
[..., H, W, C] (channels last).

RoIAlign is separable: each output cell averages bilinear samples on a grid whose rows and
columns are chosen independently, and a sample outside the map counts 0 in both directions.
So it is two small interpolation matrices (built in numpy float32 with torchvision's arithmetic)
applied by matmuls: out = Ay @ x @ Ax^T.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

_HIGHEST = jax.lax.Precision.HIGHEST


def resize_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """torch `F.interpolate(mode='bilinear', align_corners=False)` of [..., h, w, C] to size.

    No antialiasing (as torch's default), also when shrinking.
    """
    if tuple(x.shape[-3:-1]) == tuple(size):
        return x
    return jax.image.resize(x, (*x.shape[:-3], *size, x.shape[-1]), "bilinear", antialias=False)


def nearest_indices(in_size: int, out_size: int) -> np.ndarray:
    """torch's legacy 'nearest' source index of every output index: floor(i * in / out)."""
    if in_size == out_size:
        return np.arange(out_size)
    scale = np.float32(in_size) / np.float32(out_size)
    src = np.floor(np.arange(out_size, dtype=np.float32) * scale).astype(np.int64)
    return np.minimum(src, in_size - 1)


def resize_nearest(x: jax.Array, size: tuple[int, int], *, channels_last: bool = True):
    """torch `F.interpolate(mode='nearest')` of [..., h, w, C] (or [..., h, w] with
    channels_last=False) to `size`."""
    axis = -3 if channels_last else -2
    h, w = x.shape[axis], x.shape[axis + 1]
    x = jnp.take(x, jnp.asarray(nearest_indices(h, size[0])), axis=axis)
    return jnp.take(x, jnp.asarray(nearest_indices(w, size[1])), axis=axis + 1)


def pad_amounts(size: tuple[int, int], divisor: int) -> tuple[int, int, int, int]:
    """(left, right, top, bottom) zero padding that makes `size` multiples of `divisor`, split
    as the released `pad_divide_by` splits it (the smaller half first)."""
    h, w = size
    new_h = h + (-h) % divisor
    new_w = w + (-w) % divisor
    top, left = (new_h - h) // 2, (new_w - w) // 2
    return left, new_w - w - left, top, new_h - h - top


def pad_divide_by(x: jax.Array, divisor: int) -> tuple[jax.Array, tuple[int, int, int, int]]:
    """Zero-pads [..., h, w, C] to multiples of `divisor`; returns it and (l, r, t, b)."""
    left, right, top, bottom = pad_amounts(x.shape[-3:-1], divisor)
    widths = [(0, 0)] * (x.ndim - 3) + [(top, bottom), (left, right), (0, 0)]
    return jnp.pad(x, widths), (left, right, top, bottom)


def pad_remove(x: jax.Array, pad: tuple[int, int, int, int]) -> jax.Array:
    """Undoes `pad_divide_by` on [..., H, W, C]."""
    left, right, top, bottom = pad
    h, w = x.shape[-3:-1]
    return x[..., top : h - bottom, left : w - right, :]


def _axis_matrix(
    start: float, end: float, out_size: int, in_size: int, spatial_scale: float, aligned: bool
) -> np.ndarray:
    """[out_size, in_size] sampling weights of one axis of torchvision's RoIAlign."""
    f32 = np.float32
    offset = f32(0.5) if aligned else f32(0.0)
    roi_start = f32(start) * f32(spatial_scale) - offset
    roi_end = f32(end) * f32(spatial_scale) - offset
    length = roi_end - roi_start
    if not aligned:
        length = max(length, f32(1.0))
    bin_size = f32(length / f32(out_size))
    grid = max(int(math.ceil(length / f32(out_size))), 1)
    matrix = np.zeros((out_size, in_size), np.float32)
    for p in range(out_size):
        for i in range(grid):
            y = roi_start + f32(p) * bin_size + f32(i + 0.5) * bin_size / f32(grid)
            if y < -1.0 or y > in_size:
                continue  # this sample (its whole row or column of samples) counts 0
            y = max(y, f32(0.0))
            low = int(y)
            if low >= in_size - 1:
                low = high = in_size - 1
                y = f32(low)
            else:
                high = low + 1
            frac = f32(y - f32(low))
            matrix[p, low] += f32(1.0) - frac
            matrix[p, high] += frac
    return matrix / f32(grid)


def roi_align(
    features: jax.Array,
    box: tuple[float, float, float, float],
    out_size: tuple[int, int],
    *,
    spatial_scale: float = 1.0,
    aligned: bool = False,
) -> jax.Array:
    """torchvision `roi_align(sampling_ratio=-1)` of one box.

    Args:
      features: [..., H, W, C].
      box: (x1, y1, x2, y2) in the input's pixel units (before `spatial_scale`).
      out_size: (ph, pw).
      spatial_scale: the factor from box units to the map's cells (1/4 for a /4 map).
      aligned: torchvision's `aligned` (False: no half-pixel shift, boxes at least 1 cell).

    Returns:
      [..., ph, pw, C]: each cell is the mean of ceil(box side / out side) x ... bilinear
      samples (adaptive sampling ratio).
    """
    x1, y1, x2, y2 = box
    h, w = features.shape[-3:-1]
    ay = jnp.asarray(_axis_matrix(y1, y2, out_size[0], h, spatial_scale, aligned))
    ax = jnp.asarray(_axis_matrix(x1, x2, out_size[1], w, spatial_scale, aligned))
    x = features.astype(jnp.float32)
    return jnp.einsum("ph,...hwc,qw->...pqc", ay, x, ax, precision=_HIGHEST)
