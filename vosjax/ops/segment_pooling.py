"""Superpixel pooling: per-segment counts, means, majority classes, and painting back to pixels.

SHLS (Mendonca et al., BMVC 2023) works on superpixels: per-pixel features are mean-pooled
inside each superpixel into a "superfeature", the per-pixel features carry an "info map" of
their superpixel (its size, mean row, mean column), each superpixel's training label is the majority
pseudo-label of its pixels, and per-superpixel values (attention channels) are painted back
onto the pixels. Every function here takes a superpixel label map `labels`, int32 [H, W], with
ids in [0, S); pixels whose id lies outside [0, S) (e.g. -1 for "no superpixel") belong to no
segment: they are ignored by the pooling and painted 0.

Features and labels share [H, W]: callers upsample lower-resolution features first.

Sums are `jax.ops.segment_sum` (a scatter-add, which drops ids outside [0, S)), not a one-hot
matmul: at H * W = 65536, S = 512, C = 259 on 2 CPU cores the scatter-add took 29 ms forward
and 36 ms for value + gradient, against 174 ms and 325 ms for the [H W, S] one-hot matmul
(which does S times the necessary multiply-adds).

All functions are pure, float32, jittable (the numbers of segments and classes are static
Python ints) and vmappable over leading frame axes.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp


def _check_labels(labels: jax.Array, num_segments: int) -> None:
    if labels.ndim != 2:
        raise ValueError(f"labels: expected int [H, W], got shape {labels.shape}")
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels: expected an integer dtype, got {labels.dtype}")
    if num_segments < 1:
        raise ValueError(f"num_segments: expected >= 1, got {num_segments}")


def _segment_sum(data: jax.Array, labels: jax.Array, num_segments: int) -> jax.Array:
    """[H, W, ...] summed per segment -> [S, ...]; ids outside [0, S) dropped."""
    flat = data.reshape(labels.size, *data.shape[2:])
    return jax.ops.segment_sum(flat, labels.reshape(-1), num_segments)


@functools.partial(jax.jit, static_argnames="num_segments")
def segment_counts(labels: jax.Array, num_segments: int) -> jax.Array:
    """The number of pixels of every segment.

    Args:
      labels: int [H, W], segment ids; ids outside [0, S) are ignored.
      num_segments: S, static.

    Returns:
      float32 [S].

    Raises:
      ValueError: naming `labels` or `num_segments` when malformed.
    """
    _check_labels(labels, num_segments)
    return _segment_sum(jnp.ones(labels.shape, jnp.float32), labels, num_segments)


@functools.partial(jax.jit, static_argnames="num_segments")
def segment_mean(
    features: jax.Array, labels: jax.Array, num_segments: int
) -> tuple[jax.Array, jax.Array]:
    """The mean feature of every segment (superpixel mean pooling).

    Args:
      features: [H, W, C], any float dtype.
      labels: int [H, W], segment ids; ids outside [0, S) are ignored.
      num_segments: S, static.

    Returns:
      (means float32 [S, C], 0 for an empty segment; valid bool [S], True where the segment
      has at least one pixel).

    Raises:
      ValueError: naming `features`, `labels` or `num_segments` when malformed.
    """
    _check_labels(labels, num_segments)
    if features.ndim != 3 or features.shape[:2] != labels.shape:
        raise ValueError(
            f"features: expected [H, W, C] with [H, W] = {labels.shape}, got {features.shape}"
        )
    features = jnp.asarray(features, jnp.float32)
    sums = _segment_sum(features, labels, num_segments)
    counts = segment_counts(labels, num_segments)
    means = sums / jnp.maximum(counts, 1.0)[:, None]
    return means, counts > 0


INFO_CONVENTIONS = ("released", "centres")


@functools.partial(jax.jit, static_argnames=("num_segments", "convention"))
def segment_info(labels: jax.Array, num_segments: int, convention: str = "released") -> jax.Array:
    """Each segment's SHLS "info": its size and centroid, normalised.

    Args:
      labels: int [H, W], segment ids; ids outside [0, S) are ignored.
      num_segments: S, static.
      convention: 'released' (the released `spx_info_map`, default): (number of pixels /
        (H W), mean row index / (H - 1), mean column index / (W - 1)), row before column
        although its names say x then y; 'centres': (number of pixels / (H W), mean column
        / W, mean row / H) with indices as they were (pixel indices, not centres).

    Returns:
      float32 [S, 3]; 0 for empty segments.

    Raises:
      ValueError: naming `labels`, `num_segments` or `convention` when malformed.
    """
    _check_labels(labels, num_segments)
    if convention not in INFO_CONVENTIONS:
        raise ValueError(f"convention={convention!r}: expected one of {INFO_CONVENTIONS}")
    height, width = labels.shape
    ys, xs = jnp.meshgrid(
        jnp.arange(height, dtype=jnp.float32), jnp.arange(width, dtype=jnp.float32), indexing="ij"
    )
    if convention == "released":
        # torch: arange(h) / (h - 1) per pixel, then the mean over the segment's pixels.
        coords = [ys / max(height - 1, 1), xs / max(width - 1, 1)]
    else:
        coords = [xs / width, ys / height]
    ones = jnp.ones((height, width), jnp.float32)
    sums = _segment_sum(jnp.stack([ones, *coords], axis=-1), labels, num_segments)  # [S, 3]
    counts = sums[:, 0]
    means = sums[:, 1:] / jnp.maximum(counts, 1.0)[:, None]
    return jnp.concatenate([counts[:, None] / (height * width), means], axis=-1)


@functools.partial(jax.jit, static_argnames=("num_segments", "convention"))
def info_map(labels: jax.Array, num_segments: int, convention: str = "released") -> jax.Array:
    """The SHLS superpixel "info map": each pixel gets its segment's `segment_info`.

    Args:
      labels: int [H, W], segment ids; ids outside [0, S) are ignored.
      num_segments: S, static.
      convention: see `segment_info` ('released' by default).

    Returns:
      float32 [H, W, 3]; 0 for pixels outside every segment.

    Raises:
      ValueError: naming `labels`, `num_segments` or `convention` when malformed.
    """
    return paint(segment_info(labels, num_segments, convention), labels)


@jax.jit
def paint(values: jax.Array, labels: jax.Array) -> jax.Array:
    """Paints per-segment values onto the pixels of each segment.

    Args:
      values: [S, C].
      labels: int [H, W], segment ids.

    Returns:
      [H, W, C] in the dtype of `values`: values[labels[y, x]], 0 where the id is outside
      [0, S).

    Raises:
      ValueError: naming `values` or `labels` when malformed.
    """
    if values.ndim != 2:
        raise ValueError(f"values: expected [S, C], got shape {values.shape}")
    _check_labels(labels, values.shape[0])
    inside = (labels >= 0) & (labels < values.shape[0])
    picked = jnp.take(values, jnp.where(inside, labels, 0), axis=0)
    return jnp.where(inside[..., None], picked, jnp.zeros((), values.dtype))


@functools.partial(jax.jit, static_argnames=("num_segments", "num_classes"))
def majority_labels(
    labels: jax.Array, classes: jax.Array, num_segments: int, num_classes: int
) -> jax.Array:
    """Each segment's most frequent class (SHLS's "pool" superpixel label).

    Args:
      labels: int [H, W], segment ids; ids outside [0, S) are ignored.
      classes: int [H, W], per-pixel class ids; ids outside [0, num_classes) (e.g. 255 for
        "void") are not counted.
      num_segments: S, static.
      num_classes: the number of classes, static.

    Returns:
      int32 [S]: the class with the most pixels in the segment, the lowest class id on ties;
      -1 for a segment with no counted pixel (empty, or only uncounted classes).

    Raises:
      ValueError: naming `labels`, `classes`, `num_segments` or `num_classes` when malformed.
    """
    _check_labels(labels, num_segments)
    if classes.shape != labels.shape or not jnp.issubdtype(classes.dtype, jnp.integer):
        raise ValueError(
            f"classes: expected int [H, W] = {labels.shape}, got {classes.dtype} {classes.shape}"
        )
    if num_classes < 1:
        raise ValueError(f"num_classes: expected >= 1, got {num_classes}")
    # one_hot of an out-of-range class is all zeros: such pixels count for no class.
    one_hot = jax.nn.one_hot(classes, num_classes, dtype=jnp.int32)
    histogram = _segment_sum(one_hot, labels, num_segments)  # [S, num_classes]
    winner = jnp.argmax(histogram, axis=-1).astype(jnp.int32)
    return jnp.where(jnp.sum(histogram, axis=-1) > 0, winner, -1)
