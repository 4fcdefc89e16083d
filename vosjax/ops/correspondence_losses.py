"""Dense correspondence losses of Mask-VOS (Li et al., CVPR 2023), as pure jnp functions.

Coordinates follow OpenCV and `vosjax.data.transforms.RandomAffine`: a point is (x, y) =
(column, row) in image pixels with pixel centres at integers. A feature map at stride s has
its cell (i, j) centred on the pixel (s j + (s - 1) / 2, s i + (s - 1) / 2), so the pixel x
lies at the feature coordinate (x + 0.5) / s - 0.5 (torch's align_corners=False).

- `equivariance_loss` (short-term appearance consistency): grid points of view 1 are mapped by
  a known affine matrix into view 2; the features sampled at the two ends of each point must
  pick each other out of all grid points (InfoNCE, tau 0.05).
- `long_term_loss` (long-term semantic dependency): a query frame's features are rebuilt from
  a distant reference frame through the softmax affinity of the query to an affine view of
  the reference, with the reference's own features carried into that view by the matrix; the
  rebuilt features must then identify their grid points as above.
- `anchor_loss`: the released code's `temp` space-time term (anchors pooled from frame 0,
  pseudo labels = each pixel's nearest anchor, cross-entropy on the other frames).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_NEG = -1e9  # a logit that loses every softmax but stays finite (no NaN in masked rows)


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
    """x / max(||x||, 1e-6) along `axis`."""
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
    return x / jnp.maximum(norm, 1e-6)


def pixel_to_feature(points: jax.Array, stride: int) -> jax.Array:
    """Pixel coordinates [..., 2] -> coordinates on a stride-`stride` feature grid [..., 2]."""
    return (points + 0.5) / stride - 0.5


def feature_centres(height: int, width: int, stride: int) -> np.ndarray:
    """Pixel coordinates (x, y) of the cell centres of a height x width feature map: [h w, 2]."""
    ys, xs = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    cells = np.stack([xs.ravel(), ys.ravel()], axis=-1).astype(np.float32)
    return (cells + 0.5) * stride - 0.5


def grid_points(image_size: tuple[int, int], grid_size: int) -> np.ndarray:
    """The centres of a grid_size x grid_size tiling of an image, as pixel (x, y): [K, 2].

    K = grid_size ** 2, row-major. With grid_size = image side / stride the points are exactly
    the feature cell centres.
    """
    height, width = image_size
    ys = (np.arange(grid_size) + 0.5) * height / grid_size - 0.5
    xs = (np.arange(grid_size) + 0.5) * width / grid_size - 0.5
    yy, xx = np.meshgrid(ys, xs, indexing="ij")
    return np.stack([xx.ravel(), yy.ravel()], axis=-1).astype(np.float32)


def apply_affine(affine: jax.Array, points: jax.Array) -> jax.Array:
    """Maps points [B, K, 2] or [K, 2] through 2x3 matrices affine [B, 2, 3]: -> [B, K, 2]."""
    points = jnp.broadcast_to(points, (affine.shape[0], *points.shape[-2:]))
    return jnp.einsum("bij,bkj->bki", affine[:, :, :2], points) + affine[:, None, :, 2]


def inside(points: jax.Array, image_size: tuple[int, int]) -> jax.Array:
    """Whether pixel points [..., 2] lie within the image's pixel centres: bool [...]."""
    height, width = image_size
    x, y = points[..., 0], points[..., 1]
    return (x >= 0) & (x <= width - 1) & (y >= 0) & (y <= height - 1)


def bilinear_sample(features: jax.Array, coords: jax.Array) -> jax.Array:
    """Bilinear interpolation at feature-grid coordinates, clamped to the border.

    Args:
      features: [B, h, w, C].
      coords: [B, K, 2] (x, y) on the feature grid (cell centres at integers).

    Returns:
      [B, K, C].
    """
    _, h, w, _ = features.shape
    x = jnp.clip(coords[..., 0], 0.0, w - 1.0)
    y = jnp.clip(coords[..., 1], 0.0, h - 1.0)
    x0 = jnp.clip(jnp.floor(x), 0, max(w - 2, 0)).astype(jnp.int32)
    y0 = jnp.clip(jnp.floor(y), 0, max(h - 2, 0)).astype(jnp.int32)
    x1 = jnp.minimum(x0 + 1, w - 1)
    y1 = jnp.minimum(y0 + 1, h - 1)
    wx = (x - x0)[..., None]
    wy = (y - y0)[..., None]

    def gather(yi: jax.Array, xi: jax.Array) -> jax.Array:
        return jax.vmap(lambda f, a, b: f[a, b])(features, yi, xi)

    top = gather(y0, x0) * (1 - wx) + gather(y0, x1) * wx
    bottom = gather(y1, x0) * (1 - wx) + gather(y1, x1) * wx
    return top * (1 - wy) + bottom * wy


def info_nce(
    anchors: jax.Array,
    positives: jax.Array,
    valid: jax.Array,
    temperature: float,
    weights: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """InfoNCE over K points: anchor k's positive is positive k, the other valid points negatives.

    Args:
      anchors: [B, K, C] L2-normalised.
      positives: [B, K, C] L2-normalised.
      valid: bool [B, K]; invalid points are neither anchors nor negatives.
      temperature: softmax temperature.
      weights: optional [B] per-example weights (e.g. 0 for a pair that does not qualify).

    Returns:
      (loss, accuracy): the mean cross-entropy over valid anchors of weighted examples, and the
      fraction of them whose most similar point is their positive. 0 when nothing is valid.
    """
    logits = jnp.einsum("bkc,blc->bkl", anchors, positives) / temperature
    logits = jnp.where(valid[:, None, :], logits, _NEG)
    k = logits.shape[-1]
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    per_point = -jnp.diagonal(log_probs, axis1=1, axis2=2)  # [B, K]
    correct = (jnp.argmax(logits, axis=-1) == jnp.arange(k)).astype(jnp.float32)
    mask = valid.astype(jnp.float32)
    if weights is not None:
        mask = mask * weights.astype(jnp.float32)[:, None]
    count = jnp.maximum(jnp.sum(mask), 1.0)
    return jnp.sum(per_point * mask) / count, jnp.sum(correct * mask) / count


def equivariance_loss(
    features1: jax.Array,
    features2: jax.Array,
    affine: jax.Array,
    image_size: tuple[int, int],
    *,
    grid_size: int = 8,
    temperature: float = 0.05,
    weights: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """InfoNCE between grid samples of two views related by a known affine map.

    Grid points of view 1 (`grid_points(image_size, grid_size)`) are mapped into view 2 by
    `affine`; both ends are bilinearly sampled, L2-normalised and contrasted. Points that
    leave view 2 are dropped.

    Args:
      features1: [B, h, w, C] features of view 1 (stride = image side / feature side).
      features2: [B, h, w, C] features of view 2, same image size.
      affine: [B, 2, 3] view-1 pixel -> view-2 pixel (OpenCV coordinates).
      image_size: (H, W) of both views in pixels.
      grid_size: points per side.
      temperature: InfoNCE temperature (0.05 in Mask-VOS / DUL).
      weights: optional [B] example weights.

    Returns:
      (loss, accuracy) as `info_nce`.
    """
    stride = image_size[0] / features1.shape[1]
    points1 = jnp.asarray(grid_points(image_size, grid_size))
    points2 = apply_affine(affine.astype(jnp.float32), points1)
    valid = inside(points2, image_size)
    batch = features1.shape[0]
    s1 = bilinear_sample(
        features1, jnp.broadcast_to(pixel_to_feature(points1, stride), (batch, *points1.shape))
    )
    s2 = bilinear_sample(features2, pixel_to_feature(points2, stride))
    return info_nce(l2_normalize(s1), l2_normalize(s2), valid, temperature, weights)


def aligned_reference(
    query: jax.Array,
    reference_view: jax.Array,
    reference: jax.Array,
    affine: jax.Array,
    image_size: tuple[int, int],
    *,
    affinity_temperature: float = 0.05,
) -> jax.Array:
    """A^T Phi(E(I_ref)): reference features carried onto the query grid by the affinity.

    A = softmax over reference-view cells of query . reference_view / tau. Phi(E(I_ref)) is the
    clean reference's feature map sampled at the view's cell centres mapped by `affine`; view
    cells that map outside the reference are left out of the softmax.

    Args:
      query: [B, h, w, C] L2-normalised features of the query frame.
      reference_view: [B, h, w, C] L2-normalised features of the affine view of the reference.
      reference: [B, h, w, C] features of the reference frame itself.
      affine: [B, 2, 3] view pixel -> reference pixel.
      image_size: (H, W) in pixels of every frame.
      affinity_temperature: tau of the affinity softmax.

    Returns:
      [B, h, w, C] aligned features (not normalised).
    """
    b, h, w, c = query.shape
    stride = image_size[0] / h
    centres = jnp.asarray(feature_centres(h, w, stride))
    mapped = apply_affine(affine.astype(jnp.float32), centres)  # [B, hw, 2]
    valid = inside(mapped, image_size)
    carried = bilinear_sample(reference, pixel_to_feature(mapped, stride))  # [B, hw, C]
    logits = jnp.einsum(
        "bqc,brc->bqr", query.reshape(b, h * w, c), reference_view.reshape(b, h * w, c)
    )
    logits = jnp.where(valid[:, None, :], logits / affinity_temperature, _NEG)
    attention = jax.nn.softmax(logits, axis=-1)
    return jnp.einsum("bqr,brc->bqc", attention, carried).reshape(b, h, w, c)


def long_term_loss(
    query: jax.Array,
    reference_view: jax.Array,
    reference: jax.Array,
    affine: jax.Array,
    image_size: tuple[int, int],
    *,
    grid_size: int = 8,
    temperature: float = 0.05,
    affinity_temperature: float = 0.05,
    weights: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Long-term semantic dependency: E(I_q) ~ A^T Phi(E(I_ref)), contrasted at grid points.

    Args:
      query: [B, h, w, C] L2-normalised features of the query frame I_q.
      reference_view: [B, h, w, C] L2-normalised features of Phi(I_ref), the affine view of a
        frame at least 5 frames away.
      reference: [B, h, w, C] L2-normalised features of I_ref.
      affine: [B, 2, 3] view pixel -> I_ref pixel.
      image_size: (H, W) in pixels.
      grid_size: points per side.
      temperature: InfoNCE temperature.
      affinity_temperature: affinity softmax temperature.
      weights: optional [B] example weights (0 where the two frames are too close).

    Returns:
      (loss, accuracy) as `info_nce`.
    """
    aligned = aligned_reference(
        query,
        reference_view,
        reference,
        affine,
        image_size,
        affinity_temperature=affinity_temperature,
    )
    identity = jnp.broadcast_to(jnp.eye(2, 3, dtype=jnp.float32), (query.shape[0], 2, 3))
    return equivariance_loss(
        query,
        aligned,
        identity,
        image_size,
        grid_size=grid_size,
        temperature=temperature,
        weights=weights,
    )


def adaptive_pool_matrix(size: int, output_size: int) -> np.ndarray:
    """[output_size, size] averaging weights of torch's adaptive average pooling along one axis."""
    matrix = np.zeros((output_size, size), np.float32)
    for i in range(output_size):
        start = (i * size) // output_size
        end = -((-(i + 1) * size) // output_size)
        matrix[i, start:end] = 1.0 / (end - start)
    return matrix


def anchor_loss(
    reference: jax.Array,
    teacher: jax.Array,
    student: jax.Array,
    *,
    grid_size: int = 8,
    temperature: float = 0.05,
) -> tuple[jax.Array, jax.Array]:
    """The released code's `temp` term: nearest-anchor pseudo labels, cross-entropy on frames.

    Anchors are the reference features average-pooled to grid_size x grid_size cells and
    L2-normalised. Each teacher pixel's most similar anchor is its label (no gradient); the
    student's softmax over anchor similarities / temperature is trained towards it.

    Args:
      reference: [B, h, w, C] features of frame 0 (the anchors' source).
      teacher: [B, T, h, w, C] features giving the labels (gradients are stopped).
      student: [B, T, h, w, C] features being trained.
      grid_size: anchors per side (8 in the code: 64 anchors).
      temperature: softmax temperature.

    Returns:
      (loss, accuracy): mean cross-entropy, and how often the student's argmax is the label.
    """
    _, h, w, _ = reference.shape
    pool_h = jnp.asarray(adaptive_pool_matrix(h, grid_size))
    pool_w = jnp.asarray(adaptive_pool_matrix(w, grid_size))
    anchors = jnp.einsum("ih,jw,bhwc->bijc", pool_h, pool_w, reference)
    anchors = l2_normalize(anchors.reshape(anchors.shape[0], grid_size * grid_size, -1))
    labels = jnp.argmax(
        jnp.einsum(
            "bthwc,bkc->bthwk", jax.lax.stop_gradient(teacher), jax.lax.stop_gradient(anchors)
        ),
        axis=-1,
    )
    logits = jnp.einsum("bthwc,bkc->bthwk", student, anchors) / temperature
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    nll = -jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
    accuracy = jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))
    return jnp.mean(nll), accuracy
