"""Tests of STM-style soft aggregation against a numpy transcription of the formula."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vosjax.ops import soft_aggregation


def _reference(probs, valid, eps=1e-7):
    """Float64: aggregate the valid objects only, invalid ones get probability 0."""
    kept = probs[valid].astype(np.float64)
    em = np.concatenate([np.prod(1 - kept, axis=0, keepdims=True), kept])
    em = np.clip(em, eps, 1 - eps)
    logits = np.log(em / (1 - em))
    soft = np.exp(logits - logits.max(0))
    soft /= soft.sum(0)
    out = np.zeros((len(probs) + 1, *probs.shape[1:]))
    out[0] = soft[0]
    out[1:][valid] = soft[1:]
    return out


def _example(seed, num_objects=3, size=(4, 5)):
    rng = np.random.default_rng(seed)
    probs = rng.random((num_objects, *size)).astype(np.float32)
    probs[0, 0, 0] = 1.0  # exercises the clip
    probs[:, 1, 1] = 0.0
    return probs


@pytest.mark.parametrize("valid", [[True, True, True], [True, False, True], [False] * 3])
def test_matches_numpy_reference(valid):
    probs = _example(0)
    valid = np.array(valid)
    got = soft_aggregation.soft_aggregate(jnp.asarray(probs), jnp.asarray(valid))
    np.testing.assert_allclose(np.asarray(got), _reference(probs, valid), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(got).sum(0), 1.0, rtol=1e-6)
    assert (np.asarray(got)[1:][~valid] == 0.0).all()


def test_single_object_known_closed_form():
    # With one object, background = 1 - p: the softmax of the log-odds (L, -L) with
    # L = logit(1 - p) sharpens p to p^2 / (p^2 + (1 - p)^2).
    p = np.array([0.1, 0.5, 0.9])
    probs = jnp.asarray(p[None, None], jnp.float32)
    got = soft_aggregation.soft_aggregate(probs, jnp.ones(1, bool))
    sharp = p**2 / (p**2 + (1 - p) ** 2)
    np.testing.assert_allclose(np.asarray(got[:, 0]), [1 - sharp, sharp], rtol=1e-5)


def test_logits_give_log_probs_and_a_finite_cross_entropy():
    probs = _example(1)
    valid = jnp.asarray([True, False, True])
    logits = soft_aggregation.soft_aggregate_logits(jnp.asarray(probs), valid)
    log_probs = jax.nn.log_softmax(logits, axis=0)
    np.testing.assert_allclose(
        np.exp(np.asarray(log_probs)), _reference(probs, np.asarray(valid)), atol=1e-6
    )
    target = jax.nn.one_hot(jnp.zeros(probs.shape[1:], jnp.int32), 4, axis=0)

    def loss(p):
        logits = soft_aggregation.soft_aggregate_logits(p, valid)
        return -jnp.sum(target * jax.nn.log_softmax(logits, axis=0))

    value, grad = jax.value_and_grad(loss)(jnp.asarray(probs))
    assert np.isfinite(float(value)) and np.isfinite(np.asarray(grad)).all()
    np.testing.assert_array_equal(np.asarray(grad[1]), 0.0)  # the invalid object


def test_jit_and_vmap_over_frames():
    probs = np.stack([_example(seed) for seed in range(3)])
    valid = np.array([[True, True, False], [True, True, True], [False, True, True]])
    got = jax.jit(jax.vmap(soft_aggregation.soft_aggregate))(jnp.asarray(probs), jnp.asarray(valid))
    for t in range(3):
        np.testing.assert_allclose(
            np.asarray(got[t]), _reference(probs[t], valid[t]), rtol=1e-5, atol=1e-7
        )


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="object_probs"):
        soft_aggregation.soft_aggregate(jnp.zeros((4, 5)), jnp.ones(4, bool))
    with pytest.raises(ValueError, match="object_valid"):
        soft_aggregation.soft_aggregate(jnp.zeros((2, 4, 5)), jnp.ones(3, bool))


def test_ratio_odds_is_the_released_float32_formula_with_its_asymmetric_clamps():
    probs = jnp.asarray([[[0.0, 1.0, 0.3, 1e-3]]])  # one object, 4 pixels
    logits = soft_aggregation.soft_aggregate_logits(probs, jnp.asarray([True]), odds="ratio")
    p = np.asarray(probs, np.float32)
    em = np.concatenate([1 - p, p]).astype(np.float32)
    em = np.clip(em, np.float32(1e-7), np.float32(1 - 1e-7))
    np.testing.assert_allclose(logits, np.log(em / (1 - em)), rtol=1e-6)
    # 1 - 1e-7 rounds to 0.99999988 in float32: +15.9424 at the top, -16.1181 at the bottom.
    np.testing.assert_allclose(logits[1, 0, :2], [-16.1181, 15.9424], atol=1e-3)
    default = soft_aggregation.soft_aggregate_logits(probs, jnp.asarray([True]))
    np.testing.assert_allclose(default, logits, atol=2e-3)
    with pytest.raises(ValueError, match="odds"):
        soft_aggregation.soft_aggregate_logits(probs, jnp.asarray([True]), odds="logit")
