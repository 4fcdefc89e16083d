"""SHLS superfeatures: one embedding per superpixel from its mean-pooled L1 and L4 features.

As the released code (`My_Net.superfeat`): with L1 = layer1 upsampled to H x W ++ the superpixel
info map (64 + 3 = 67 channels) and L4 = layer4 at /4 ++ the info map of the /4 label map
(256 + 3 = 259 channels), each mean-pooled per superpixel (L1 over the full-size label map, L4
over the nearest-resized /4 one),
  a = ReLU(BN1(Linear(67 -> 32)(L1)))      b = ReLU(BN1(Linear(259 -> 32)(L4)))
  superfeature = ReLU(w0 a + w1 b + c)     (`sf_conv_1x1`: a 1x1 conv 2 -> 1 over [a; b])
a 32-d vector. Quirks of the released code kept here:
- BN1 is `BatchNorm1d(1)` applied to one [1, 1, 32] vector at a time: ONE scalar mean, variance,
  scale and bias shared by all 32 dimensions (`ScalarBatchNorm`). In train mode it standardises
  each 32-d vector over its own entries and moves the running statistics once per superpixel.
- A superpixel with no pixel in a label map gets an all-zero branch row: the head is not applied
  to it (it is 0, not ReLU(BN(bias))). This happens to small superpixels in the /4 map.
- The 1x1 conv runs on every listed superpixel, including one whose both branches are zero
  (ReLU(c)); rows after the frame's largest superpixel id (padding) come out as 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from vosjax.models import resnet

# torch's BatchNorm momentum (the weight of the new value in the running averages).
TORCH_MOMENTUM = 0.1


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


class ScalarBatchNorm(nnx.Module):
    """torch `BatchNorm1d(1)` applied to single [1, 1, D] vectors, as SHLS's superfeature heads.

    One channel: `scale`, `bias` (nnx.Param) and the running `mean`, `var` (nnx.BatchStat) are
    [1] vectors shared by every dimension of the features.
    - eval: y = (x - mean) / sqrt(var + eps) * scale + bias (one scalar affine map);
    - train: each row x [D] is standardised over its own D entries (biased variance), then
      scaled; the running averages move once per valid row, in row order (torch runs the head
      once per superpixel), towards the row's mean and unbiased variance.
    """

    def __init__(self, *, epsilon: float = resnet.BN_EPSILON, momentum: float = TORCH_MOMENTUM):
        self.scale = nnx.Param(jnp.ones((1,), jnp.float32))
        self.bias = nnx.Param(jnp.zeros((1,), jnp.float32))
        self.mean = nnx.BatchStat(jnp.zeros((1,), jnp.float32))
        self.var = nnx.BatchStat(jnp.ones((1,), jnp.float32))
        self.epsilon = epsilon
        self.momentum = momentum

    def __call__(self, x: jax.Array, valid: jax.Array, *, train: bool) -> jax.Array:
        """x [..., D], valid bool [...] (rows that update the statistics) -> [..., D]."""
        scale = self.scale[...].astype(x.dtype)
        bias = self.bias[...].astype(x.dtype)
        if not train:
            inv = jax.lax.rsqrt(self.var[...] + self.epsilon).astype(x.dtype)
            return (x - self.mean[...].astype(x.dtype)) * inv * scale + bias
        d = x.shape[-1]
        row_mean = jnp.mean(x, axis=-1, keepdims=True)
        row_var = jnp.mean(jnp.square(x - row_mean), axis=-1, keepdims=True)
        y = (x - row_mean) * jax.lax.rsqrt(row_var + self.epsilon) * scale + bias
        # Sequential updates m <- (1 - a) m + a v over the valid rows, in closed form.
        flat_valid = valid.reshape(-1).astype(jnp.float32)
        later = jnp.sum(flat_valid) - jnp.cumsum(flat_valid)  # valid rows after each row
        keep = 1.0 - self.momentum
        weights = self.momentum * keep**later * flat_valid
        total_keep = keep ** jnp.sum(flat_valid)
        means = row_mean.reshape(-1).astype(jnp.float32)
        unbiased = row_var.reshape(-1).astype(jnp.float32) * d / max(d - 1, 1)
        self.mean[...] = total_keep * self.mean[...] + jnp.sum(weights * means)
        self.var[...] = total_keep * self.var[...] + jnp.sum(weights * unbiased)
        return y


class SuperfeatureHead(nnx.Module):
    """(pooled L1 [B, S, l1_dim], pooled L4 [B, S, l4_dim], row masks) -> [B, S, dim].

    Attributes mirror the released `sf_head_L1` (`l1_proj`, `l1_norm`), `sf_head_L4`
    (`l4_proj`, `l4_norm`) and `sf_conv_1x1` (`fuse`, a 1x1 conv over the 2 stacked branches).
    """

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
        self.l1_proj = _torch_linear(l1_dim, dim, **kw)
        self.l1_norm = ScalarBatchNorm()
        self.l4_proj = _torch_linear(l4_dim, dim, **kw)
        self.l4_norm = ScalarBatchNorm()
        # sf_conv_1x1: Conv2d(2, 1, 1) over the [2, S, dim] map of the stacked branches.
        init = _uniform(1.0 / math.sqrt(2))
        self.fuse = nnx.Conv(2, 1, (1, 1), kernel_init=init, bias_init=init, **kw)
        self.l1_dim = l1_dim
        self.l4_dim = l4_dim
        self.dim = dim
        self.dtype = dtype

    def branches(
        self,
        l1_pooled: jax.Array,
        l4_pooled: jax.Array,
        l1_valid: jax.Array,
        l4_valid: jax.Array,
        *,
        train: bool = False,
    ) -> jax.Array:
        """The two head outputs before the 1x1 conv: [B, S, dim, 2] (0 on rows without pixels).

        Args and shapes as `__call__`.
        """
        self._check(l1_pooled, l4_pooled, l1_valid, l4_valid)
        dtype = self.dtype or jnp.result_type(l1_pooled, l4_pooled, jnp.float32)

        def branch(x, valid, proj, norm):
            rows = valid.astype(bool)[..., None]
            # Zero the empty rows first: garbage (even NaN) there reaches neither the
            # statistics nor the gradients.
            x = jnp.where(rows, x, 0).astype(dtype)
            y = nnx.relu(norm(proj(x), valid.astype(bool), train=train))
            return jnp.where(rows, y, 0)

        a = branch(l1_pooled, l1_valid, self.l1_proj, self.l1_norm)
        b = branch(l4_pooled, l4_valid, self.l4_proj, self.l4_norm)
        return jnp.stack([a, b], axis=-1)

    def __call__(
        self,
        l1_pooled: jax.Array,
        l4_pooled: jax.Array,
        l1_valid: jax.Array,
        l4_valid: jax.Array,
        listed: jax.Array | None = None,
        *,
        train: bool = False,
    ) -> jax.Array:
        """Superfeatures of padded superpixel lists.

        Args:
          l1_pooled: [B, S, l1_dim] mean L1 features of each superpixel.
          l4_pooled: [B, S, l4_dim] mean L4 features of each superpixel.
          l1_valid: [B, S] bool, superpixels with pixels in the full-size label map.
          l4_valid: [B, S] bool, superpixels with pixels in the /4 label map.
          listed: [B, S] bool, the rows the released code has (ids up to the frame's largest);
            the others come out as 0. None: `l1_valid`.
          train: per-row statistics (and running-average updates) if True; running averages
            if False.

        Returns:
          [B, S, dim] superfeatures (compute dtype; float32 when dtype is None).

        Raises:
          ValueError: on shapes that do not fit together.
        """
        stacked = self.branches(l1_pooled, l4_pooled, l1_valid, l4_valid, train=train)
        out = nnx.relu(self.fuse(stacked)[..., 0])
        listed = l1_valid if listed is None else listed
        return jnp.where(listed.astype(bool)[..., None], out, 0).astype(stacked.dtype)

    def _check(self, l1_pooled, l4_pooled, l1_valid, l4_valid) -> None:
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
        for name, valid in (("l1_valid", l1_valid), ("l4_valid", l4_valid)):
            if valid.shape != l1_pooled.shape[:2]:
                raise ValueError(
                    f"SuperfeatureHead {name} of shape {valid.shape}; expected "
                    f"{l1_pooled.shape[:2]}"
                )
