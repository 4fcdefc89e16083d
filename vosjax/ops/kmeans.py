"""Space-time k-means: the pseudo-mask clustering of Mask-VOS, as jittable, vmappable JAX.

Mask-VOS (Li et al., CVPR 2023) builds the pseudo masks of a training video by clustering its
pixel embeddings (the encoder's L2-normalised key features at stride 8, [T, h, w, D]) together
with a 3-D sinusoidal encoding of each pixel's (t, y, x) position into M segments. Here:

- `position_encoding_3d` and `video_points` turn a video's features into points
  [T * h * w, D + position_dim];
- `kmeans_plus_plus` picks initial centres (`lax.fori_loop`), `lloyd` refines them
  (`lax.while_loop`), `kmeans` does both (optionally with restarts, keeping the lowest inertia);
- `batched_kmeans` runs `kmeans` over a leading video axis (`jax.vmap`), on videos padded to a
  common number of points with a `valid` mask;
- `assign` labels points (e.g. every frame of a video) with the nearest fitted centre.

Everything is a pure function of arrays and a key: the same key gives bitwise the same result.
The public functions check shapes and arguments in Python, then call jitted cores (shape and
static arguments key the compilation cache, so repeated eager calls do not retrace the loops);
they also trace fine inside an outer `jax.jit` or `jax.vmap`. Since every video is handled
independently, the video axis can be sharded over devices:

    mesh = jax.make_mesh(
        (num_devices,), ("data",), axis_types=(jax.sharding.AxisType.Auto,)
    )  # or vosjax.sharding.make_mesh()
    videos = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    fit = jax.jit(
        functools.partial(batched_kmeans, num_clusters=7),
        in_shardings=(videos, videos, videos),
        out_shardings=videos,
    )
    result = fit(keys, points, valid)  # keys [B], points [B, N, D], valid [B, N]

B must be a multiple of the number of devices (pad with videos whose `valid` is all False).
The mesh axes must be `AxisType.Auto`, as `vosjax.sharding.make_mesh` builds them: with
`Explicit` axes (`jax.make_mesh`'s default) JAX 0.10.2 fails to trace a `while_loop` vmapped
over a sharded axis ("Resource axis: data ... is not found in mesh").
A vmapped `while_loop` runs until every video of the batch has converged; videos that converged
earlier are frozen (their state is selected, not updated), so each video's result equals the one
it would get alone.

Distances are squared Euclidean, computed as |x|^2 - 2 x.c + |c|^2 with one [N, D] x [D, K]
matmul per iteration (no [N, K, D] tensor), at `Precision.HIGHEST` so that accelerators do not
assign points with bf16/tf32 products.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from vosjax.ops import affinity

_HIGHEST = lax.Precision.HIGHEST


class KMeansResult(NamedTuple):
    """The output of `kmeans` (a pytree: vmaps and jits like a tuple of arrays).

    Attributes:
      centers: float32 [K, D], the cluster centres.
      assignments: int32 [N], the nearest centre of each valid point; -1 for invalid points.
      inertia: float32 scalar, the sum over valid points of the squared distance to their centre.
      num_iters: int32 scalar, the number of Lloyd updates made.
    """

    centers: jax.Array
    assignments: jax.Array
    inertia: jax.Array
    num_iters: jax.Array


def position_encoding_3d(
    num_frames: int,
    height: int,
    width: int,
    dim: int,
    *,
    min_period: float = 2.0,
    max_period: float = 8.0,
) -> jax.Array:
    """Sinusoidal encoding of each position's normalised (t, y, x) coordinates.

    Each coordinate is mapped to u in [0, 1] over its extent (u = i / (n - 1); u = 0 when the
    extent is 1), so the encoding does not depend on the video's size: the corners of a 4 x 4
    and of an 8 x 8 grid get the same code. Each axis gets dim / 3 channels: F = dim / 6
    frequencies, as [sin(w_0 u), ..., sin(w_{F-1} u), cos(w_0 u), ..., cos(w_{F-1} u)], with
    w_k = 2 pi / P_k and periods P_k (in units of the extent) geometric from `min_period`
    (k = 0) up to `max_period` (k = F - 1; only `min_period` when F = 1).

    Why no period shorter than 2 by default: with P >= 2 each (sin, cos) pair turns by at most
    half a circle over the extent, so the code distance 2 |sin(pi du / P)| grows monotonically
    with the coordinate distance du and every position gets its own code. Shorter periods
    alias (far positions get near codes), which is what clustering must not see: k-means on
    the code alone of 2x16x16 .. 1x24x24 grids gave clusters whose spread (mean distance to
    their centroid in (t, y, x)) was 0.49-0.80 of a random partition's with periods down to 0.5,
    against 0.32-0.56 with periods >= 2.

    Args:
      num_frames: T >= 1.
      height: H >= 1.
      width: W >= 1.
      dim: the number of channels, a positive multiple of 6.
      min_period: the shortest period (highest frequency), > 0.
      max_period: the longest period, >= min_period.

    Returns:
      float32 [T, H, W, dim], channels ordered [t block | y block | x block]; every value is in
      [-1, 1] and each position's code has squared norm dim / 2.

    Raises:
      ValueError: naming `dim`, a size or a period that is out of range.
    """
    if dim <= 0 or dim % 6:
        raise ValueError(f"dim: expected a positive multiple of 6, got {dim}")
    for name, size in (("num_frames", num_frames), ("height", height), ("width", width)):
        if size < 1:
            raise ValueError(f"{name}: expected >= 1, got {size}")
    if not 0 < min_period <= max_period:
        raise ValueError(
            f"min_period, max_period: expected 0 < min_period <= max_period, got "
            f"{min_period}, {max_period}"
        )
    num_freqs = dim // 6
    k = jnp.arange(num_freqs, dtype=jnp.float32) / max(num_freqs - 1, 1)
    periods = min_period * (max_period / min_period) ** k
    omegas = 2.0 * math.pi / periods  # [F]

    def axis_code(n: int) -> jax.Array:
        u = jnp.arange(n, dtype=jnp.float32) / max(n - 1, 1)
        angles = u[:, None] * omegas[None, :]
        return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)  # [n, 2F]

    t_code, y_code, x_code = axis_code(num_frames), axis_code(height), axis_code(width)
    shape = (num_frames, height, width, 2 * num_freqs)
    return jnp.concatenate(
        [
            jnp.broadcast_to(t_code[:, None, None, :], shape),
            jnp.broadcast_to(y_code[None, :, None, :], shape),
            jnp.broadcast_to(x_code[None, None, :, :], shape),
        ],
        axis=-1,
    )


def video_points(
    features: jax.Array,
    *,
    position_dim: int,
    position_weight: float | jax.Array,
) -> jax.Array:
    """A video's clustering points: unit features next to a weighted position encoding.

    The position encoding (`position_encoding_3d`, default periods) is scaled so that the two
    farthest positions, opposite corners of the normalised (t, y, x) cube, are `2 *
    position_weight` apart, while two opposite unit features are 2 apart: `position_weight` is
    the weight of "far in space-time" against "opposite in appearance", whatever
    `position_dim`. It sets how compact the clusters are in space and time. With 0 the position
    columns are all zero (kept, so that the output width does not depend on the weight, which
    may be traced) and k-means sees the features alone.

    Args:
      features: [T, h, w, D], any float dtype.
      position_dim: 0 (no position columns) or a positive multiple of 6.
      position_weight: >= 0, a Python number or a traced scalar.

    Returns:
      float32 [T * h * w, D + position_dim], rows in (t, y, x) raster order, so
      `assignments.reshape(T, h, w)` maps labels back to pixels.

    Raises:
      ValueError: naming `features`, `position_dim` or `position_weight` when out of range.
    """
    if features.ndim != 4:
        raise ValueError(f"features: expected [T, h, w, D], got shape {features.shape}")
    if position_dim < 0 or position_dim % 6:
        raise ValueError(
            f"position_dim: expected 0 or a positive multiple of 6, got {position_dim}"
        )
    if isinstance(position_weight, (int, float)) and position_weight < 0:
        raise ValueError(f"position_weight: expected >= 0, got {position_weight}")
    num_frames, height, width, depth = features.shape
    unit = affinity.l2_normalize(features).reshape(-1, depth)
    if position_dim == 0:
        return unit
    code = position_encoding_3d(num_frames, height, width, position_dim)
    cube = position_encoding_3d(2, 2, 2, position_dim)
    diameter = jnp.linalg.norm(cube[1, 1, 1] - cube[0, 0, 0])
    scale = 2.0 * jnp.asarray(position_weight, jnp.float32) / diameter
    return jnp.concatenate([unit, scale * code.reshape(-1, position_dim)], axis=-1)


def _squared_distances(points: jax.Array, centers: jax.Array) -> jax.Array:
    """|x - c|^2 as |x|^2 - 2 x.c + |c|^2: [N, D], [K, D] -> [N, K], clipped at 0."""
    cross = jnp.matmul(points, centers.T, precision=_HIGHEST)
    sq_points = jnp.sum(points * points, axis=-1, keepdims=True)
    sq_centers = jnp.sum(centers * centers, axis=-1)
    return jnp.maximum(sq_points - 2.0 * cross + sq_centers[None, :], 0.0)


def assign(points: jax.Array, centers: jax.Array) -> jax.Array:
    """The nearest centre of every point.

    Exact ties go to the lowest index; copies of one centre need not tie exactly, since the
    distances come from a matmul whose rounding may differ between its columns.

    Args:
      points: [N, D].
      centers: [K, D].

    Returns:
      int32 [N], in [0, K).
    """
    points = jnp.asarray(points, jnp.float32)
    centers = jnp.asarray(centers, jnp.float32)
    return jnp.argmin(_squared_distances(points, centers), axis=-1).astype(jnp.int32)


def _row(points: jax.Array, index: jax.Array) -> jax.Array:
    """points[index] for a traced scalar index: [N, D] -> [D]."""
    return lax.dynamic_index_in_dim(points, index, axis=0, keepdims=False)


def _check_points(points: jax.Array, valid: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    if points.ndim != 2:
        raise ValueError(f"points: expected [N, D], got shape {points.shape}")
    if valid is None:
        valid = jnp.ones(points.shape[:1], bool)
    if valid.shape != points.shape[:1]:
        raise ValueError(f"valid: expected shape [N] = {points.shape[:1]}, got {valid.shape}")
    return jnp.asarray(points, jnp.float32), jnp.asarray(valid, bool)


def _check_num_clusters(num_clusters: int, num_points: int) -> None:
    if not 1 <= num_clusters <= num_points:
        raise ValueError(
            f"num_clusters: expected 1 <= num_clusters <= N = {num_points}, got {num_clusters}"
        )


def kmeans_plus_plus(
    key: jax.Array, points: jax.Array, valid: jax.Array | None, num_clusters: int
) -> jax.Array:
    """k-means++ seeding: centres drawn with probability proportional to D(x)^2.

    The first centre is uniform among valid points; each next one is drawn with probability
    proportional to the squared distance from a point to its nearest chosen centre, invalid
    points weighing 0. When every remaining weight is 0 (fewer distinct valid points than K),
    the draw falls back to uniform among valid points, so centres repeat instead of becoming
    NaN; `lloyd` then leaves the duplicates empty. With no valid point at all, every centre is
    points[0].

    Draws are Gumbel-max over the N points (`jax.random.categorical`); with JAX's partitionable
    threefry (the default) the noise of point i does not depend on N, so padding points at the
    end (invalid) does not change the centres.

    Args:
      key: a PRNG key.
      points: [N, D].
      valid: bool [N], or None for all valid.
      num_clusters: K, static, 1 <= K <= N.

    Returns:
      float32 [K, D], each row one of the valid points.

    Raises:
      ValueError: naming `points`, `valid` or `num_clusters` on a bad shape or count.
    """
    points, valid = _check_points(points, valid)
    _check_num_clusters(num_clusters, points.shape[0])
    return _seed(key, points, valid, num_clusters)


@functools.partial(jax.jit, static_argnames="num_clusters")
def _seed(key: jax.Array, points: jax.Array, valid: jax.Array, num_clusters: int) -> jax.Array:
    keys = jax.random.split(key, num_clusters)
    uniform_logits = jnp.where(valid, 0.0, -jnp.inf)

    def sq_dist_to(center: jax.Array) -> jax.Array:
        # Direct differences (not the matmul expansion) so that copies of a centre are at
        # exactly 0 and are never drawn again while other points remain.
        diff = points - center[None, :]
        return jnp.sum(diff * diff, axis=-1)

    slots = jnp.arange(num_clusters)[:, None]
    first = _row(points, jax.random.categorical(keys[0], uniform_logits))
    centers = jnp.broadcast_to(first, (num_clusters, points.shape[1]))

    def body(i: jax.Array, carry: tuple[jax.Array, jax.Array]) -> tuple[jax.Array, jax.Array]:
        centers, min_sq = carry
        weights = jnp.where(valid, min_sq, 0.0)
        logits = jnp.where(weights > 0, jnp.log(jnp.where(weights > 0, weights, 1.0)), -jnp.inf)
        logits = jnp.where(jnp.any(weights > 0), logits, uniform_logits)
        center = _row(points, jax.random.categorical(keys[i], logits))
        centers = jnp.where(slots == i, center[None, :], centers)
        return centers, jnp.minimum(min_sq, sq_dist_to(center))

    centers, _ = lax.fori_loop(1, num_clusters, body, (centers, sq_dist_to(first)))
    return centers


def _inertia(
    points: jax.Array, valid: jax.Array, centers: jax.Array, labels: jax.Array
) -> jax.Array:
    diff = points - centers[labels]
    return jnp.sum(jnp.where(valid, jnp.sum(diff * diff, axis=-1), 0.0))


def lloyd(
    points: jax.Array,
    valid: jax.Array | None,
    centers: jax.Array,
    *,
    max_iters: int,
    tol: float | jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """Lloyd iterations from given centres, in a `lax.while_loop`.

    One iteration assigns every point to its nearest centre and moves each centre to the mean of
    its valid points; a centre with no valid point keeps its position. The loop stops once the
    largest squared move of a centre is <= `tol` (an absolute tolerance, in the points' squared
    units; unit-norm features make ~1e-6 a tight one) or after `max_iters` iterations. The
    returned assignments and inertia are recomputed with the returned centres.

    Args:
      points: [N, D].
      valid: bool [N], or None for all valid. Invalid points neither move centres nor count in
        the inertia.
      centers: [K, D], the initial centres.
      max_iters: the most iterations, >= 0 (0 only assigns).
      tol: >= 0; 0 runs until the centres stop moving exactly.

    Returns:
      (centers float32 [K, D], assignments int32 [N] (-1 for invalid points), inertia float32
      scalar, num_iters int32 scalar).

    Raises:
      ValueError: naming `points`, `valid`, `centers`, `max_iters` or `tol` when out of range.
    """
    points, valid = _check_points(points, valid)
    if centers.ndim != 2 or centers.shape[1] != points.shape[1]:
        raise ValueError(f"centers: expected [K, {points.shape[1]}], got shape {centers.shape}")
    if max_iters < 0:
        raise ValueError(f"max_iters: expected >= 0, got {max_iters}")
    if isinstance(tol, (int, float)) and tol < 0:
        raise ValueError(f"tol: expected >= 0, got {tol}")
    return _lloyd(points, valid, jnp.asarray(centers, jnp.float32), max_iters, tol)


@functools.partial(jax.jit, static_argnames="max_iters")
def _lloyd(
    points: jax.Array,
    valid: jax.Array,
    centers: jax.Array,
    max_iters: int,
    tol: float | jax.Array,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    num_clusters = centers.shape[0]
    weights = valid.astype(jnp.float32)

    def cond(state: tuple[jax.Array, jax.Array, jax.Array]) -> jax.Array:
        _, shift, it = state
        return (it < max_iters) & (shift > tol)

    def body(
        state: tuple[jax.Array, jax.Array, jax.Array],
    ) -> tuple[jax.Array, jax.Array, jax.Array]:
        old, _, it = state
        labels = jnp.argmin(_squared_distances(points, old), axis=-1)
        one_hot = (labels[:, None] == jnp.arange(num_clusters)) * weights[:, None]  # [N, K]
        sums = jnp.matmul(one_hot.T, points, precision=_HIGHEST)
        counts = jnp.sum(one_hot, axis=0)[:, None]
        new = jnp.where(counts > 0, sums / jnp.maximum(counts, 1.0), old)
        shift = jnp.max(jnp.sum((new - old) ** 2, axis=-1))
        return new, shift, it + 1

    init = (centers, jnp.array(jnp.inf, jnp.float32), jnp.array(0, jnp.int32))
    centers, _, num_iters = lax.while_loop(cond, body, init)
    labels = assign(points, centers)
    inertia = _inertia(points, valid, centers, labels)
    return centers, jnp.where(valid, labels, -1), inertia, num_iters


def kmeans(
    key: jax.Array,
    points: jax.Array,
    valid: jax.Array | None,
    num_clusters: int,
    *,
    max_iters: int = 50,
    tol: float | jax.Array = 1e-6,
    num_restarts: int = 1,
) -> KMeansResult:
    """k-means++ seeding followed by Lloyd iterations, keeping the best of `num_restarts` runs.

    With one restart the seeding uses `key` itself; with R > 1, run r uses
    `jax.random.split(key, R)[r]`, the runs are vmapped, and the one with the lowest inertia
    (the first on ties) is returned.

    Args:
      key: a PRNG key.
      points: [N, D].
      valid: bool [N], or None for all valid.
      num_clusters: K, static, 1 <= K <= N.
      max_iters: the most Lloyd iterations per run.
      tol: the Lloyd stopping tolerance (largest squared centre move).
      num_restarts: R >= 1 seedings to try.

    Returns:
      A `KMeansResult`.

    Raises:
      ValueError: naming the argument that is out of range.
    """
    points, valid = _check_points(points, valid)
    _check_num_clusters(num_clusters, points.shape[0])
    if num_restarts < 1:
        raise ValueError(f"num_restarts: expected >= 1, got {num_restarts}")
    if max_iters < 0:
        raise ValueError(f"max_iters: expected >= 0, got {max_iters}")
    if isinstance(tol, (int, float)) and tol < 0:
        raise ValueError(f"tol: expected >= 0, got {tol}")
    return _kmeans(key, points, valid, num_clusters, max_iters, tol, num_restarts)


@functools.partial(jax.jit, static_argnames=("num_clusters", "max_iters", "num_restarts"))
def _kmeans(
    key: jax.Array,
    points: jax.Array,
    valid: jax.Array,
    num_clusters: int,
    max_iters: int,
    tol: float | jax.Array,
    num_restarts: int,
) -> KMeansResult:
    def run(run_key: jax.Array) -> KMeansResult:
        init = _seed(run_key, points, valid, num_clusters)
        return KMeansResult(*_lloyd(points, valid, init, max_iters, tol))

    if num_restarts == 1:
        return run(key)
    runs = jax.vmap(run)(jax.random.split(key, num_restarts))
    best = jnp.argmin(runs.inertia)
    return jax.tree.map(lambda x: x[best], runs)


def batched_kmeans(
    keys: jax.Array,
    points: jax.Array,
    valid: jax.Array | None,
    num_clusters: int,
    *,
    max_iters: int = 50,
    tol: float | jax.Array = 1e-6,
    num_restarts: int = 1,
) -> KMeansResult:
    """`kmeans` over a leading video axis, on videos padded to a common number of points.

    Video b's result equals `kmeans(keys[b], points[b], valid[b], ...)`. To shard the video axis,
    jit this with `in_shardings` / `out_shardings` `NamedSharding(mesh, P("data"))` (module
    docstring); nothing is communicated between videos except the loop's "all converged" test.

    Args:
      keys: [B] PRNG keys, one per video (e.g. `jax.random.fold_in(key, video_id)`, so that a
        video's clusters do not depend on the batch it lands in), or one key, split into B.
      points: [B, N, D], padded.
      valid: bool [B, N], True on real points; None for all valid.
      num_clusters: K, static.
      max_iters: as in `kmeans`.
      tol: as in `kmeans`.
      num_restarts: as in `kmeans`.

    Returns:
      A `KMeansResult` whose fields have a leading [B] axis.

    Raises:
      ValueError: naming `points`, `valid` or `keys` on a bad shape.
    """
    if points.ndim != 3:
        raise ValueError(f"points: expected [B, N, D], got shape {points.shape}")
    if valid is None:
        valid = jnp.ones(points.shape[:2], bool)
    if valid.shape != points.shape[:2]:
        raise ValueError(f"valid: expected shape [B, N] = {points.shape[:2]}, got {valid.shape}")
    if keys.shape == ():
        keys = jax.random.split(keys, points.shape[0])
    if keys.shape != points.shape[:1]:
        raise ValueError(f"keys: expected one key or [B] = {points.shape[:1]}, got {keys.shape}")
    fit = functools.partial(
        kmeans,
        num_clusters=num_clusters,
        max_iters=max_iters,
        tol=tol,
        num_restarts=num_restarts,
    )
    return jax.vmap(fit)(keys, points, valid)
