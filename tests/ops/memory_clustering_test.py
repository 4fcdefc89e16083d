"""Tests of the SHLS memory clusterer: ring-buffer writes, kNN votes, spherical k-means."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vosjax.ops import memory_clustering as mc


def _reference_writes(frames, capacity, num_fixed, dim):
    """Writes kept rows one by one into Python slots."""
    features = np.zeros((capacity, dim), np.float32)
    labels = np.full(capacity, -1)
    valid = np.zeros(capacity, bool)
    count = 0
    for rows, row_labels, keep in frames:
        for row, label, k in zip(rows, row_labels, keep, strict=True):
            if not k:
                continue
            if count < num_fixed:
                pos = count
            elif capacity > num_fixed:
                pos = num_fixed + (count - num_fixed) % (capacity - num_fixed)
            else:
                pos = None
            if pos is not None:
                features[pos], labels[pos], valid[pos] = row, label, True
            count += 1
    return features, labels, valid, count


def _frames(seed, num_frames, rows, dim):
    rng = np.random.default_rng(seed)
    return [
        (
            rng.normal(size=(rows, dim)).astype(np.float32),
            rng.integers(0, 3, size=rows).astype(np.int32),
            rng.random(rows) > 0.3,
        )
        for _ in range(num_frames)
    ]


def _assert_bank(bank, expected):
    features, labels, valid, count = expected
    np.testing.assert_array_equal(np.asarray(bank.features), features)
    np.testing.assert_array_equal(np.asarray(bank.labels), labels)
    np.testing.assert_array_equal(np.asarray(bank.valid), valid)
    assert int(bank.count) == count


@pytest.mark.parametrize("capacity, num_fixed", [(7, 3), (7, 0), (5, 5), (20, 4)])
def test_write_memory_matches_row_by_row_ring(capacity, num_fixed):
    frames = _frames(0, num_frames=5, rows=6, dim=2)
    bank = mc.init_memory(capacity, 2)
    for rows, labels, keep in frames:
        bank = mc.write_memory(
            bank, jnp.asarray(rows), jnp.asarray(labels), jnp.asarray(keep), num_fixed
        )
    _assert_bank(bank, _reference_writes(frames, capacity, num_fixed, 2))


def test_write_memory_keeps_the_fixed_rows():
    bank = mc.init_memory(4, 1)
    first = jnp.asarray([[1.0], [2.0]])
    bank = mc.write_memory(bank, first, jnp.asarray([0, 1]), jnp.ones(2, bool), num_fixed=2)
    # Seven more rows in one call: the ring (2 rows) holds the last two of them.
    more = jnp.arange(10.0, 17.0)[:, None]
    bank = mc.write_memory(bank, more, jnp.full(7, 2), jnp.ones(7, bool), num_fixed=2)
    np.testing.assert_array_equal(np.asarray(bank.features[:, 0]), [1.0, 2.0, 16.0, 15.0])
    np.testing.assert_array_equal(np.asarray(bank.labels), [0, 1, 2, 2])
    assert int(bank.count) == 9


def test_write_memory_under_scan_and_vmap():
    frames = _frames(1, num_frames=4, rows=5, dim=3)
    rows, labels, keep = (jnp.asarray(np.stack(parts)) for parts in zip(*frames, strict=True))

    @jax.jit
    def write_all(rows, labels, keep):
        def step(bank, frame):
            return mc.write_memory(bank, *frame, num_fixed=2), None

        return jax.lax.scan(step, mc.init_memory(6, 3), (rows, labels, keep))[0]

    _assert_bank(write_all(rows, labels, keep), _reference_writes(frames, 6, 2, 3))
    # Two videos at once: the second keeps nothing.
    batched = jax.vmap(write_all)(
        jnp.stack([rows, rows]), jnp.stack([labels, labels]), jnp.stack([keep, keep & False])
    )
    _assert_bank(jax.tree.map(lambda x: x[0], batched), _reference_writes(frames, 6, 2, 3))
    assert not bool(jnp.any(batched.valid[1])) and int(batched.count[1]) == 0


def _hand_bank():
    bank = mc.init_memory(6, 2)
    features = jnp.asarray([[2.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.8, 0.6], [1.0, 0.01]])
    keep = jnp.asarray([True, True, True, True, False])  # the last row is never written
    return mc.write_memory(bank, features, jnp.asarray([0, 1, 2, 1, 2]), keep, num_fixed=0)


def test_knn_votes_hand_built():
    bank = _hand_bank()
    query = jnp.asarray([[1.0, 0.1], [0.0, 3.0], [-1.0, 0.0]])
    votes, knn_sim = mc.knn_votes(query, bank, num_classes=3, k=2, ratio=0.5)
    # Query 0: nearest row 0 (class 0), then row 3 (class 1).
    # Query 1: rows 1 and 3, both class 1. Query 2: row 2 (class 2), then row 1 (class 1).
    np.testing.assert_allclose(np.asarray(votes), [[1, 0.5, 0], [0, 1.5, 0], [0, 0.5, 1]])
    q0 = np.array([1.0, 0.1]) / np.hypot(1.0, 0.1)
    expected_sim = [[q0[0], q0 @ [0.8, 0.6], -1], [-1, 1, -1], [-1, 0, 1]]
    np.testing.assert_allclose(np.asarray(knn_sim), expected_sim, atol=1e-6)


def _reference_knn(query, features, labels, valid, num_classes, k, ratio):
    q = query / np.linalg.norm(query, axis=1, keepdims=True)
    m = features / np.linalg.norm(features, axis=1, keepdims=True)
    votes = np.zeros((len(q), num_classes))
    knn_sim = np.full((len(q), num_classes), -1.0)
    for s in range(len(q)):
        sims = [(q[s] @ m[j], j) for j in range(len(m)) if valid[j]]
        for i, (value, j) in enumerate(sorted(sims, reverse=True)[:k]):
            votes[s, labels[j]] += ratio**i
            knn_sim[s, labels[j]] = max(knn_sim[s, labels[j]], value)
    return votes, knn_sim


def test_knn_votes_match_numpy_and_vmap():
    rng = np.random.default_rng(2)
    features = rng.normal(size=(2, 9, 4)).astype(np.float32)
    labels = rng.integers(0, 3, size=(2, 9)).astype(np.int32)
    valid = rng.random((2, 9)) > 0.3
    query = rng.normal(size=(2, 5, 4)).astype(np.float32)
    banks = mc.MemoryBank(
        jnp.asarray(features), jnp.asarray(labels), jnp.asarray(valid), jnp.full(2, 9)
    )
    knn = jax.jit(jax.vmap(functools.partial(mc.knn_votes, num_classes=3, k=3, ratio=0.7)))
    votes, knn_sim = knn(jnp.asarray(query), banks)
    for b in range(2):
        ref_votes, ref_sim = _reference_knn(query[b], features[b], labels[b], valid[b], 3, 3, 0.7)
        np.testing.assert_allclose(np.asarray(votes[b]), ref_votes, rtol=1e-6)
        np.testing.assert_allclose(np.asarray(knn_sim[b]), ref_sim, atol=1e-6)


def _two_clusters(seed, per_cluster, spread=0.05):
    rng = np.random.default_rng(seed)
    directions = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    truth = np.repeat([0, 1], per_cluster)
    points = directions[truth] + spread * rng.normal(size=(2 * per_cluster, 3))
    points *= rng.uniform(0.5, 3.0, size=(len(points), 1))  # norms do not matter
    return points.astype(np.float32), truth


def _unit(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_spherical_kmeans_recovers_two_clusters():
    points, truth = _two_clusters(3, per_cluster=20)
    # Invalid points far from both clusters must not pull the centres.
    points = np.concatenate([points, np.full((4, 3), [0.0, 1.0, 0.0], np.float32)])
    valid = np.arange(len(points)) < 40
    centers, center_valid = mc.spherical_kmeans(
        jax.random.key(0), jnp.asarray(points), jnp.asarray(valid), 2, 10
    )
    assert bool(jnp.all(center_valid))
    expected = np.stack([_unit(_unit(points[:40][truth == c]).sum(0)) for c in range(2)])
    order = np.argsort(np.asarray(centers)[:, 0])[::-1]  # the x-axis cluster first
    np.testing.assert_allclose(np.asarray(centers)[order], expected, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(centers), axis=1), 1.0, rtol=1e-6)


def test_spherical_kmeans_iterations_match_numpy():
    rng = np.random.default_rng(4)
    points = rng.normal(size=(30, 4)).astype(np.float32)
    valid = rng.random(30) > 0.2
    key = jax.random.key(5)
    init, _ = mc.spherical_kmeans(key, jnp.asarray(points), jnp.asarray(valid), 3, 0)
    init = np.asarray(init, np.float64)
    unit = _unit(points.astype(np.float64))[valid]
    np.testing.assert_allclose(
        np.min(np.abs(init[:, None] - unit[None]).max(-1), axis=1), 0.0, atol=1e-6
    )  # each initial centre is one of the valid points
    centers = init.copy()
    for _ in range(4):
        nearest = (unit @ centers.T).argmax(1)
        for c in range(3):
            if (nearest == c).any():
                centers[c] = _unit(unit[nearest == c].sum(0))
    got, _ = mc.spherical_kmeans(key, jnp.asarray(points), jnp.asarray(valid), 3, 4)
    np.testing.assert_allclose(np.asarray(got), centers, atol=1e-5)


def test_spherical_kmeans_restarts_keep_the_best_run():
    rng = np.random.default_rng(6)
    points = jnp.asarray(rng.normal(size=(40, 3)), jnp.float32)
    valid = jnp.ones(40, bool)
    unit = _unit(np.asarray(points))

    def objective(centers):
        return (unit @ np.asarray(centers).T).max(1).sum()

    key = jax.random.key(7)
    runs = [
        objective(mc.spherical_kmeans(k, points, valid, 5, 3)[0]) for k in jax.random.split(key, 4)
    ]
    best, _ = mc.spherical_kmeans(key, points, valid, 5, 3, num_restarts=4)
    assert objective(best) == pytest.approx(max(runs), rel=1e-6)
    assert len({round(r, 4) for r in runs}) > 1  # the restarts did differ


def test_spherical_kmeans_with_fewer_valid_points_than_clusters():
    points = jnp.asarray([[3.0, 0.0], [0.0, 2.0], [1.0, 1.0], [5.0, 5.0]])
    valid = jnp.asarray([True, True, False, False])
    centers, center_valid = mc.spherical_kmeans(jax.random.key(1), points, valid, 4, 5)
    assert int(jnp.sum(center_valid)) == 2
    got = sorted(map(tuple, np.asarray(centers)[np.asarray(center_valid)].round(6)))
    assert got == [(0.0, 1.0), (1.0, 0.0)]
    np.testing.assert_array_equal(np.asarray(centers)[~np.asarray(center_valid)], 0.0)


def test_class_centroids_per_class():
    points, truth = _two_clusters(8, per_cluster=6)
    features = np.concatenate([points, [[0.0, 2.0, 0.0]]]).astype(np.float32)
    labels = np.concatenate([np.zeros(12, np.int32), [1]])  # class 2 absent
    bank = mc.write_memory(
        mc.init_memory(16, 3),
        jnp.asarray(features),
        jnp.asarray(labels),
        jnp.ones(13, bool),
        num_fixed=13,
    )
    key = jax.random.key(9)
    centers, valid = mc.class_centroids(key, bank, 3, clusters_per_class=2, num_iters=10)
    assert centers.shape == (3, 2, 3)
    np.testing.assert_array_equal(np.asarray(valid), [[True, True], [True, False], [False, False]])
    expected = np.stack([_unit(_unit(points[truth == c]).sum(0)) for c in range(2)])
    order = np.argsort(np.asarray(centers[0])[:, 0])[::-1]
    np.testing.assert_allclose(np.asarray(centers[0])[order], expected, atol=1e-5)
    np.testing.assert_allclose(np.asarray(centers[1, 0]), [0.0, 1.0, 0.0], atol=1e-6)
    alone = mc.spherical_kmeans(
        jax.random.fold_in(key, 0), bank.features, bank.valid & (bank.labels == 0), 2, 10
    )[0]
    np.testing.assert_allclose(np.asarray(centers[0]), np.asarray(alone), atol=1e-6)


def test_attention_features_hand_built():
    bank = _hand_bank()
    centers = jnp.asarray(
        [[[1.0, 0.0], [0.0, 0.0]], [[0.0, 1.0], [0.6, 0.8]], [[-1.0, 0.0], [0.0, 0.0]]]
    )
    center_valid = jnp.asarray([[True, False], [True, True], [False, False]])
    query = jnp.asarray([[0.0, 3.0], [-1.0, 0.0]])
    out = mc.attention_features(
        query, bank, centers, center_valid, num_classes=3, absent=-5.0, knn_channel="nearest"
    )
    np.testing.assert_allclose(np.asarray(out.votes), [[0, 1.5, 0], [0, 0.5, 1]])
    np.testing.assert_array_equal(np.asarray(out.knn_label), [1, 2])
    # Query 0 = (0, 1): neighbours of class 1 only (sims 1, 0.6); centroid sims: class 0 -> 0,
    # class 1 -> max(1, 0.8) = 1, class 2 -> none.
    expected_0 = [[-5, 1, 0, 1], [1, -5, 1, 0], [-5, 1, -5, 1]]
    # Query 1 = (-1, 0): neighbours row 2 (class 2, sim 1), row 1 (class 1, sim 0);
    # centroid sims: class 0 -> -1, class 1 -> max(0, -0.6) = 0.
    expected_1 = [[-5, 1, -1, 0], [0, 1, 0, -1], [1, 0, -5, 0]]
    expected = np.array([expected_0, expected_1], np.float32)
    np.testing.assert_allclose(np.asarray(out.features), expected, atol=1e-6)
    nearest = mc.attention_features(
        query, bank, centers, center_valid, num_classes=3, knn_channel="nearest"
    )
    np.testing.assert_allclose(
        np.asarray(nearest.features), np.where(expected == -5, 0.0, expected), atol=1e-6
    )
    # The default kNN channel is the released dist_per_class2: query 0's class 1 gets
    # (1 x 1 + 0.5 x 0.6) / 1.5; query 1's class 1 (found at rank 2, sim 0) gets 0 and its
    # class 2 (rank 1, sim 1) 1 / 1.5. The other channels are unchanged.
    released = mc.attention_features(query, bank, centers, center_valid, num_classes=3)
    knn = np.array([[0, 1.3 / 1.5, 0], [0, 0, 1 / 1.5]])
    np.testing.assert_allclose(np.asarray(released.features[..., 0]), knn, atol=1e-6)
    contrast = np.array([[1.3 / 1.5, 0, 1.3 / 1.5], [1 / 1.5, 1 / 1.5, 0]])
    np.testing.assert_allclose(np.asarray(released.features[..., 1]), contrast, atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(released.features[..., 2:]),
        np.where(expected == -5, 0.0, expected)[..., 2:],
        atol=1e-6,
    )


def test_knn_class_similarity_sorts_before_weighting():
    # Memory: class 0 at (1, 0), class 1 at (0.6, 0.8) and (0, 1); query (1, 0).
    bank = mc.write_memory(
        mc.init_memory(4, 2),
        jnp.asarray([[1.0, 0.0], [0.6, 0.8], [0.0, 1.0]]),
        jnp.asarray([0, 1, 1]),
        jnp.ones(3, bool),
        num_fixed=0,
    )
    label, sim = mc.knn_class_similarity(jnp.asarray([[1.0, 0.0], [0.0, 2.0]]), bank, 2)
    np.testing.assert_array_equal(np.asarray(label), [0, 1])
    # Query 0: neighbours (class 0, 1.0), (class 1, 0.6). Class 1 is only at rank 2, but its
    # masked similarities (0, 0.6) are sorted first: weight 1, not 0.5.
    # Query 1: neighbours (class 1, 1.0), (class 1, 0.8): (1 + 0.4) / 1.5.
    np.testing.assert_allclose(np.asarray(sim), [[1 / 1.5, 0.6 / 1.5], [0, 1.4 / 1.5]], atol=1e-6)
    # With weights (1, 0.5) the label is always the nearest neighbour's.
    label3, _ = mc.knn_class_similarity(jnp.asarray([[0.7, 0.71]]), bank, 2, k=3)
    np.testing.assert_array_equal(np.asarray(label3), [1])


def test_knn_label_is_minus_one_without_memory():
    bank = mc.init_memory(4, 2)
    centers = jnp.zeros((2, 2, 2))
    out = mc.attention_features(
        jnp.ones((3, 2)), bank, centers, jnp.zeros((2, 2), bool), num_classes=2
    )
    np.testing.assert_array_equal(np.asarray(out.knn_label), [-1, -1, -1])
    np.testing.assert_array_equal(np.asarray(out.features), 0.0)


def test_bad_arguments_raise():
    bank = mc.init_memory(4, 2)
    with pytest.raises(ValueError, match="num_fixed"):
        mc.write_memory(bank, jnp.zeros((3, 2)), jnp.zeros(3, jnp.int32), jnp.ones(3, bool), 5)
    with pytest.raises(ValueError, match="features"):
        mc.write_memory(bank, jnp.zeros((3, 5)), jnp.zeros(3, jnp.int32), jnp.ones(3, bool), 0)
    with pytest.raises(ValueError, match="k"):
        mc.knn_votes(jnp.zeros((3, 2)), bank, 2, k=5)
    with pytest.raises(ValueError, match="num_clusters"):
        mc.spherical_kmeans(jax.random.key(0), jnp.zeros((3, 2)), jnp.ones(3, bool), 4, 1)
    with pytest.raises(ValueError, match="capacity"):
        mc.init_memory(0, 2)
