"""INO's projection head: an MLP, an L2-normalised bottleneck and a weight-normalised output layer.

One head is shared by the class token and the patch tokens (iBOT style) of both the student and
the EMA teacher. As DINO's head without batch norm: `num_layers` linear layers
(in -> hidden -> ... -> hidden -> bottleneck) with exact GELU between them, an L2 normalisation
of the bottleneck, then a bias-free linear bottleneck -> out_dim whose weight is weight-normalised
per output column (w_j = g_j * v_j / ||v_j||). With `norm_last_layer` g is not trained: it is a
`FixedScale` variable, ones at initialisation (the output layer's columns are then unit vectors and
the outputs cosines), which an imported checkpoint may set (torch keeps `weight_g` in the
state_dict and uses it in the forward pass even when it is frozen).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

Dtype = jnp.dtype | type | None
# torch.nn.functional.normalize's default: x / max(||x||, eps).
NORMALIZE_EPSILON = 1e-12


def l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
    """x / max(||x||, 1e-12) along `axis`, in float32 (F.normalize)."""
    x = x.astype(jnp.float32)
    norm = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
    return x / jnp.maximum(norm, NORMALIZE_EPSILON)


class FixedScale(nnx.Variable):
    """A weight that is used but never trained (the frozen `weight_g` of `norm_last_layer`)."""


class ProjectionHead(nnx.Module):
    """DINO / iBOT head for tokens [..., in_dim] -> [..., out_dim], as INO uses it.

    Parameters:
      mlp  list of `num_layers` nnx.Linear (kernel truncated normal std 0.02, bias 0);
      v    Param [bottleneck_dim, out_dim], the direction of each output column (torch's
           `last_layer.weight_v`, transposed);
      g    [out_dim], each column's length (torch's `last_layer.weight_g`), ones at init: an
           nnx.Param, or a `FixedScale` (no gradient, no optimiser, no EMA) with
           `norm_last_layer`.
    """

    def __init__(
        self,
        in_dim: int = 384,
        *,
        hidden_dim: int = 2048,
        bottleneck_dim: int = 256,
        out_dim: int = 4096,
        num_layers: int = 3,
        norm_last_layer: bool = True,
        dtype: Dtype = None,
        rngs: nnx.Rngs,
    ):
        """Builds the head.

        Args:
          in_dim: token width D of the backbone (384 for ViT-S).
          hidden_dim: width of the hidden MLP layers (2048).
          bottleneck_dim: width of the normalised bottleneck (256).
          out_dim: number of output prototypes K (INO: 4096).
          num_layers: linear layers in the MLP, >= 1; 1 is a single Linear in_dim -> bottleneck.
          norm_last_layer: do not train the output columns' lengths g (ones unless imported).
          dtype: compute dtype of the MLP and the output matmul (e.g. jnp.bfloat16); parameters
            stay float32 and the normalisations run in float32.
          rngs: initialisation randomness.

        Raises:
          ValueError: if a width is not positive or num_layers < 1.
        """
        for name, value in (
            ("in_dim", in_dim),
            ("hidden_dim", hidden_dim),
            ("bottleneck_dim", bottleneck_dim),
            ("out_dim", out_dim),
        ):
            if value < 1:
                raise ValueError(f"ProjectionHead {name}={value}; expected a positive width")
        if num_layers < 1:
            raise ValueError(f"ProjectionHead num_layers={num_layers}; expected >= 1")
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.dtype = dtype
        trunc = nnx.initializers.truncated_normal(stddev=0.02)
        widths = [in_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
        self.mlp = nnx.List(
            [
                nnx.Linear(a, b, dtype=dtype, kernel_init=trunc, rngs=rngs)
                for a, b in zip(widths[:-1], widths[1:], strict=True)
            ]
        )
        self.v = nnx.Param(trunc(rngs.params(), (bottleneck_dim, out_dim)))
        ones = jnp.ones((out_dim,), jnp.float32)
        self.g = FixedScale(ones) if norm_last_layer else nnx.Param(ones)

    def bottleneck(self, x: jax.Array) -> jax.Array:
        """The L2-normalised bottleneck features.

        Args:
          x: tokens [..., in_dim].

        Returns:
          float32 [..., bottleneck_dim] with unit (or zero) rows.

        Raises:
          ValueError: if the last axis of x is not in_dim.
        """
        if x.ndim < 1 or x.shape[-1] != self.in_dim:
            raise ValueError(
                f"ProjectionHead input of shape {x.shape}; expected [..., {self.in_dim}]"
            )
        if self.dtype is not None:
            x = x.astype(self.dtype)
        for i, layer in enumerate(self.mlp):
            x = layer(x)
            if i < len(self.mlp) - 1:
                x = jax.nn.gelu(x, approximate=False)
        return l2_normalize(x)

    def output_weight(self) -> jax.Array:
        """The weight-normalised output weight W [bottleneck_dim, out_dim], float32."""
        return l2_normalize(self.v[...], axis=0) * self.g[...][None, :]

    def __call__(self, x: jax.Array) -> jax.Array:
        """Projects tokens to prototype scores.

        Args:
          x: tokens [..., in_dim] (e.g. class tokens [B, D] or patch tokens [B, N, D]).

        Returns:
          float32 [..., out_dim]. The output matmul reads its inputs in `dtype` and accumulates
          in float32, so that the scores a sharp softmax (teacher temperature 0.04) reads keep
          float32 precision.

        Raises:
          ValueError: if the last axis of x is not in_dim.
        """
        z = self.bottleneck(x)
        w = self.output_weight()
        if self.dtype is not None:
            z, w = z.astype(self.dtype), w.astype(self.dtype)
        return jnp.einsum("...c,ck->...k", z, w, preferred_element_type=jnp.float32)
