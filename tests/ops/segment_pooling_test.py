"""Tests of superpixel pooling against numpy loops: counts, means, info map, paint, majority."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vosjax.ops import segment_pooling

H, W, S, C = 6, 7, 5, 3


def _example(seed: int = 0):
    rng = np.random.default_rng(seed)
    # Ids -1 and S are outside every segment; segment 3 is left empty.
    labels = rng.choice(np.array([-1, 0, 1, 2, 4, S]), size=(H, W)).astype(np.int32)
    features = rng.normal(size=(H, W, C)).astype(np.float32)
    return features, labels


def _reference_counts(labels, num_segments):
    return np.array([(labels == s).sum() for s in range(num_segments)], np.float64)


def _reference_means(features, labels, num_segments):
    means = np.zeros((num_segments, features.shape[-1]))
    for s in range(num_segments):
        if (labels == s).any():
            means[s] = features[labels == s].mean(0)
    return means


def test_counts_and_means_match_numpy():
    features, labels = _example()
    counts = segment_pooling.segment_counts(jnp.asarray(labels), S)
    np.testing.assert_array_equal(np.asarray(counts), _reference_counts(labels, S))
    means, valid = segment_pooling.segment_mean(jnp.asarray(features), jnp.asarray(labels), S)
    np.testing.assert_allclose(np.asarray(means), _reference_means(features, labels, S), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(valid), [True, True, True, False, True])
    assert means.dtype == jnp.float32 and means.shape == (S, C)


def test_segment_mean_gradient_is_one_over_count():
    features, labels = _example()
    grad = jax.grad(lambda f: jnp.sum(segment_pooling.segment_mean(f, jnp.asarray(labels), S)[0]))(
        jnp.asarray(features)
    )
    counts = _reference_counts(labels, S)
    inside = (labels >= 0) & (labels < S)
    expected = np.where(inside, 1.0 / counts[np.clip(labels, 0, S - 1)], 0.0)
    np.testing.assert_allclose(np.asarray(grad), np.repeat(expected[..., None], C, -1), rtol=1e-6)


@pytest.mark.parametrize("convention", ["released", "centres"])
def test_info_map_matches_numpy(convention):
    _, labels = _example(1)
    info = np.asarray(segment_pooling.info_map(jnp.asarray(labels), S, convention))
    assert info.shape == (H, W, 3)
    for y in range(H):
        for x in range(W):
            s = labels[y, x]
            if not 0 <= s < S:
                np.testing.assert_array_equal(info[y, x], 0.0)
                continue
            ys, xs = np.nonzero(labels == s)
            if convention == "released":
                expected = [len(ys) / (H * W), ys.mean() / (H - 1), xs.mean() / (W - 1)]
            else:
                expected = [len(ys) / (H * W), xs.mean() / W, ys.mean() / H]
            np.testing.assert_allclose(info[y, x], expected, rtol=1e-6)


def test_info_map_released_is_size_mean_row_mean_column():
    # The released spx_info_map: row before column (its names say x then y), / (side - 1).
    labels = np.zeros((4, 6), np.int32)
    labels[:, 3:] = 1
    labels[3, :] = 2
    info = np.asarray(segment_pooling.info_map(jnp.asarray(labels), 3))
    np.testing.assert_allclose(info[0, 0], [9 / 24, 1.0 / 3, 1.0 / 5], rtol=1e-6)
    np.testing.assert_allclose(info[0, 5], [9 / 24, 1.0 / 3, 4.0 / 5], rtol=1e-6)
    np.testing.assert_allclose(info[3, 0], [6 / 24, 1.0, 2.5 / 5], rtol=1e-6)


def test_info_map_centres_known_halves():
    labels = np.zeros((4, 4), np.int32)
    labels[:, 2:] = 1
    info = np.asarray(segment_pooling.info_map(jnp.asarray(labels), 2, "centres"))
    np.testing.assert_allclose(info[0, 0], [0.5, 0.5 / 4, 1.5 / 4])
    np.testing.assert_allclose(info[3, 3], [0.5, 2.5 / 4, 1.5 / 4])


def test_paint_matches_indexing():
    _, labels = _example(2)
    values = np.arange(S * 2, dtype=np.float32).reshape(S, 2) + 1.0
    painted = np.asarray(segment_pooling.paint(jnp.asarray(values), jnp.asarray(labels)))
    inside = (labels >= 0) & (labels < S)
    expected = np.where(inside[..., None], values[np.clip(labels, 0, S - 1)], 0.0)
    np.testing.assert_array_equal(painted, expected)


def test_majority_labels_matches_numpy_and_breaks_ties_low():
    rng = np.random.default_rng(3)
    labels = rng.integers(-1, S, size=(H, W)).astype(np.int32)
    labels[labels == 3] = 0  # segment 3 empty
    classes = rng.integers(0, 4, size=(H, W)).astype(np.int32)
    classes[0, :] = 255  # void pixels count for no class
    got = np.asarray(
        segment_pooling.majority_labels(jnp.asarray(labels), jnp.asarray(classes), S, 4)
    )
    for s in range(S):
        counted = classes[(labels == s) & (classes < 4)]
        if counted.size == 0:
            assert got[s] == -1
        else:
            assert got[s] == np.bincount(counted, minlength=4).argmax()  # first max on ties
    assert got[3] == -1

    tie_labels = np.zeros((2, 2), np.int32)
    tie_classes = np.array([[2, 1], [1, 2]], np.int32)
    tie = segment_pooling.majority_labels(jnp.asarray(tie_labels), jnp.asarray(tie_classes), 1, 3)
    assert int(tie[0]) == 1


def test_jit_and_vmap_over_frames():
    frames = [_example(seed) for seed in range(3)]
    features = jnp.asarray(np.stack([f for f, _ in frames]))
    labels = jnp.asarray(np.stack([lab for _, lab in frames]))
    pooled = jax.jit(jax.vmap(functools.partial(segment_pooling.segment_mean, num_segments=S)))
    means, valid = pooled(features, labels)
    infos = jax.vmap(functools.partial(segment_pooling.info_map, num_segments=S))(labels)
    painted = jax.vmap(segment_pooling.paint)(means, labels)
    for t, (f, lab) in enumerate(frames):
        np.testing.assert_allclose(np.asarray(means[t]), _reference_means(f, lab, S), atol=1e-6)
        np.testing.assert_array_equal(np.asarray(valid[t]), _reference_counts(lab, S) > 0)
        np.testing.assert_allclose(
            np.asarray(infos[t]), np.asarray(segment_pooling.info_map(labels[t], S))
        )
        np.testing.assert_allclose(
            np.asarray(painted[t]), np.asarray(segment_pooling.paint(means[t], labels[t]))
        )


def test_bad_arguments_raise():
    features, labels = _example()
    with pytest.raises(ValueError, match="features"):
        segment_pooling.segment_mean(jnp.asarray(features[:-1]), jnp.asarray(labels), S)
    with pytest.raises(ValueError, match="labels"):
        segment_pooling.segment_counts(jnp.zeros((H, W), jnp.float32), S)
    with pytest.raises(ValueError, match="num_segments"):
        segment_pooling.segment_counts(jnp.asarray(labels), 0)
    with pytest.raises(ValueError, match="classes"):
        segment_pooling.majority_labels(jnp.asarray(labels), jnp.asarray(labels[:-1]), S, 2)
