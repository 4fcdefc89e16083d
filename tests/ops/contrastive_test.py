"""Tests of the NT-Xent loss against a loop over pairs written like pytorch-metric-learning's."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vosjax.ops import contrastive


def _reference(embeddings, labels, valid, temperature, exact=False):
    """Float64 loop over positive pairs, shifted by max(s_ap, max_n s_an) as the reference.

    exact: log-sum-exp without the reference's tiny constant inside the log (no 87-nat cap).
    """
    x = embeddings.astype(np.float64)
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = x @ x.T / temperature
    losses = []
    for a in range(len(x)):
        for p in range(len(x)):
            if a == p or not (valid[a] and valid[p]) or labels[a] != labels[p]:
                continue
            negatives = [s[a, n] for n in range(len(x)) if valid[n] and labels[n] != labels[a]]
            if exact:
                losses.append(np.logaddexp.reduce([s[a, p], *negatives]) - s[a, p])
                continue
            shift = max([s[a, p], *negatives])
            numerator = np.exp(s[a, p] - shift)
            denominator = numerator + sum(np.exp(v - shift) for v in negatives)
            losses.append(-np.log(numerator / denominator + np.finfo(np.float32).tiny))
    return float(np.mean(losses)) if losses else 0.0


def _example(seed, num=12, dim=5, num_classes=3):
    rng = np.random.default_rng(seed)
    embeddings = rng.normal(size=(num, dim)).astype(np.float32)
    labels = rng.integers(0, num_classes, size=num).astype(np.int32)
    valid = rng.random(num) > 0.2
    return embeddings, labels, valid


@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_matches_loop_reference(temperature):
    for seed in range(3):
        embeddings, labels, valid = _example(seed)
        got = contrastive.nt_xent(
            jnp.asarray(embeddings), jnp.asarray(labels), jnp.asarray(valid), temperature
        )
        expected = _reference(embeddings, labels, valid, temperature)
        assert float(got) == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_invalid_entries_are_ignored():
    embeddings, labels, valid = _example(4)
    full = contrastive.nt_xent(jnp.asarray(embeddings), jnp.asarray(labels), jnp.asarray(valid))
    kept = contrastive.nt_xent(jnp.asarray(embeddings[valid]), jnp.asarray(labels[valid]), None)
    assert float(full) == pytest.approx(float(kept), rel=1e-6)
    scrambled = np.where(valid[:, None], embeddings, 1e3)
    other = contrastive.nt_xent(jnp.asarray(scrambled), jnp.asarray(labels), jnp.asarray(valid))
    assert float(other) == pytest.approx(float(full), rel=1e-6)


def test_no_positive_pair_gives_zero_and_finite_gradient():
    embeddings = jnp.asarray(np.random.default_rng(5).normal(size=(4, 3)), jnp.float32)
    labels = jnp.arange(4, dtype=jnp.int32)
    loss, grad = jax.value_and_grad(contrastive.nt_xent)(embeddings, labels, None)
    assert float(loss) == 0.0
    np.testing.assert_array_equal(np.asarray(grad), 0.0)
    # One class only: positives but no negatives, each pair's loss -log(1) = 0.
    same = jnp.zeros(4, jnp.int32)
    loss, grad = jax.value_and_grad(contrastive.nt_xent)(embeddings, same, None)
    assert float(loss) == 0.0 and np.isfinite(np.asarray(grad)).all()


def test_stable_at_tiny_temperature():
    embeddings, labels, valid = _example(6)
    loss, grad = jax.value_and_grad(contrastive.nt_xent)(
        jnp.asarray(embeddings), jnp.asarray(labels), jnp.asarray(valid), 1e-3
    )
    assert np.isfinite(float(loss)) and np.isfinite(np.asarray(grad)).all()
    exact = _reference(embeddings, labels, valid, 1e-3, exact=True)
    assert float(loss) == pytest.approx(exact, rel=1e-4)
    # Far below the reference's 87-nat cap, the two agree.
    small = _reference(embeddings, labels, valid, 0.04)
    got = contrastive.nt_xent(
        jnp.asarray(embeddings), jnp.asarray(labels), jnp.asarray(valid), 0.04
    )
    assert float(got) == pytest.approx(small, rel=1e-4)


def test_decreases_when_same_label_embeddings_are_pulled_together():
    embeddings, labels, _ = _example(7, num=16, dim=6, num_classes=3)
    rng = np.random.default_rng(8)
    centers = rng.normal(size=(3, 6)).astype(np.float32)
    losses = []
    for t in [0.0, 0.3, 0.6, 0.9]:
        pulled = (1 - t) * embeddings + t * 3.0 * centers[labels]
        losses.append(float(contrastive.nt_xent(jnp.asarray(pulled), jnp.asarray(labels))))
    assert (np.diff(losses) < 0).all(), losses
    assert losses[-1] < 0.1 * losses[0]


def test_jit_and_vmap_over_a_batch():
    batch = [_example(seed) for seed in range(3)]
    stacked = [jnp.asarray(np.stack(parts)) for parts in zip(*batch, strict=True)]
    loss_fn = jax.jit(jax.vmap(functools.partial(contrastive.nt_xent, temperature=0.1)))
    got = np.asarray(loss_fn(*stacked))
    expected = [_reference(e, lab, v, 0.1) for e, lab, v in batch]
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="labels"):
        contrastive.nt_xent(jnp.zeros((4, 3)), jnp.zeros(3, jnp.int32))
    with pytest.raises(ValueError, match="valid"):
        contrastive.nt_xent(jnp.zeros((4, 3)), jnp.zeros(4, jnp.int32), jnp.ones(2, bool))
