"""Exponential moving average of parameters (EMA teacher) and its momentum schedule."""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp


def ema_update(teacher: Any, student: Any, momentum: float | jax.Array) -> Any:
    """teacher <- momentum * teacher + (1 - momentum) * student, leaf by leaf.

    Args:
      teacher: a pytree of arrays (the EMA weights).
      student: a pytree of the same structure (the trained weights).
      momentum: scalar in [0, 1]; 1 keeps the teacher unchanged.

    Returns:
      The new teacher pytree, in the teacher's dtypes.
    """

    def update(t: jax.Array, s: jax.Array) -> jax.Array:
        m = jnp.asarray(momentum, jnp.float32)
        new = m * t.astype(jnp.float32) + (1.0 - m) * s.astype(jnp.float32)
        return new.astype(t.dtype)

    return jax.tree.map(update, teacher, student)


def cosine_momentum(
    step: int | jax.Array, total: int, base: float = 0.996, final: float = 1.0
) -> jax.Array:
    """The DINO momentum schedule: `base` at step 0 rising along a half cosine to `final`.

    momentum(step) = final - (final - base) * (cos(pi * step / total) + 1) / 2, with step
    clipped to [0, total].

    Args:
      step: the current training step.
      total: the number of training steps.
      base: momentum at step 0.
      final: momentum at step `total`.

    Returns:
      A float32 scalar.
    """
    frac = jnp.clip(jnp.asarray(step, jnp.float32) / max(total, 1), 0.0, 1.0)
    return final - (final - base) * (jnp.cos(math.pi * frac) + 1.0) / 2.0
