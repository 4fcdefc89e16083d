"""SHLS superfeatures: one embedding per superpixel from its mean-pooled L1 and L4 features.

As the released code: with L1 = layer1 upsampled to H x W + the superpixel info map (size, mean
x, mean y: 64 + 3 = 67 channels) and L4 = layer4 + the info map at /4 (256 + 3 = 259 channels),
each mean-pooled per superpixel,
  a = ReLU(BN(Linear(67 -> 32)(L1)))      b = ReLU(BN(Linear(259 -> 32)(L4)))
  superfeature = ReLU(w0 a + w1 b + c)    (a 1x1 conv over the two stacked maps: 2 -> 1 channel)
a 32-d vector. Frames have different numbers of superpixels, so the superpixel axis is padded
and a `valid` mask marks the real ones: the batch statistics use only valid superpixels and
padded rows come out as 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from vosjax.models import resnet


def _uniform(bound: float) -> Callable:
    """An initialiser drawing from U(-bound, bound), torch's default for nn.Linear / nn.Conv2d."""

    def init(key: jax.Array, shape: tuple[int, ...], dtype: resnet.Dtype = jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _torch_linear(
    in_features: int, out_features: int, *, dtype: resnet.Dtype, rngs: nnx.Rngs
) -> nnx.Linear:
    """nn.Linear with torch's default init: kernel and bias from U(-1/sqrt(fan_in), ...)."""
    init = _uniform(1.0 / math.sqrt(in_features))
    return nnx.Linear(
        in_features, out_features, dtype=dtype, kernel_init=init, bias_init=init, rngs=rngs
    )


def masked_batch_norm(
    norm: nnx.BatchNorm, x: jax.Array, valid: jax.Array, *, train: bool
) -> jax.Array:
    """`norm` over x [B, S, C] with train-mode statistics from the valid rows only.

    In train mode the mean and variance are taken over the rows where `valid` [B, S] is True,
    and the running averages move towards them. A batch without any valid row keeps the running
    averages unchanged (its statistics would be 0 / 0) and normalises with statistics over all
    rows, so that nothing turns NaN. In eval mode the running averages are used and `valid` plays
    no part.

    Args:
      norm: a BatchNorm over the last axis (C features).
      x: [B, S, C] features.
      valid: [B, S] bool, the rows that count in the statistics.
      train: batch statistics and running-average updates if True; running averages if False.

    Returns:
      [B, S, C] normalised features (every row, valid or not).
    """
    if not train:
        return norm(x, use_running_average=True)
    any_valid = jnp.any(valid)
    mask = jnp.logical_or(valid, jnp.logical_not(any_valid))[..., None]
    old_mean, old_var = norm.mean[...], norm.var[...]
    y = norm(x, use_running_average=False, mask=mask)
    norm.mean[...] = jnp.where(any_valid, norm.mean[...], old_mean)
    norm.var[...] = jnp.where(any_valid, norm.var[...], old_var)
    return y


class SuperfeatureHead(nnx.Module):
    """(pooled L1 [B, S, l1_dim], pooled L4 [B, S, l4_dim], valid [B, S]) -> [B, S, dim]."""

    def __init__(
        self,
        l1_dim: int,
        l4_dim: int,
        dim: int = 32,
        *,
        dtype: resnet.Dtype = None,
        rngs: nnx.Rngs,
    ):
        """Builds the two branches and their fusion.

        Args:
          l1_dim: channels of the pooled L1 features (67 = 64 + 3 info channels).
          l4_dim: channels of the pooled L4 features (259 = 256 + 3).
          dim: size of the superfeature (32).
          dtype: compute dtype; parameters stay float32.
          rngs: initialisation randomness.

        Raises:
          ValueError: if a size is < 1.
        """
        if min(l1_dim, l4_dim, dim) < 1:
            raise ValueError(
                f"SuperfeatureHead l1_dim={l1_dim}, l4_dim={l4_dim}, dim={dim}; expected >= 1"
            )
        kw = {"dtype": dtype, "rngs": rngs}
        bn = {"momentum": resnet.BN_MOMENTUM, "epsilon": resnet.BN_EPSILON, **kw}
        self.l1_proj = _torch_linear(l1_dim, dim, **kw)
        self.l1_norm = nnx.BatchNorm(dim, **bn)
        self.l4_proj = _torch_linear(l4_dim, dim, **kw)
        self.l4_norm = nnx.BatchNorm(dim, **bn)
        # The 1x1 conv over the two stacked maps: out = w0 a + w1 b + c, shared over the dims.
        self.fuse = _torch_linear(2, 1, **kw)
        self.l1_dim = l1_dim
        self.l4_dim = l4_dim
        self.dim = dim
        self.dtype = dtype

    def __call__(
        self,
        l1_pooled: jax.Array,
        l4_pooled: jax.Array,
        valid: jax.Array,
        *,
        train: bool = False,
    ) -> jax.Array:
        """Superfeatures of padded superpixel lists.

        Args:
          l1_pooled: [B, S, l1_dim] mean L1 features of each superpixel.
          l4_pooled: [B, S, l4_dim] mean L4 features of each superpixel.
          valid: [B, S] bool, True for real superpixels (False for padding).
          train: batch statistics of the valid rows (and running-average updates) if True;
            running averages if False.

        Returns:
          [B, S, dim] superfeatures (compute dtype; float32 when dtype is None), 0 on invalid
          rows.

        Raises:
          ValueError: on shapes that do not fit together.
        """
        if l1_pooled.ndim != 3 or l1_pooled.shape[-1] != self.l1_dim:
            raise ValueError(
                f"SuperfeatureHead l1_pooled of shape {l1_pooled.shape}; expected "
                f"[B, S, {self.l1_dim}]"
            )
        expected = (*l1_pooled.shape[:2], self.l4_dim)
        if l4_pooled.shape != expected:
            raise ValueError(
                f"SuperfeatureHead l4_pooled of shape {l4_pooled.shape}; expected {expected}"
            )
        if valid.shape != l1_pooled.shape[:2]:
            raise ValueError(
                f"SuperfeatureHead valid of shape {valid.shape}; expected {l1_pooled.shape[:2]}"
            )
        valid = valid.astype(bool)
        rows = valid[..., None]
        dtype = self.dtype or jnp.result_type(l1_pooled, l4_pooled, jnp.float32)
        # Zero the padding first: garbage (even NaN) there then reaches neither the statistics
        # nor the gradients.
        l1 = jnp.where(rows, l1_pooled, 0).astype(dtype)
        l4 = jnp.where(rows, l4_pooled, 0).astype(dtype)
        a = nnx.relu(masked_batch_norm(self.l1_norm, self.l1_proj(l1), valid, train=train))
        b = nnx.relu(masked_batch_norm(self.l4_norm, self.l4_proj(l4), valid, train=train))
        stacked = jnp.stack([a, b], axis=-1)  # [B, S, dim, 2]
        out = nnx.relu(self.fuse(stacked)[..., 0])
        return jnp.where(rows, out, 0).astype(dtype)
