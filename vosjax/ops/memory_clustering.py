"""The SHLS memory clusterer: a fixed-size memory of labelled superfeatures, kNN and k-means.

SHLS (Mendonca et al., BMVC 2023) segments a frame's superpixels by comparing their
superfeatures with a memory of the superfeatures of earlier frames, labelled by class. The
reference does this with faiss; here it is jittable JAX on a fixed-capacity `MemoryBank`:

- `write_memory` appends the kept superfeatures of a frame. When the bank is full, new rows
  overwrite the oldest rows except the first `num_fixed` ever written (the first frame's, whose
  labels are given), which are never overwritten: the non-fixed part is a ring buffer.
- `knn_votes` finds each query's k nearest memory entries by cosine similarity (faiss
  `IndexFlatIP` on L2-normalised vectors, k = 2) and weighs their labels by ratio**i.
- `spherical_kmeans` / `class_centroids` cluster each class's entries into a few unit centroids
  (faiss spherical k-means, 2 clusters per class).
- `attention_features` turns both into SHLS's 4 attention channels per class, and the kNN
  label (the pre-segmentation).

Classes are 0-based ids in [0, num_classes) (the reference's labels are 1-based, with the
background at 1). Every function is pure, float32 and jittable with static sizes; cosine
products use `Precision.HIGHEST` so that accelerators do not rank neighbours with bf16 products.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from vosjax.ops import affinity

_HIGHEST = lax.Precision.HIGHEST


class MemoryBank(NamedTuple):
    """A fixed-capacity memory of labelled feature vectors (a pytree).

    Attributes:
      features: float32 [C, D], the stored vectors (any norm; normalised where compared).
      labels: int32 [C], the class of each row; -1 in never-written rows.
      valid: bool [C], True for written rows.
      count: int32 scalar, the number of rows written so far in total (it keeps growing once
        the bank is full: it sets where the ring buffer writes next).
    """

    features: jax.Array
    labels: jax.Array
    valid: jax.Array
    count: jax.Array


class Attention(NamedTuple):
    """The output of `attention_features` (a pytree).

    Attributes:
      features: float32 [S, K, 4], the SHLS attention channels of each query for each class.
      votes: float32 [S, K], the kNN votes (`knn_votes`).
      knn_label: int32 [S], argmax of the votes (lowest class on ties), -1 when a query has
        no valid neighbour: the kNN pre-segmentation label.
    """

    features: jax.Array
    votes: jax.Array
    knn_label: jax.Array


def init_memory(capacity: int, dim: int) -> MemoryBank:
    """An empty bank.

    Args:
      capacity: C >= 1, the number of rows.
      dim: D >= 1, the feature size.

    Returns:
      A `MemoryBank` with zero features, labels -1, nothing valid and count 0.

    Raises:
      ValueError: naming `capacity` or `dim` when < 1.
    """
    if capacity < 1:
        raise ValueError(f"capacity: expected >= 1, got {capacity}")
    if dim < 1:
        raise ValueError(f"dim: expected >= 1, got {dim}")
    return MemoryBank(
        features=jnp.zeros((capacity, dim), jnp.float32),
        labels=jnp.full((capacity,), -1, jnp.int32),
        valid=jnp.zeros((capacity,), bool),
        count=jnp.zeros((), jnp.int32),
    )


def _check_bank(bank: MemoryBank) -> tuple[int, int]:
    if bank.features.ndim != 2:
        raise ValueError(f"bank.features: expected [C, D], got shape {bank.features.shape}")
    capacity, dim = bank.features.shape
    if bank.labels.shape != (capacity,) or bank.valid.shape != (capacity,):
        raise ValueError(
            f"bank: expected labels and valid of shape [C] = ({capacity},), got "
            f"{bank.labels.shape} and {bank.valid.shape}"
        )
    return capacity, dim


def _check_rows(name: str, rows: jax.Array, dim: int) -> None:
    if rows.ndim != 2 or rows.shape[1] != dim:
        raise ValueError(f"{name}: expected [S, D] with D = {dim}, got shape {rows.shape}")


@functools.partial(jax.jit, static_argnames="num_fixed")
def write_memory(
    bank: MemoryBank,
    features: jax.Array,
    labels: jax.Array,
    keep: jax.Array,
    num_fixed: int,
) -> MemoryBank:
    """Appends the kept rows to the bank, overwriting its oldest non-fixed rows when full.

    Kept rows are numbered in order, continuing from `bank.count`: the n-th row ever written
    goes to position n if n < num_fixed, else to num_fixed + (n - num_fixed) mod
    (C - num_fixed). So the bank fills up in order, and once full each new row replaces the
    oldest row at a position >= num_fixed; the first `num_fixed` rows ever written stay. When
    one call keeps more rows than the ring holds, only its last ones land (as if written one by
    one). With num_fixed == C, rows written once the bank is full are dropped.

    Args:
      bank: the current bank, capacity C.
      features: [S, D], the candidate rows (e.g. a frame's superfeatures).
      labels: int [S], their classes.
      keep: bool [S], which rows to write (e.g. valid superpixels of confident prediction).
      num_fixed: static, 0 <= num_fixed <= C.

    Returns:
      The new bank; `count` grows by the number of kept rows.

    Raises:
      ValueError: naming the argument whose shape or value is out of range.
    """
    capacity, dim = _check_bank(bank)
    _check_rows("features", features, dim)
    num_rows = features.shape[0]
    if labels.shape != (num_rows,) or keep.shape != (num_rows,):
        raise ValueError(
            f"labels, keep: expected shape [S] = ({num_rows},), got {labels.shape}, {keep.shape}"
        )
    if not 0 <= num_fixed <= capacity:
        raise ValueError(f"num_fixed: expected 0 <= num_fixed <= C = {capacity}, got {num_fixed}")
    ring = capacity - num_fixed
    kept = keep.astype(jnp.int32)
    index = bank.count + jnp.cumsum(kept) - kept  # the number of each kept row, [S]
    total = bank.count + jnp.sum(kept)
    ring_pos = num_fixed + (index - num_fixed) % max(ring, 1)
    position = jnp.where(index < num_fixed, index, ring_pos)
    # Rows that a later row of this same call would overwrite are not written, so that the
    # scatter has no duplicate positions (whose order XLA leaves undefined).
    lands = keep & ((index < num_fixed) | (index >= total - ring))
    target = jnp.where(lands, position, capacity)  # out of bounds: dropped
    return MemoryBank(
        features=bank.features.at[target].set(jnp.asarray(features, jnp.float32), mode="drop"),
        labels=bank.labels.at[target].set(labels.astype(jnp.int32), mode="drop"),
        valid=bank.valid.at[target].set(True, mode="drop"),
        count=total.astype(jnp.int32),
    )


def _knn(
    query: jax.Array, bank: MemoryBank, num_classes: int, k: int, ratio: float | jax.Array
) -> tuple[jax.Array, jax.Array]:
    """(votes [S, K], per-class best neighbour similarity [S, K], -inf for none)."""
    sim = jnp.matmul(
        affinity.l2_normalize(query), affinity.l2_normalize(bank.features).T, precision=_HIGHEST
    )
    sim = jnp.where(bank.valid[None, :], sim, -jnp.inf)
    top_sim, top_index = lax.top_k(sim, k)  # [S, k], nearest first
    found = jnp.take(bank.valid, top_index)
    one_hot = jax.nn.one_hot(jnp.take(bank.labels, top_index), num_classes, dtype=bool)
    one_hot = one_hot & found[..., None]  # [S, k, K]
    # ratio**i as a running product: exact for any ratio, including 0 and negative ones.
    decay = jnp.full((k - 1,), ratio, jnp.float32)
    weights = jnp.concatenate([jnp.ones((1,), jnp.float32), jnp.cumprod(decay)])
    votes = jnp.einsum("skc,k->sc", one_hot.astype(jnp.float32), weights, precision=_HIGHEST)
    best = jnp.max(jnp.where(one_hot, top_sim[..., None], -jnp.inf), axis=1)
    return votes, best


def _check_knn(query: jax.Array, bank: MemoryBank, num_classes: int, k: int) -> None:
    capacity, dim = _check_bank(bank)
    _check_rows("query", query, dim)
    if num_classes < 1:
        raise ValueError(f"num_classes: expected >= 1, got {num_classes}")
    if not 1 <= k <= capacity:
        raise ValueError(f"k: expected 1 <= k <= C = {capacity}, got {k}")


@functools.partial(jax.jit, static_argnames=("num_classes", "k"))
def knn_votes(
    query: jax.Array,
    bank: MemoryBank,
    num_classes: int,
    k: int = 2,
    ratio: float | jax.Array = 0.5,
) -> tuple[jax.Array, jax.Array]:
    """Weighted kNN class votes of each query among the valid memory rows.

    Queries and memory rows are L2-normalised, so similarities are cosines. The k valid rows
    with the largest similarity are the neighbours, i = 0 the nearest (`lax.top_k`: the lower
    row index first among equal similarities). If fewer than k rows are valid, the missing
    neighbours count for nothing; rows with a label outside [0, num_classes) are neighbours
    that vote for no class.

    Args:
      query: [S, D].
      bank: a `MemoryBank` of capacity C >= k.
      num_classes: K, static.
      k: the number of neighbours, static, 1 <= k <= C.
      ratio: the vote weight decay r.

    Returns:
      (votes float32 [S, K]: votes[s, c] = sum over the neighbours i of s with label c of
      r**i; knn_sim float32 [S, K]: the largest similarity among the neighbours of s with
      label c, or -1 when no neighbour has label c).

    Raises:
      ValueError: naming the argument whose shape or value is out of range.
    """
    _check_knn(query, bank, num_classes, k)
    votes, best = _knn(query, bank, num_classes, k, ratio)
    return votes, jnp.where(jnp.isfinite(best), best, -1.0)


@functools.partial(jax.jit, static_argnames=("num_classes", "k"))
def knn_class_similarity(
    query: jax.Array,
    bank: MemoryBank,
    num_classes: int,
    k: int = 2,
    ratio: float | jax.Array = 0.5,
) -> tuple[jax.Array, jax.Array]:
    """The released SHLS kNN (`FaissKNeighbors.predict` with `dist_per_class2`).

    With the k nearest valid rows by cosine similarity (nearest first) and weights
    w_i = ratio**i:
    - the label is the weighted mode of the neighbours' labels (sklearn `weighted_mode`: the
      lowest class on ties), i.e. with k = 2 and ratio < 1 always the nearest one's label;
    - the similarity to class c is sum_i w_i v_i / sum_i w_i, where v = the neighbours'
      similarities with those of other classes set to 0, SORTED in decreasing order before
      the weighting. A class found only at rank 2 therefore gets weight 1 (not ratio), and
      negative similarities of class c sort below the zeros of the other classes.

    Args:
      query: [S, D].
      bank: a `MemoryBank` of capacity C >= k with at least k valid rows.
      num_classes: K, static.
      k: the number of neighbours, static.
      ratio: the weight decay r.

    Returns:
      (label int32 [S] in [0, K), -1 without a valid neighbour; similarity float32 [S, K]).

    Raises:
      ValueError: naming the argument whose shape or value is out of range.
    """
    _check_knn(query, bank, num_classes, k)
    sim = jnp.matmul(
        affinity.l2_normalize(query), affinity.l2_normalize(bank.features).T, precision=_HIGHEST
    )
    sim = jnp.where(bank.valid[None, :], sim, -jnp.inf)
    top_sim, top_index = lax.top_k(sim, k)  # [S, k]
    found = jnp.take(bank.valid, top_index)
    labels = jnp.where(found, jnp.take(bank.labels, top_index), -1)
    decay = jnp.full((k - 1,), ratio, jnp.float32)
    weights = jnp.concatenate([jnp.ones((1,), jnp.float32), jnp.cumprod(decay)])
    member = labels[..., None] == jnp.arange(num_classes)  # [S, k, K]
    votes = jnp.einsum("skc,k->sc", member.astype(jnp.float32), weights, precision=_HIGHEST)
    label = jnp.where(jnp.any(found, -1), jnp.argmax(votes, -1), -1).astype(jnp.int32)
    masked = jnp.where(member & found[..., None], top_sim[..., None], 0.0)
    ordered = -jnp.sort(-masked, axis=1)  # decreasing along the neighbours
    similarity = jnp.einsum("skc,k->sc", ordered, weights, precision=_HIGHEST) / jnp.sum(weights)
    return label, similarity


def centroid_similarity(query: jax.Array, centers: jax.Array) -> jax.Array:
    """[S, D] queries, [K, m, D] centres -> [S, K]: the largest inner product of each
    L2-normalised query with the (unnormalised) centres of each class (faiss IndexFlatIP)."""
    sim = jnp.einsum("sd,kmd->skm", affinity.l2_normalize(query), centers, precision=_HIGHEST)
    return jnp.max(sim, axis=-1)


def _spherical_kmeans_run(
    key: jax.Array,
    points: jax.Array,
    valid: jax.Array,
    num_clusters: int,
    num_iters: int,
    init_centers: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """One run on unit points: (centers [K, D], center_valid [K], total similarity)."""
    if init_centers is None:
        # K distinct valid points, uniformly at random: the K largest of uniform scores
        # (invalid points score -1 and are picked only when fewer than K points are valid).
        scores = jnp.where(valid, jax.random.uniform(key, valid.shape), -1.0)
        top_scores, chosen = lax.top_k(scores, num_clusters)
        center_valid = top_scores >= 0.0
        centers = jnp.where(center_valid[:, None], points[chosen], 0.0)
    else:
        centers = jnp.asarray(init_centers, jnp.float32)
        center_valid = jnp.ones((num_clusters,), bool)

    def similarities(centers: jax.Array) -> jax.Array:
        sim = jnp.matmul(points, centers.T, precision=_HIGHEST)  # [N, K]
        return jnp.where(center_valid[None, :], sim, -jnp.inf)

    def step(_: jax.Array, centers: jax.Array) -> jax.Array:
        nearest = jnp.argmax(similarities(centers), axis=-1)
        members = jax.nn.one_hot(nearest, num_clusters, dtype=jnp.float32) * valid[:, None]
        sums = jnp.matmul(members.T, points, precision=_HIGHEST)  # [K, D]
        norms = jnp.sqrt(jnp.sum(sums * sums, axis=-1, keepdims=True))
        # An empty cluster (or one whose members cancel out) keeps its centre.
        return jnp.where(norms > 1e-12, sums / jnp.maximum(norms, 1e-12), centers)

    centers = lax.fori_loop(0, num_iters, step, centers)
    best = jnp.max(similarities(centers), axis=-1)
    objective = jnp.sum(jnp.where(valid, best, 0.0))
    return centers, center_valid, objective


@functools.partial(jax.jit, static_argnames=("num_clusters", "num_iters", "num_restarts"))
def spherical_kmeans(
    key: jax.Array,
    points: jax.Array,
    valid: jax.Array,
    num_clusters: int,
    num_iters: int,
    num_restarts: int = 1,
    init_centers: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array]:
    """Cosine k-means: points and centres on the unit sphere, assigned by largest dot product.

    Points are L2-normalised. Each run starts from `num_clusters` distinct valid points drawn
    uniformly at random, then makes `num_iters` updates: every valid point goes to the valid
    centre with the largest dot product (the lowest index on ties) and every centre becomes
    the normalised sum (= normalised mean) of its points. A centre left with no point keeps
    its position (faiss would split a large cluster instead). With R > 1 restarts, run r uses
    `jax.random.split(key, R)[r]` and the run with the largest total similarity (sum over
    valid points of the dot product with their centre) is returned; one restart uses `key`.

    With `init_centers` every run starts from them (faiss `Kmeans.train(init_centroids=...)`:
    all restarts then give the same result, so one run is made and `key` is unused): the
    released SHLS's memory update refits each class from its previous centroids.

    Args:
      key: a PRNG key.
      points: [N, D].
      valid: bool [N].
      num_clusters: K, static, 1 <= K <= N.
      num_iters: static, >= 0.
      num_restarts: static, >= 1.
      init_centers: [K, D] starting centres (used as given), or None for random points.

    Returns:
      (centers float32 [K, D], unit rows, zero rows where invalid; center_valid bool [K]:
      False for the K - n extra centres when only n < K points are valid).

    Raises:
      ValueError: naming the argument whose shape or value is out of range.
    """
    if points.ndim != 2:
        raise ValueError(f"points: expected [N, D], got shape {points.shape}")
    if valid.shape != points.shape[:1]:
        raise ValueError(f"valid: expected shape [N] = {points.shape[:1]}, got {valid.shape}")
    if not 1 <= num_clusters <= points.shape[0]:
        raise ValueError(
            f"num_clusters: expected 1 <= num_clusters <= N = {points.shape[0]}, got {num_clusters}"
        )
    if num_iters < 0:
        raise ValueError(f"num_iters: expected >= 0, got {num_iters}")
    if num_restarts < 1:
        raise ValueError(f"num_restarts: expected >= 1, got {num_restarts}")
    if init_centers is not None and init_centers.shape != (num_clusters, points.shape[1]):
        raise ValueError(
            f"init_centers: expected shape {(num_clusters, points.shape[1])}, got "
            f"{init_centers.shape}"
        )
    points = affinity.l2_normalize(points)
    valid = jnp.asarray(valid, bool)
    run = functools.partial(
        _spherical_kmeans_run,
        points=points,
        valid=valid,
        num_clusters=num_clusters,
        num_iters=num_iters,
        init_centers=init_centers,
    )
    if num_restarts == 1 or init_centers is not None:
        centers, center_valid, _ = run(key)
        return centers, center_valid
    centers, center_valid, objective = jax.vmap(run)(jax.random.split(key, num_restarts))
    best = jnp.argmax(objective)
    return centers[best], center_valid[best]


@functools.partial(
    jax.jit, static_argnames=("num_classes", "clusters_per_class", "num_iters", "num_restarts")
)
def class_centroids(
    key: jax.Array,
    bank: MemoryBank,
    num_classes: int,
    clusters_per_class: int = 2,
    num_iters: int = 20,
    num_restarts: int = 1,
) -> tuple[jax.Array, jax.Array]:
    """Spherical k-means of each class's valid memory rows (vmapped over classes).

    Class c is clustered by `spherical_kmeans(jax.random.fold_in(key, c), bank.features,
    bank.valid & (bank.labels == c), clusters_per_class, num_iters, num_restarts)`.

    Args:
      key: a PRNG key.
      bank: a `MemoryBank` of capacity C >= clusters_per_class.
      num_classes: K, static.
      clusters_per_class: m, static.
      num_iters: static.
      num_restarts: static.

    Returns:
      (centers float32 [K, m, D], unit rows; valid bool [K, m]: False for the centres of a
      class with fewer than m rows, e.g. all m of a class absent from the memory).

    Raises:
      ValueError: naming the argument whose value is out of range.
    """
    _check_bank(bank)
    if num_classes < 1:
        raise ValueError(f"num_classes: expected >= 1, got {num_classes}")

    def one_class(c: jax.Array) -> tuple[jax.Array, jax.Array]:
        members = bank.valid & (bank.labels == c)
        return spherical_kmeans(
            jax.random.fold_in(key, c),
            bank.features,
            members,
            clusters_per_class,
            num_iters,
            num_restarts,
        )

    return jax.vmap(one_class)(jnp.arange(num_classes))


def _max_over_others(per_class: jax.Array) -> jax.Array:
    """[S, K] -> [S, K]: entry c is the max over classes c' != c (-inf if K == 1)."""
    num_classes = per_class.shape[-1]
    others = ~jnp.eye(num_classes, dtype=bool)  # [c, c']
    return jnp.max(jnp.where(others, per_class[:, None, :], -jnp.inf), axis=-1)


KNN_CHANNELS = ("released", "nearest")


@functools.partial(jax.jit, static_argnames=("num_classes", "k", "knn_channel"))
def attention_features(
    query: jax.Array,
    bank: MemoryBank,
    centers: jax.Array,
    center_valid: jax.Array,
    num_classes: int,
    k: int = 2,
    ratio: float | jax.Array = 0.5,
    absent: float | jax.Array = 0.0,
    knn_channel: str = "released",
) -> Attention:
    """The SHLS attention channels of each query superfeature for each class.

    With a per-class kNN similarity and cosine similarities to the class centroids, channel

    - 0: the kNN similarity to class c: with knn_channel='released' (default) the released
      `dist_per_class2` (`knn_class_similarity`: the neighbours' similarities, other classes
      zeroed, sorted, weighted by ratio**i / sum); with 'nearest' knn_sim[s, c] of
      `knn_votes`, the largest similarity among the k neighbours of class c;
    - 1: max over c' != c of knn_sim[s, c'];
    - 2: the largest similarity to a valid centroid of class c;
    - 3: the largest similarity to a valid centroid of a class c' != c;

    and a channel with nothing to take the max over (no neighbour of that class, no valid
    centroid, or no other class) is `absent` (so channel 0 is `knn_votes`'s knn_sim with
    `absent` where that has -1). The default 0 is the floor of the similarities of
    SHLS's superfeatures (which come out of a ReLU, so their cosines lie in [0, 1]) and the
    value `segment_pooling.paint` gives pixels outside every superpixel.

    Args:
      query: [S, D] superfeatures.
      bank: a `MemoryBank` of capacity C >= k.
      centers: [K, m, D] class centroids (`class_centroids`); normalised here.
      center_valid: bool [K, m].
      num_classes: K, static.
      k: the number of neighbours, static.
      ratio: the kNN vote weight decay.
      absent: the value of a channel with nothing to compare with.
      knn_channel: 'released' or 'nearest' (above).

    Returns:
      An `Attention` (features [S, K, 4], votes [S, K], knn_label [S]; the label is the
      argmax of the votes, which with ratio < 1 is the nearest neighbour's label as the
      released weighted mode gives).

    Raises:
      ValueError: naming the argument whose shape or value is out of range.
    """
    _check_knn(query, bank, num_classes, k)
    dim = bank.features.shape[1]
    if centers.ndim != 3 or centers.shape[0] != num_classes or centers.shape[2] != dim:
        raise ValueError(
            f"centers: expected [K, m, D] with K = {num_classes}, D = {dim}, got {centers.shape}"
        )
    if center_valid.shape != centers.shape[:2]:
        raise ValueError(
            f"center_valid: expected shape [K, m] = {centers.shape[:2]}, got {center_valid.shape}"
        )
    if knn_channel not in KNN_CHANNELS:
        raise ValueError(f"knn_channel={knn_channel!r}: expected one of {KNN_CHANNELS}")
    votes, knn_own = _knn(query, bank, num_classes, k, ratio)
    has_neighbour = jnp.any(jnp.isfinite(knn_own), axis=-1)
    if knn_channel == "released":
        _, released = knn_class_similarity(query, bank, num_classes, k, ratio)
        knn_own = jnp.where(has_neighbour[:, None], released, -jnp.inf)
    knn_label = jnp.where(has_neighbour, jnp.argmax(votes, axis=-1), -1).astype(jnp.int32)

    unit_centers = affinity.l2_normalize(centers)
    center_sim = jnp.einsum(
        "sd,kmd->skm", affinity.l2_normalize(query), unit_centers, precision=_HIGHEST
    )
    center_own = jnp.max(jnp.where(center_valid[None], center_sim, -jnp.inf), axis=-1)
    channels = jnp.stack(
        [knn_own, _max_over_others(knn_own), center_own, _max_over_others(center_own)], axis=-1
    )
    channels = jnp.where(jnp.isfinite(channels), channels, jnp.asarray(absent, jnp.float32))
    return Attention(features=channels, votes=votes, knn_label=knn_label)
