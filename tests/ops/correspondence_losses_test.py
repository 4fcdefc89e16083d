"""Tests of the Mask-VOS correspondence losses against explicit-loop numpy references."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vosjax.data import transforms
from vosjax.ops import correspondence_losses as cl


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def np_bilinear(feat: np.ndarray, x: float, y: float) -> np.ndarray:
    """One bilinear sample of feat [h, w, C] at feature coordinates (x, y), border-clamped."""
    h, w, _ = feat.shape
    x = min(max(x, 0.0), w - 1.0)
    y = min(max(y, 0.0), h - 1.0)
    out = np.zeros(feat.shape[-1])
    for yi in range(h):
        for xi in range(w):
            weight = max(0.0, 1 - abs(x - xi)) * max(0.0, 1 - abs(y - yi))
            out += weight * feat[yi, xi]
    return out


def np_info_nce(a: np.ndarray, p: np.ndarray, valid: np.ndarray, tau: float, weights=None):
    """Explicit-loop InfoNCE: a, p [B, K, C]; valid [B, K]."""
    total, count = 0.0, 0.0
    for b in range(a.shape[0]):
        wb = 1.0 if weights is None else weights[b]
        for k in range(a.shape[1]):
            if not valid[b, k] or wb == 0:
                continue
            logits = [a[b, k] @ p[b, j] / tau for j in range(a.shape[1]) if valid[b, j]]
            own = a[b, k] @ p[b, k] / tau
            m = max(logits)
            lse = m + math.log(sum(math.exp(v - m) for v in logits))
            total += wb * (lse - own)
            count += wb
    return total / max(count, 1.0)


def np_equivariance(f1, f2, affine, image_size, grid, tau, weights=None):
    height, width = image_size
    stride = height / f1.shape[1]
    bsz = f1.shape[0]
    a = np.zeros((bsz, grid * grid, f1.shape[-1]))
    p = np.zeros_like(a)
    valid = np.zeros((bsz, grid * grid), bool)
    for b in range(bsz):
        for i in range(grid):
            for j in range(grid):
                k = i * grid + j
                x = (j + 0.5) * width / grid - 0.5
                y = (i + 0.5) * height / grid - 0.5
                x2, y2 = affine[b] @ np.array([x, y, 1.0])
                valid[b, k] = 0 <= x2 <= width - 1 and 0 <= y2 <= height - 1
                a[b, k] = np_bilinear(f1[b], (x + 0.5) / stride - 0.5, (y + 0.5) / stride - 0.5)
                p[b, k] = np_bilinear(f2[b], (x2 + 0.5) / stride - 0.5, (y2 + 0.5) / stride - 0.5)
    return np_info_nce(_unit(a), _unit(p), valid, tau, weights)


def random_affines(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    sampler = transforms.RandomAffine(scale=(0.8, 2.0), rotation=(-20, 20), translation=(0.2, 0.2))
    return np.stack([sampler.sample_matrix((size, size), (size, size), rng) for _ in range(n)])


def test_grid_points_on_feature_centres():
    points = cl.grid_points((64, 48), 8)
    assert points.shape == (64, 2)
    # 48 / 8 = 6 px per column, 64 / 8 = 8 px per row: centres at 2.5, 8.5, ... and 3.5, ...
    np.testing.assert_allclose(points[:2], [[2.5, 3.5], [8.5, 3.5]])
    # With one point per feature cell the grid is exactly the cell centres.
    np.testing.assert_allclose(cl.grid_points((64, 64), 8), cl.feature_centres(8, 8, 8))
    np.testing.assert_allclose(cl.pixel_to_feature(jnp.array([3.5, 11.5]), 8), [0.0, 1.0])


def test_bilinear_sample_matches_numpy():
    rng = np.random.default_rng(0)
    feat = rng.normal(size=(2, 5, 7, 3)).astype(np.float32)
    coords = rng.uniform(-1.5, 8.0, size=(2, 11, 2)).astype(np.float32)
    out = np.asarray(cl.bilinear_sample(jnp.asarray(feat), jnp.asarray(coords)))
    for b in range(2):
        for k in range(11):
            np.testing.assert_allclose(
                out[b, k], np_bilinear(feat[b], *coords[b, k]), rtol=1e-5, atol=1e-5
            )


def test_affine_maps_known_points_under_flip_and_scale():
    size = 64
    # A horizontal flip: x -> 63 - x.
    flip = np.array([[[-1.0, 0.0, size - 1.0], [0.0, 1.0, 0.0]]], np.float32)
    out = cl.apply_affine(jnp.asarray(flip), jnp.array([[0.0, 5.0], [10.0, 20.0]]))
    np.testing.assert_allclose(out[0], [[63.0, 5.0], [53.0, 20.0]])
    # RandomAffine's own zoom x2 + flip: its matrix sends the output centre to the input centre
    # and agrees with the pixels cv2 wrote. A ramp image stores each pixel's coordinates.
    ys, xs = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    ramp = np.stack([xs, ys, np.zeros_like(xs)], -1).astype(np.float32)[None]
    aff = transforms.RandomAffine(scale=(2.0, 2.0), rotation=(0, 0), translation=(0, 0), flip=1.0)
    result = aff(ramp, np.random.default_rng(0))
    matrix = result["params"]["affine"]
    np.testing.assert_allclose(matrix[0, :, :2], [[-0.5, 0.0], [0.0, 0.5]], atol=1e-6)
    centre = cl.apply_affine(jnp.asarray(matrix), jnp.array([[31.5, 31.5]]))
    np.testing.assert_allclose(centre[0, 0], [31.5, 31.5], atol=1e-5)
    points = np.array([[10.0, 12.0], [40.0, 50.0], [0.0, 0.0]], np.float32)
    mapped = np.asarray(cl.apply_affine(jnp.asarray(matrix), jnp.asarray(points)))[0]
    for (x, y), (xi, yi) in zip(points.astype(int), mapped, strict=True):
        np.testing.assert_allclose(result["clip"][0, y, x, :2], [xi, yi], atol=1e-3)
    # Sampling a feature map that stores its own feature coordinates returns the mapped point.
    fys, fxs = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    coord_map = np.stack([fxs, fys], -1).astype(np.float32)[None]
    sampled = cl.bilinear_sample(
        jnp.asarray(coord_map), cl.pixel_to_feature(jnp.asarray(mapped[None]), 8)
    )
    np.testing.assert_allclose(sampled[0], (mapped + 0.5) / 8 - 0.5, atol=1e-5)


def test_info_nce_matches_numpy_and_weights():
    rng = np.random.default_rng(1)
    a = _unit(rng.normal(size=(3, 6, 4)))
    p = _unit(rng.normal(size=(3, 6, 4)))
    valid = rng.random((3, 6)) > 0.3
    weights = np.array([1.0, 0.0, 1.0])
    loss, acc = cl.info_nce(
        jnp.asarray(a), jnp.asarray(p), jnp.asarray(valid), 0.5, jnp.asarray(weights)
    )
    np.testing.assert_allclose(loss, np_info_nce(a, p, valid, 0.5, weights), rtol=1e-5)
    assert 0.0 <= float(acc) <= 1.0
    zero, _ = cl.info_nce(jnp.asarray(a), jnp.asarray(p), jnp.asarray(valid), 0.5, jnp.zeros(3))
    assert float(zero) == 0.0


def test_equivariance_loss_matches_numpy():
    rng = np.random.default_rng(2)
    f1 = rng.normal(size=(2, 8, 8, 5)).astype(np.float32)
    f2 = rng.normal(size=(2, 8, 8, 5)).astype(np.float32)
    affine = random_affines(rng, 2, 64).astype(np.float32)
    loss, _ = cl.equivariance_loss(
        jnp.asarray(f1),
        jnp.asarray(f2),
        jnp.asarray(affine),
        (64, 64),
        grid_size=5,
        temperature=0.1,
    )
    expected = np_equivariance(f1, f2, affine, (64, 64), 5, 0.1)
    np.testing.assert_allclose(loss, expected, rtol=1e-4)


def test_equivariance_loss_minimal_on_exact_warp_and_large_when_shuffled():
    rng = np.random.default_rng(3)
    size, h, c = 64, 8, 64
    f2 = _unit(rng.normal(size=(2, h, h, c))).astype(np.float32)
    affine = np.stack(
        [
            [[-0.5, 0.0, 47.0], [0.0, 0.5, 16.0]],  # zoom x2 into the centre, flipped
            [[0.7, 0.0, 5.0], [0.0, 0.7, 9.0]],  # zoom x1.4, shifted
        ]
    ).astype(np.float32)
    # View 1's features are view 2's features read at the mapped cell centres: what a
    # perfectly equivariant encoder would output.
    centres = jnp.asarray(cl.feature_centres(h, h, 8))
    mapped = cl.apply_affine(jnp.asarray(affine), centres)
    f1 = cl.bilinear_sample(jnp.asarray(f2), cl.pixel_to_feature(mapped, 8)).reshape(2, h, h, c)
    loss, acc = cl.equivariance_loss(f1, jnp.asarray(f2), jnp.asarray(affine), (size, size))
    # Not exactly 0: at zoom x2 neighbouring points read interpolations of the same cells, so
    # their features are close (cosine ~0.7) and still cost a little at tau 0.05.
    assert float(loss) < 0.2
    assert float(acc) == 1.0
    shuffled = jnp.asarray(rng.permutation(np.asarray(f1).reshape(2, h * h, c), axis=1))
    bad, bad_acc = cl.equivariance_loss(
        shuffled.reshape(2, h, h, c), jnp.asarray(f2), jnp.asarray(affine), (size, size)
    )
    assert float(bad) > 5.0
    assert float(bad_acc) < 0.2


def np_long_term(q, rv, r, affine, image_size, grid, tau, tau_aff, weights):
    bsz, h, w, c = q.shape
    stride = image_size[0] / h
    aligned = np.zeros_like(q, dtype=np.float64)
    for b in range(bsz):
        carried, valid = [], []
        for i in range(h):
            for j in range(w):
                x, y = (j + 0.5) * stride - 0.5, (i + 0.5) * stride - 0.5
                x2, y2 = affine[b] @ np.array([x, y, 1.0])
                valid.append(0 <= x2 <= image_size[1] - 1 and 0 <= y2 <= image_size[0] - 1)
                carried.append(
                    np_bilinear(r[b], (x2 + 0.5) / stride - 0.5, (y2 + 0.5) / stride - 0.5)
                )
        keys = rv[b].reshape(h * w, c)
        for i in range(h):
            for j in range(w):
                sims = [q[b, i, j] @ keys[n] / tau_aff for n in range(h * w)]
                m = max(s for s, v in zip(sims, valid, strict=True) if v)
                ws = [math.exp(s - m) if v else 0.0 for s, v in zip(sims, valid, strict=True)]
                aligned[b, i, j] = sum(wt * cv for wt, cv in zip(ws, carried, strict=True)) / sum(
                    ws
                )
    identity = np.broadcast_to(np.eye(2, 3), (bsz, 2, 3))
    return np_equivariance(q, aligned, identity, image_size, grid, tau, weights)


def test_long_term_loss_matches_numpy():
    rng = np.random.default_rng(4)
    shape = (2, 4, 4, 6)
    q, rv, r = (_unit(rng.normal(size=shape)).astype(np.float32) for _ in range(3))
    affine = random_affines(rng, 2, 32).astype(np.float32)
    weights = np.array([1.0, 1.0], np.float32)
    loss, _ = cl.long_term_loss(
        *(jnp.asarray(v) for v in (q, rv, r, affine)),
        (32, 32),
        grid_size=3,
        temperature=0.1,
        affinity_temperature=0.2,
        weights=jnp.asarray(weights),
    )
    expected = np_long_term(q, rv, r, affine, (32, 32), 3, 0.1, 0.2, weights)
    np.testing.assert_allclose(loss, expected, rtol=1e-4)


def test_adaptive_pool_matrix_as_torch():
    np.testing.assert_allclose(
        cl.adaptive_pool_matrix(5, 2),
        [[1 / 3, 1 / 3, 1 / 3, 0, 0], [0, 0, 1 / 3, 1 / 3, 1 / 3]],
        rtol=1e-6,
    )
    np.testing.assert_allclose(cl.adaptive_pool_matrix(4, 2), [[0.5, 0.5, 0, 0], [0, 0, 0.5, 0.5]])


def test_anchor_loss_matches_numpy():
    rng = np.random.default_rng(5)
    ref = rng.normal(size=(2, 4, 6, 3)).astype(np.float32)
    teacher = rng.normal(size=(2, 2, 4, 6, 3)).astype(np.float32)
    student = rng.normal(size=(2, 2, 4, 6, 3)).astype(np.float32)
    loss, acc = cl.anchor_loss(
        jnp.asarray(ref), jnp.asarray(teacher), jnp.asarray(student), grid_size=2, temperature=0.3
    )
    total, hits, n = 0.0, 0, 0
    for b in range(2):
        anchors = []
        for ai in range(2):
            for aj in range(2):
                cell = ref[b, 2 * ai : 2 * ai + 2, 3 * aj : 3 * aj + 3].reshape(-1, 3)
                anchors.append(_unit(cell.mean(0)))
        anchors = np.array(anchors)
        for t in range(2):
            for i in range(4):
                for j in range(6):
                    label = int(np.argmax(anchors @ teacher[b, t, i, j]))
                    logits = anchors @ student[b, t, i, j] / 0.3
                    m = logits.max()
                    total += m + math.log(np.exp(logits - m).sum()) - logits[label]
                    hits += int(np.argmax(logits) == label)
                    n += 1
    np.testing.assert_allclose(loss, total / n, rtol=1e-5)
    np.testing.assert_allclose(acc, hits / n, rtol=1e-6)


def test_losses_jit_and_differentiate():
    rng = np.random.default_rng(6)
    f = jnp.asarray(_unit(rng.normal(size=(2, 4, 4, 8))).astype(np.float32))
    affine = jnp.asarray(random_affines(rng, 2, 32).astype(np.float32))

    @jax.jit
    def total(x):
        a, _ = cl.equivariance_loss(x, f, affine, (32, 32), grid_size=4)
        b, _ = cl.long_term_loss(f, x, f, affine, (32, 32), grid_size=4)
        return a + b

    grad = jax.grad(total)(f)
    assert grad.shape == f.shape
    assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.abs(grad).sum()) > 0


@pytest.mark.parametrize("grid", [2, 8])
def test_grid_points_count(grid):
    assert cl.grid_points((32, 48), grid).shape == (grid * grid, 2)
