"""Tests of the EMA update and the cosine momentum schedule."""

import math

import jax.numpy as jnp
import numpy as np

from vosjax.ops import ema


def test_ema_update_known_values():
    teacher = {"w": jnp.array([1.0, 2.0]), "b": jnp.array(4.0, jnp.bfloat16)}
    student = {"w": jnp.array([3.0, 0.0]), "b": jnp.array(0.0, jnp.bfloat16)}
    out = ema.ema_update(teacher, student, 0.75)
    np.testing.assert_allclose(out["w"], [1.5, 1.5])
    assert out["b"].dtype == jnp.bfloat16
    assert float(out["b"]) == 3.0


def test_ema_update_momentum_one_keeps_teacher():
    teacher = {"w": jnp.array([1.0, -2.0])}
    out = ema.ema_update(teacher, {"w": jnp.array([9.0, 9.0])}, 1.0)
    np.testing.assert_array_equal(out["w"], [1.0, -2.0])


def test_cosine_momentum_values():
    assert math.isclose(float(ema.cosine_momentum(0, 100)), 0.996, rel_tol=1e-6)
    assert math.isclose(float(ema.cosine_momentum(100, 100)), 1.0, rel_tol=1e-6)
    # Half way: the mean of base and final.
    assert math.isclose(float(ema.cosine_momentum(50, 100)), 0.998, rel_tol=1e-6)
    expected = 1.0 - 0.004 * (math.cos(math.pi * 0.25) + 1) / 2
    assert math.isclose(float(ema.cosine_momentum(25, 100)), expected, rel_tol=1e-6)
    # Clipped past the end.
    assert math.isclose(
        float(ema.cosine_momentum(500, 100, base=0.9, final=0.99)), 0.99, rel_tol=1e-6
    )
