"""STM-style soft aggregation of per-object foreground probabilities into one distribution.

A segmenter that runs once per object (SHLS's SegmenterN, like STM by Oh et al., ICCV 2019)
gives each object k a foreground probability p_k per pixel, independently. Soft aggregation
merges them: the background gets prod_k (1 - p_k), every channel (background and objects) is
turned into its log-odds logit(clip(p, eps, 1 - eps)), and a softmax over the channels gives a
distribution over {background, object 1, ..., object K}. Object slots that are padding
(`object_valid` False) get probability exactly 0 and do not change the background.

Pure, float32, jittable and vmappable (over frames or a batch).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

# Logit of absent objects: finite, so that a one-hot cross-entropy multiplies 0 by a finite
# log-probability (not by -inf, which gives NaN); exp() of it is exactly 0.
_ABSENT_LOGIT = -1e30
ODDS = ("log1p", "ratio")


@functools.partial(jax.jit, static_argnames="odds")
def soft_aggregate_logits(
    object_probs: jax.Array,
    object_valid: jax.Array,
    eps: float | jax.Array = 1e-7,
    odds: str = "log1p",
) -> jax.Array:
    """The aggregated log-odds: softmax of them over axis 0 is `soft_aggregate`.

    These are the logits STM's `Soft_aggregation` returns; a softmax cross-entropy over axis 0
    (e.g. `optax.softmax_cross_entropy_with_integer_labels` after moving the axis last) is then
    the cross-entropy of the aggregated probabilities, and `jax.nn.log_softmax(logits, axis=0)`
    their log-probabilities.

    Args:
      object_probs: [K, H, W], each object's foreground probability, in [0, 1].
      object_valid: bool [K], False for padding object slots.
      eps: the clip of the probabilities before the logit, in (0, 0.5). It is applied in
        float32: 1 - 1e-7 rounds to 0.99999988, so the upper clip gives +15.94 and the lower
        one -16.12 (as the released code's float32 `torch.clamp`).
      odds: how the log-odds are computed: 'log1p' = log(p) - log1p(-p) (accurate near 1),
        'ratio' = log(p / (1 - p)) in float32, the released SHLS `soft_aggregation`'s
        formula (it differs by float32 rounding only, up to ~1e-2 where p is within ~1e-5
        of 0 or 1).

    Returns:
      float32 [K + 1, H, W], channel 0 the background, channel k + 1 object k; -1e30 for
      invalid objects.

    Raises:
      ValueError: naming `object_probs`, `object_valid` or `odds` when malformed.
    """
    if odds not in ODDS:
        raise ValueError(f"odds={odds!r}: expected one of {ODDS}")
    if object_probs.ndim != 3:
        raise ValueError(f"object_probs: expected [K, H, W], got shape {object_probs.shape}")
    if object_valid.shape != object_probs.shape[:1]:
        raise ValueError(
            f"object_valid: expected shape [K] = {object_probs.shape[:1]}, got {object_valid.shape}"
        )
    valid = object_valid[:, None, None]
    probs = jnp.where(valid, jnp.asarray(object_probs, jnp.float32), 0.0)
    background = jnp.prod(1.0 - probs, axis=0, keepdims=True)
    clipped = jnp.clip(jnp.concatenate([background, probs], axis=0), eps, 1.0 - eps)
    if odds == "ratio":
        logits = jnp.log(clipped / (1.0 - clipped))
    else:
        logits = jnp.log(clipped) - jnp.log1p(-clipped)
    channel_valid = jnp.concatenate([jnp.ones((1, 1, 1), bool), valid], axis=0)
    return jnp.where(channel_valid, logits, _ABSENT_LOGIT)


@jax.jit
def soft_aggregate(
    object_probs: jax.Array, object_valid: jax.Array, eps: float | jax.Array = 1e-7
) -> jax.Array:
    """Merges per-object foreground probabilities into a distribution over background + objects.

    Args:
      object_probs: [K, H, W], each object's foreground probability, in [0, 1].
      object_valid: bool [K], False for padding object slots.
      eps: the clip of the probabilities before the logit, in (0, 0.5).

    Returns:
      float32 [K + 1, H, W], channel 0 the background, channel k + 1 object k; summing to 1
      over axis 0, exactly 0 for invalid objects.

    Raises:
      ValueError: naming `object_probs` or `object_valid` on a bad shape.
    """
    return jax.nn.softmax(soft_aggregate_logits(object_probs, object_valid, eps), axis=0)
