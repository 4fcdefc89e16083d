"""Tests of the space-time k-means: seeding, Lloyd against numpy, masks, sharding, positions."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vosjax.ops import kmeans


def _blobs(seed: int, sizes: tuple[int, ...], dim: int, spread: float, scale: float):
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(len(sizes), dim)) * scale
    labels = np.repeat(np.arange(len(sizes)), sizes)
    points = means[labels] + spread * rng.normal(size=(labels.size, dim))
    return points.astype(np.float32), labels


def _contingency(a: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    table = np.zeros((k, k), int)
    np.add.at(table, (a, b), 1)
    return table


def _numpy_lloyd(points, centers, max_iters, tol):
    """Reference Lloyd in float64 with explicit differences."""
    points = points.astype(np.float64)
    centers = centers.astype(np.float64).copy()
    shift, it = np.inf, 0
    while it < max_iters and shift > tol:
        d2 = ((points[:, None, :] - centers[None, :, :]) ** 2).sum(-1)
        labels = d2.argmin(1)
        new = centers.copy()
        for k in range(len(centers)):
            members = points[labels == k]
            if len(members):
                new[k] = members.mean(0)
        shift = ((new - centers) ** 2).sum(-1).max()
        centers, it = new, it + 1
    d2 = ((points[:, None, :] - centers[None, :, :]) ** 2).sum(-1)
    labels = d2.argmin(1)
    return centers, labels, d2.min(1).sum(), it


def test_recovers_well_separated_blobs():
    sizes = (60, 90, 50)
    points, truth = _blobs(0, sizes, dim=4, spread=0.3, scale=10.0)
    result = kmeans.kmeans(jax.random.key(1), jnp.asarray(points), None, 3)
    labels = np.asarray(result.assignments)
    table = _contingency(truth, labels, 3)
    # A permutation matrix scaled by the blob sizes: each blob is exactly one cluster.
    assert (np.count_nonzero(table, axis=1) == 1).all()
    assert (np.count_nonzero(table, axis=0) == 1).all()
    assert sorted(table.max(1)) == sorted(sizes)
    true_inertia = sum(
        ((points[truth == k] - points[truth == k].mean(0)) ** 2).sum() for k in range(3)
    )
    assert float(result.inertia) == pytest.approx(true_inertia, rel=1e-4)
    # The centres are the blob means.
    for k in range(3):
        cluster = labels[truth == k][0]
        np.testing.assert_allclose(result.centers[cluster], points[truth == k].mean(0), atol=1e-4)


@pytest.mark.parametrize("tol", [0.0, 1e-6])
def test_lloyd_matches_numpy_reference(tol):
    rng = np.random.default_rng(3)
    points = rng.uniform(size=(400, 5)).astype(np.float32)
    init = points[:6].copy()
    ref_centers, ref_labels, ref_inertia, ref_iters = _numpy_lloyd(points, init, 100, tol)
    centers, labels, inertia, iters = kmeans.lloyd(
        jnp.asarray(points), None, jnp.asarray(init), max_iters=100, tol=tol
    )
    assert ref_iters > 3  # a real run, not an immediate stop
    assert int(iters) == ref_iters
    np.testing.assert_array_equal(labels, ref_labels)
    np.testing.assert_allclose(centers, ref_centers, atol=1e-5)
    assert float(inertia) == pytest.approx(ref_inertia, rel=1e-5)


def test_lloyd_stops_at_max_iters():
    rng = np.random.default_rng(4)
    points = rng.uniform(size=(300, 3)).astype(np.float32)
    init = points[:5].copy()
    ref_centers, ref_labels, _, ref_iters = _numpy_lloyd(points, init, 2, 0.0)
    centers, labels, _, iters = kmeans.lloyd(
        jnp.asarray(points), None, jnp.asarray(init), max_iters=2, tol=0.0
    )
    assert ref_iters == int(iters) == 2
    np.testing.assert_allclose(centers, ref_centers, atol=1e-5)
    np.testing.assert_array_equal(labels, ref_labels)
    # Zero iterations only assigns to the initial centres.
    centers0, labels0, _, iters0 = kmeans.lloyd(
        jnp.asarray(points), None, jnp.asarray(init), max_iters=0, tol=0.0
    )
    assert int(iters0) == 0
    np.testing.assert_array_equal(centers0, init)
    np.testing.assert_array_equal(labels0, ((points[:, None] - init) ** 2).sum(-1).argmin(1))


def test_kmeans_plus_plus_splits_far_groups():
    rng = np.random.default_rng(5)
    near = rng.normal(size=(50, 2))
    far = rng.normal(size=(50, 2)) + np.array([100.0, 0.0])
    points = jnp.asarray(np.concatenate([near, far]), jnp.float32)
    keys = jax.random.split(jax.random.key(0), 100)
    seed = jax.vmap(lambda k: kmeans.kmeans_plus_plus(k, points, None, 2))
    centers = np.asarray(seed(keys))  # [100, 2, 2]
    side = centers[..., 0] > 50.0
    assert (side[:, 0] != side[:, 1]).sum() >= 95
    # The first centre is uniform: both groups come first in a fair share of the seeds.
    assert 25 <= side[:, 0].sum() <= 75


def test_kmeans_plus_plus_never_picks_invalid_points():
    rng = np.random.default_rng(6)
    points = np.concatenate(
        [rng.normal(size=(30, 2)), rng.normal(size=(30, 2)) + 20.0, [[1e4, 1e4]]]
    ).astype(np.float32)
    valid = np.ones(61, bool)
    valid[-1] = False
    keys = jax.random.split(jax.random.key(1), 100)
    seed = jax.vmap(lambda k, v: kmeans.kmeans_plus_plus(k, jnp.asarray(points), v, 3), (0, None))
    masked = np.asarray(seed(keys, jnp.asarray(valid)))
    unmasked = np.asarray(seed(keys, jnp.ones(61, bool)))
    is_outlier = lambda c: (c == points[-1]).all(-1)  # noqa: E731
    assert not is_outlier(masked).any()
    # Every centre is one of the valid points.
    match = (masked[:, :, None, :] == points[None, None, :60, :]).all(-1).any(-1)
    assert match.all()
    # Without the mask the far outlier is drawn in nearly every seed.
    assert is_outlier(unmasked).any(1).sum() >= 95


def test_kmeans_plus_plus_fewer_distinct_points_than_clusters():
    distinct = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 3.0]], np.float32)
    points = jnp.asarray(np.repeat(distinct, 4, axis=0))
    for seed in range(5):
        centers = np.asarray(kmeans.kmeans_plus_plus(jax.random.key(seed), points, None, 5))
        assert np.isfinite(centers).all()
        # The three distinct points are all drawn before any repeat.
        assert {tuple(c) for c in centers[:3]} == {tuple(p) for p in distinct}
        assert {tuple(c) for c in centers} <= {tuple(p) for p in distinct}
        result = kmeans.kmeans(jax.random.key(seed), points, None, 5)
        assert float(result.inertia) == 0.0
        assert np.isfinite(np.asarray(result.centers)).all()
        assert len(np.unique(np.asarray(result.assignments))) == 3


def test_deterministic_for_a_key():
    points, _ = _blobs(7, (40, 40, 40, 40), dim=3, spread=2.0, scale=3.0)
    points = jnp.asarray(points)
    first = kmeans.kmeans(jax.random.key(3), points, None, 4)
    again = kmeans.kmeans(jax.random.key(3), points, None, 4)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    inits = {
        tuple(np.asarray(kmeans.kmeans_plus_plus(jax.random.key(s), points, None, 4)).ravel())
        for s in range(5)
    }
    assert len(inits) > 1


def test_padding_does_not_change_the_result():
    points, _ = _blobs(8, (50, 70, 80), dim=4, spread=1.5, scale=2.0)
    padded = np.concatenate([points, np.full((56, 4), 1e6, np.float32)])
    valid = np.arange(256) < 200
    key = jax.random.key(4)
    plain = kmeans.kmeans(key, jnp.asarray(points), None, 4)
    masked = kmeans.kmeans(key, jnp.asarray(padded), jnp.asarray(valid), 4)
    np.testing.assert_allclose(masked.centers, plain.centers, rtol=1e-6)
    np.testing.assert_array_equal(masked.assignments[:200], plain.assignments)
    assert (np.asarray(masked.assignments[200:]) == -1).all()
    assert float(masked.inertia) == pytest.approx(float(plain.inertia), rel=1e-6)
    assert int(masked.num_iters) == int(plain.num_iters)
    # Same with given centres: the padded points neither move centres nor add inertia.
    init = jnp.asarray(points[[0, 60, 130, 199]])
    a = kmeans.lloyd(jnp.asarray(points), None, init, max_iters=50, tol=0.0)
    b = kmeans.lloyd(jnp.asarray(padded), jnp.asarray(valid), init, max_iters=50, tol=0.0)
    np.testing.assert_allclose(b[0], a[0], rtol=1e-6)
    assert float(b[2]) == pytest.approx(float(a[2]), rel=1e-6)


def test_empty_cluster_keeps_its_centre():
    points = jnp.asarray([[0.0], [0.2], [0.4], [1.0], [1.2], [1.4]])
    init = jnp.asarray([[0.1], [1.1], [100.0]])
    centers, labels, inertia, iters = kmeans.lloyd(points, None, init, max_iters=10, tol=0.0)
    np.testing.assert_allclose(centers, [[0.2], [1.2], [100.0]], atol=1e-6)
    np.testing.assert_array_equal(labels, [0, 0, 0, 1, 1, 1])
    assert float(inertia) == pytest.approx(4 * 0.04, rel=1e-5)
    assert int(iters) == 2  # one move, then a zero shift


def test_restarts_keep_the_lowest_inertia():
    points, _ = _blobs(9, (30, 30, 30, 30, 30), dim=2, spread=1.0, scale=2.5)
    points = jnp.asarray(points)
    key = jax.random.key(11)
    best = kmeans.kmeans(key, points, None, 5, num_restarts=6)
    singles = [kmeans.kmeans(k, points, None, 5) for k in jax.random.split(key, 6)]
    inertias = [float(r.inertia) for r in singles]
    assert len(set(inertias)) > 1  # the restarts differ, so the choice matters
    winner = singles[int(np.argmin(inertias))]
    assert float(best.inertia) == pytest.approx(min(inertias), rel=1e-6)
    np.testing.assert_allclose(best.centers, winner.centers, rtol=1e-6)


def test_assign_is_nearest_centre():
    rng = np.random.default_rng(12)
    points = rng.normal(size=(500, 6)).astype(np.float32)
    centers = rng.normal(size=(7, 6)).astype(np.float32)
    expected = ((points[:, None] - centers[None]) ** 2).sum(-1).argmin(1)
    labels = kmeans.assign(jnp.asarray(points), jnp.asarray(centers))
    assert labels.dtype == jnp.int32
    np.testing.assert_array_equal(labels, expected)


def _padded_batch():
    rng = np.random.default_rng(13)
    num_points, dim = 128, 4
    points = np.full((8, num_points, dim), 1e5, np.float32)
    valid = np.zeros((8, num_points), bool)
    for b in range(8):
        n = 64 + 8 * b
        blob, _ = _blobs(int(rng.integers(1 << 30)), (n // 2, n - n // 2), dim, 1.0, 2.0)
        points[b, :n], valid[b, :n] = blob, True
    return points, valid


def test_batched_sharded_equals_per_video():
    points, valid = _padded_batch()
    keys = jax.random.split(jax.random.key(21), 8)
    per_video = [kmeans.kmeans(keys[b], points[b], valid[b], 3) for b in range(8)]
    # Auto axes, as vosjax.sharding.make_mesh builds them (see the module docstring).
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    videos = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    fit = jax.jit(
        functools.partial(kmeans.batched_kmeans, num_clusters=3),
        in_shardings=(videos, videos, videos),
        out_shardings=videos,
    )
    args = [jax.device_put(x, videos) for x in (keys, jnp.asarray(points), jnp.asarray(valid))]
    result = fit(*args)
    assert result.assignments.sharding.is_equivalent_to(videos, 2)
    assert len(result.centers.sharding.device_set) == 8
    iters = np.asarray(result.num_iters)
    assert len(set(iters.tolist())) > 1  # videos converge at different iterations
    for b, single in enumerate(per_video):
        np.testing.assert_array_equal(result.assignments[b], single.assignments)
        np.testing.assert_allclose(result.centers[b], single.centers, rtol=1e-5, atol=1e-6)
        assert float(result.inertia[b]) == pytest.approx(float(single.inertia), rel=1e-5)
        assert iters[b] == int(single.num_iters)
    # One key is split into B.
    unsharded = kmeans.batched_kmeans(jax.random.key(21), points, valid, 3)
    np.testing.assert_array_equal(unsharded.assignments, result.assignments)


def test_jit_with_static_num_clusters():
    points, _ = _blobs(14, (40, 60), dim=3, spread=1.0, scale=3.0)
    points = jnp.asarray(points)
    fit = jax.jit(kmeans.kmeans, static_argnames=("num_clusters", "max_iters", "num_restarts"))
    eager = kmeans.kmeans(jax.random.key(2), points, None, 2)
    jitted = fit(jax.random.key(2), points, None, num_clusters=2)
    np.testing.assert_array_equal(jitted.assignments, eager.assignments)
    np.testing.assert_allclose(jitted.centers, eager.centers, rtol=1e-6)
    assert int(jitted.num_iters) == int(eager.num_iters)


def test_position_encoding_values():
    code = np.asarray(kmeans.position_encoding_3d(3, 5, 7, 12))
    assert code.shape == (3, 5, 7, 12)
    assert code.min() >= -1.0 and code.max() <= 1.0
    # Each axis block: 2 frequencies (periods 2 and 8) as [sin, sin, cos, cos].
    u = 4 / 6  # x index 4 of 7
    np.testing.assert_allclose(
        code[1, 2, 4, 8:],
        [np.sin(np.pi * u), np.sin(np.pi * u / 4), np.cos(np.pi * u), np.cos(np.pi * u / 4)],
        atol=1e-6,
    )
    half = np.sqrt(0.5)
    np.testing.assert_allclose(code[2, 0, 0, :4], [0.0, half, -1.0, half], atol=1e-6)  # t = 1
    np.testing.assert_allclose(code[0, 0, 0], [0, 0, 1, 1] * 3, atol=1e-6)
    np.testing.assert_allclose((code**2).sum(-1), 6.0, rtol=1e-6)
    flat = code.reshape(-1, 12)
    d2 = ((flat[:, None] - flat[None]) ** 2).sum(-1)
    np.fill_diagonal(d2, np.inf)
    assert d2.min() > 0.2  # distinct positions, distinct codes
    # The code distance grows with the coordinate distance along an axis.
    along_x = np.linalg.norm(code[0, 0, :] - code[0, 0, :1], axis=-1)
    assert (np.diff(along_x) > 0).all()
    # F = 3 frequencies per axis: periods 2, 4, 8.
    three = np.asarray(kmeans.position_encoding_3d(1, 1, 5, 18))
    np.testing.assert_allclose(
        three[0, 0, 1, 12:15], np.sin(np.pi * 0.25 / np.array([1.0, 2.0, 4.0])), atol=1e-6
    )


def test_position_encoding_is_size_independent():
    small = np.asarray(kmeans.position_encoding_3d(2, 5, 5, 18))
    large = np.asarray(kmeans.position_encoding_3d(5, 9, 9, 18))
    np.testing.assert_allclose(small[0, 0, 0], large[0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(small[-1, -1, -1], large[-1, -1, -1], atol=1e-6)
    np.testing.assert_allclose(small[1, 2, 2], large[4, 4, 4], atol=1e-6)  # the centre
    np.testing.assert_allclose(small[0, 0, 4], large[0, 0, 8], atol=1e-6)
    assert not np.allclose(small[0, 0, 1], large[0, 0, 1])


def test_position_encoding_errors():
    with pytest.raises(ValueError, match="dim"):
        kmeans.position_encoding_3d(2, 4, 4, 8)
    with pytest.raises(ValueError, match="height"):
        kmeans.position_encoding_3d(2, 0, 4, 6)
    with pytest.raises(ValueError, match="position_dim"):
        kmeans.video_points(jnp.ones((1, 2, 2, 3)), position_dim=4, position_weight=1.0)
    with pytest.raises(ValueError, match="num_clusters"):
        kmeans.kmeans(jax.random.key(0), jnp.ones((3, 2)), None, 4)
    with pytest.raises(ValueError, match="valid"):
        kmeans.kmeans(jax.random.key(0), jnp.ones((3, 2)), jnp.ones(4, bool), 2)


def test_video_points_layout():
    rng = np.random.default_rng(15)
    features = jnp.asarray(rng.normal(size=(2, 3, 4, 5)).astype(np.float32))
    points = np.asarray(kmeans.video_points(features, position_dim=12, position_weight=2.0))
    assert points.shape == (24, 17)
    unit = np.asarray(features) / np.linalg.norm(features, axis=-1, keepdims=True)
    np.testing.assert_allclose(points[:, :5], unit.reshape(24, 5), rtol=1e-5)
    # Periods 2 and 8: opposite corners of the cube are sqrt(3 * (4 + 4 sin^2(pi / 8))) apart
    # in code space; scaled to 2 * position_weight.
    diameter = np.sqrt(3 * (4 + 4 * np.sin(np.pi / 8) ** 2))
    code = np.asarray(kmeans.position_encoding_3d(2, 3, 4, 12)).reshape(24, 12)
    np.testing.assert_allclose(points[:, 5:], 4.0 * code / diameter, atol=1e-6)
    corner_distance = np.linalg.norm(points[0, 5:] - points[23, 5:])
    assert corner_distance == pytest.approx(4.0, rel=1e-5)
    zero = np.asarray(kmeans.video_points(features, position_dim=12, position_weight=0.0))
    assert zero.shape == (24, 17)
    assert (zero[:, 5:] == 0).all()
    none = kmeans.video_points(features, position_dim=0, position_weight=1.0)
    np.testing.assert_allclose(none, unit.reshape(24, 5), rtol=1e-5)


def _spread(coords: np.ndarray, labels: np.ndarray) -> float:
    """Mean distance of points to their cluster's centroid."""
    total = 0.0
    for k in np.unique(labels):
        members = coords[labels == k]
        total += np.linalg.norm(members - members.mean(0), axis=-1).sum()
    return total / len(coords)


def test_position_weight_makes_clusters_compact_on_constant_features():
    num_frames, height, width, num_clusters = 2, 16, 16, 8
    features = jnp.ones((num_frames, height, width, 8))
    t, y, x = np.meshgrid(
        np.arange(num_frames) / (num_frames - 1),
        np.arange(height) / (height - 1),
        np.arange(width) / (width - 1),
        indexing="ij",
    )
    coords = np.stack([t, y, x], -1).reshape(-1, 3)
    points = kmeans.video_points(features, position_dim=12, position_weight=1.0)
    result = kmeans.kmeans(jax.random.key(5), points, None, num_clusters)
    labels = np.asarray(result.assignments)
    assert len(np.unique(labels)) == num_clusters
    random_spreads = [
        _spread(coords, np.random.default_rng(s).permutation(labels)) for s in range(5)
    ]
    # About 0.32 here (octant-like blocks), 1.0 for a random partition.
    assert _spread(coords, labels) < 0.45 * min(random_spreads)

    # Without positions every point is the same unit vector: k-means++ falls back to repeated
    # centres and every point joins one cluster (which copy wins depends on the rounding of the
    # distance matmul); the inertia is 0 and Lloyd stops after one update.
    flat = kmeans.video_points(features, position_dim=12, position_weight=0.0)
    same = kmeans.kmeans(jax.random.key(5), flat, None, num_clusters)
    assert len(np.unique(np.asarray(same.assignments))) == 1
    assert float(same.inertia) < 1e-9
    assert int(same.num_iters) == 1
    np.testing.assert_allclose(
        same.centers, np.repeat(np.asarray(flat[:1]), num_clusters, 0), atol=1e-5
    )
