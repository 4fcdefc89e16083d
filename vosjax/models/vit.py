"""Vision Transformers (ViT-S/16, ViT-S/8, ViT-B/8) in flax.nnx, timm / DINO layout, NHWC.

A conv patch embedding, a class token, learned position embeddings for an `img_size` square
input (224; INO trains with 64) that are bicubically interpolated to any input size as DINO's
`interpolate_pos_encoding` does, pre-norm blocks (LayerNorm eps 1e-6, qkv bias, MLP ratio 4, exact
GELU) and a final LayerNorm. An optional learned mask token replaces the patch embeddings of
masked patches before the position embedding is added (iBOT / INO masked image modelling).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

Dtype = jnp.dtype | type | None
_LN_EPSILON = 1e-6
# torch's bicubic kernel (Keys' cubic convolution with A = -0.75, not jax.image's -0.5).
_CUBIC_A = -0.75
# DINO asks torch for scale factor (n + 0.1) / n0 to dodge float floor errors; torch then samples
# with that factor, so the grid is stretched very slightly. Kept for weight-exact features.
DINO_INTERPOLATE_OFFSET = 0.1


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """torch's 4 bicubic tap weights for fractional offsets t [N] -> [N, 4] (taps -1, 0, 1, 2)."""
    a = _CUBIC_A

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return np.stack([far(t + 1), near(t), near(1 - t), far(2 - t)], axis=-1)


@functools.lru_cache(maxsize=64)
def bicubic_matrix(in_size: int, out_size: int, offset: float = 0.0) -> np.ndarray:
    """The [out_size, in_size] matrix of torch's bicubic resize (align_corners=False) on one axis.

    Output cell i samples input coordinate (i + 0.5) * in_size / (out_size + offset) - 0.5 with
    the 4-tap A=-0.75 kernel; taps beyond the border are clamped to the edge, as torch does.
    offset=0 is a resize to `out_size`; offset=0.1 reproduces DINO's scale factor (n + 0.1) / n0.

    Args:
      in_size: input length.
      out_size: output length.
      offset: added to out_size when computing the sampling scale.

    Returns:
      float64 [out_size, in_size]; rows sum to 1.
    """
    scale = in_size / (out_size + offset)
    src = (np.arange(out_size) + 0.5) * scale - 0.5
    base = np.floor(src)
    weights = _cubic_weights(src - base)
    taps = np.clip(base[:, None].astype(int) + np.arange(-1, 3)[None, :], 0, in_size - 1)
    matrix = np.zeros((out_size, in_size))
    for k in range(4):
        np.add.at(matrix, (np.arange(out_size), taps[:, k]), weights[:, k])
    return matrix


def interpolate_pos_embed(
    pos_embed: jax.Array,
    grid: tuple[int, int],
    offset: float = DINO_INTERPOLATE_OFFSET,
    *,
    square_input: bool = True,
) -> jax.Array:
    """Resizes learned position embeddings to a patch grid (DINO's interpolate_pos_encoding).

    Args:
      pos_embed: [1 + n0 * n0, D]: the class token's embedding, then a square n0 x n0 grid.
      grid: (h, w), the patch grid of the input.
      offset: see `bicubic_matrix`; DINO's 0.1 by default.
      square_input: whether the input image (in pixels, before flooring to the patch grid) is
        square. DINO / INO skip the interpolation only when the number of patches is n0 * n0
        AND the image is square; an n0 x n0 grid of a non-square image (e.g. 64 x 70 at patch 8)
        is still resampled with the (n0 + offset) / n0 scale, which is not the identity.

    Returns:
      [1 + h * w, D] in the dtype of pos_embed; pos_embed itself when (h, w) == (n0, n0) and
      the input is square.

    Raises:
      ValueError: if pos_embed does not hold a square grid.
    """
    n_tokens, dim = pos_embed.shape
    n0 = int(round((n_tokens - 1) ** 0.5))
    if n0 * n0 != n_tokens - 1:
        raise ValueError(f"pos_embed of shape {pos_embed.shape}; expected [1 + n * n, D]")
    h, w = grid
    if (h, w) == (n0, n0) and square_input:
        return pos_embed
    rows = jnp.asarray(bicubic_matrix(n0, h, offset), jnp.float32)
    cols = jnp.asarray(bicubic_matrix(n0, w, offset), jnp.float32)
    patch_pos = pos_embed[1:].reshape(n0, n0, dim).astype(jnp.float32)
    resized = jnp.einsum(
        "hi,wj,ijd->hwd", rows, cols, patch_pos, precision=jax.lax.Precision.HIGHEST
    )
    resized = resized.reshape(h * w, dim).astype(pos_embed.dtype)
    return jnp.concatenate([pos_embed[:1], resized], axis=0)


def _linear(in_features: int, out_features: int, *, dtype: Dtype, rngs: nnx.Rngs) -> nnx.Linear:
    """A Linear with timm's ViT init: truncated normal (std 0.02) kernel, zero bias."""
    return nnx.Linear(
        in_features,
        out_features,
        dtype=dtype,
        kernel_init=nnx.initializers.truncated_normal(stddev=0.02),
        rngs=rngs,
    )


class Attention(nnx.Module):
    """Multi-head self-attention with a fused qkv projection (bias) and an output projection."""

    def __init__(self, dim: int, num_heads: int, *, dtype: Dtype, rngs: nnx.Rngs):
        if dim % num_heads:
            raise ValueError(f"vit dim={dim} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.qkv = _linear(dim, 3 * dim, dtype=dtype, rngs=rngs)
        self.proj = _linear(dim, dim, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, N, D] -> [B, N, D]."""
        b, n, d = x.shape
        head_dim = d // self.num_heads
        # Heads-major [3, B, heads, N, head_dim]: both products then run as batched matmuls
        # without a transpose inside them (1.8x faster attention at 480p on CPU).
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, head_dim).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        logits = jnp.einsum("bhqc,bhkc->bhqk", q * head_dim**-0.5, k)
        # Softmax in float32 so that bf16 compute does not lose the small attention weights.
        attn = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bhkc->bhqc", attn, v)
        return self.proj(out.transpose(0, 2, 1, 3).reshape(b, n, d))


class Mlp(nnx.Module):
    """fc1 (D -> ratio * D), exact GELU, fc2 (-> D)."""

    def __init__(self, dim: int, hidden: int, *, dtype: Dtype, rngs: nnx.Rngs):
        self.fc1 = _linear(dim, hidden, dtype=dtype, rngs=rngs)
        self.fc2 = _linear(hidden, dim, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, N, D] -> [B, N, D]."""
        return self.fc2(nnx.gelu(self.fc1(x), approximate=False))


class Block(nnx.Module):
    """Pre-norm transformer block: x + drop_path(attn(norm1(x))), then the same with the MLP."""

    def __init__(
        self,
        dim: int,
        num_heads: int,
        *,
        mlp_ratio: float,
        drop_path: float,
        dtype: Dtype,
        rngs: nnx.Rngs,
    ):
        self.norm1 = nnx.LayerNorm(dim, epsilon=_LN_EPSILON, dtype=dtype, rngs=rngs)
        self.attn = Attention(dim, num_heads, dtype=dtype, rngs=rngs)
        self.norm2 = nnx.LayerNorm(dim, epsilon=_LN_EPSILON, dtype=dtype, rngs=rngs)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), dtype=dtype, rngs=rngs)
        # Stochastic depth = dropout of a whole residual branch per sample: one draw per batch item.
        self.drop_path = (
            nnx.Dropout(drop_path, broadcast_dims=(1, 2), rngs=rngs) if drop_path > 0 else None
        )

    def _drop(self, y: jax.Array, train: bool, key: jax.Array | None) -> jax.Array:
        if self.drop_path is None:
            return y
        return self.drop_path(y, deterministic=not train, rngs=key)

    def __call__(self, x: jax.Array, *, train: bool, key: jax.Array | None = None) -> jax.Array:
        """x [B, N, D] -> [B, N, D]; an optional `key` seeds drop path instead of self's rngs."""
        keys = (None, None) if key is None else tuple(jax.random.split(key))
        x = x + self._drop(self.attn(self.norm1(x)), train, keys[0])
        return x + self._drop(self.mlp(self.norm2(x)), train, keys[1])


class VisionTransformer(nnx.Module):
    """ViT returning the class token, the patch grid and any intermediate block output.

    Outputs of `__call__` for images [B, H, W, 3], patch size p, h = H // p, w = W // p:
      'cls'     [B, D]              class token after the final norm;
      'patches' [B, h, w, D]        patch tokens after the final norm (stride p);
      'blocks'  {i: [B, 1 + h*w, D]} output of block i (1-based), class token first;
      'logits'  [B, num_classes]    only with a head.
    """

    def __init__(
        self,
        *,
        patch_size: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        img_size: int = 224,
        in_channels: int = 3,
        num_classes: int | None = None,
        use_mask_token: bool = False,
        drop_path_rate: float = 0.0,
        interpolate_offset: float = DINO_INTERPOLATE_OFFSET,
        dtype: Dtype = None,
        rngs: nnx.Rngs,
    ):
        """Builds the network.

        Args:
          patch_size: patch side p in pixels (8 or 16).
          embed_dim: token width D (384 ViT-S, 768 ViT-B).
          depth: number of blocks (12).
          num_heads: attention heads (6 ViT-S, 12 ViT-B).
          mlp_ratio: MLP hidden width / D.
          img_size: square input size the position embeddings are learned for (224; INO: 64).
          in_channels: input channels.
          num_classes: linear head on the class token; None for no head.
          use_mask_token: add a learned token (zeros at init, as iBOT) for masked patches.
          drop_path_rate: stochastic depth rate of the last block, linearly increasing from 0 at
            the first (timm / DINO).
          interpolate_offset: see `bicubic_matrix` (DINO: 0.1; 0 for a plain resize).
          dtype: compute dtype (e.g. jnp.bfloat16); parameters stay float32.
          rngs: initialisation randomness; its 'dropout' stream (or 'default') drives drop path
            unless a key is passed to `__call__`.

        Raises:
          ValueError: if img_size is not a multiple of patch_size or drop_path_rate is not in
            [0, 1).
        """
        if img_size % patch_size:
            raise ValueError(f"vit img_size={img_size} is not a multiple of patch={patch_size}")
        if not 0.0 <= drop_path_rate < 1.0:
            raise ValueError(f"vit drop_path_rate={drop_path_rate}; expected [0, 1)")
        self.patch_size = patch_size
        self.embed_dim = embed_dim
        self.depth = depth
        self.interpolate_offset = interpolate_offset
        self.dtype = dtype
        self.patch_embed = nnx.Conv(
            in_channels,
            embed_dim,
            (patch_size, patch_size),
            strides=patch_size,
            padding="VALID",
            dtype=dtype,
            rngs=rngs,
        )
        trunc = nnx.initializers.truncated_normal(stddev=0.02)
        n_patches = (img_size // patch_size) ** 2
        self.cls_token = nnx.Param(trunc(rngs.params(), (1, embed_dim)))
        self.pos_embed = nnx.Param(trunc(rngs.params(), (1 + n_patches, embed_dim)))
        self.mask_token = (
            nnx.Param(jnp.zeros((1, embed_dim), jnp.float32)) if use_mask_token else None
        )
        rates = np.linspace(0.0, drop_path_rate, depth)
        self.blocks = nnx.List(
            [
                Block(
                    embed_dim,
                    num_heads,
                    mlp_ratio=mlp_ratio,
                    drop_path=float(rate),
                    dtype=dtype,
                    rngs=rngs,
                )
                for rate in rates
            ]
        )
        self.norm = nnx.LayerNorm(embed_dim, epsilon=_LN_EPSILON, dtype=dtype, rngs=rngs)
        self.head = (
            None if num_classes is None else _linear(embed_dim, num_classes, dtype=dtype, rngs=rngs)
        )

    def embed_patches(self, images: jax.Array, masks: jax.Array | None = None) -> jax.Array:
        """Patch embeddings, with the mask token where `masks` is True (no position embedding).

        Args:
          images: [B, H, W, C] normalised float images.
          masks: optional bool [B, h, w]; True patches are replaced by the mask token.

        Returns:
          [B, h, w, D] with h = H // p, w = W // p.

        Raises:
          ValueError: if masks are given without a mask token or do not match the patch grid.
        """
        if images.ndim != 4:
            raise ValueError(f"vit input of shape {images.shape}; expected [B, H, W, C]")
        if self.dtype is not None:
            images = images.astype(self.dtype)
        x = self.patch_embed(images)
        if masks is None:
            return x
        if self.mask_token is None:
            raise ValueError("vit masks were given but the model has use_mask_token=False")
        if masks.shape != x.shape[:3]:
            raise ValueError(
                f"vit masks of shape {masks.shape}; expected [B, h, w] = {x.shape[:3]}"
            )
        token = self.mask_token[...].astype(x.dtype).reshape(1, 1, 1, -1)
        return jnp.where(masks[..., None], token, x)

    def prepare_tokens(self, images: jax.Array, masks: jax.Array | None = None) -> jax.Array:
        """The input of the first block (DINO / INO's `prepare_tokens`).

        The class token, then the patch embeddings row-major (the mask token where `masks` is
        True: it replaces the embedding BEFORE the position embedding is added), plus the
        position embedding interpolated to the patch grid.

        Args:
          images: [B, H, W, C] normalised float images.
          masks: optional bool [B, h, w] of patches to replace by the mask token.

        Returns:
          [B, 1 + h * w, D].
        """
        x = self.embed_patches(images, masks)
        b, h, w, d = x.shape
        pos = interpolate_pos_embed(
            self.pos_embed[...],
            (h, w),
            self.interpolate_offset,
            square_input=images.shape[1] == images.shape[2],
        )
        cls = jnp.broadcast_to(self.cls_token[...].astype(x.dtype), (b, 1, d))
        return jnp.concatenate([cls, x.reshape(b, h * w, d)], axis=1) + pos.astype(x.dtype)[None]

    def __call__(
        self,
        images: jax.Array,
        *,
        masks: jax.Array | None = None,
        train: bool = False,
        return_blocks: Sequence[int] = (),
        norm_blocks: bool = True,
        key: jax.Array | None = None,
    ) -> dict[str, Any]:
        """Runs the network.

        Args:
          images: [B, H, W, C] normalised float images; H, W are floored to multiples of p.
          masks: optional bool [B, h, w] of patches to replace by the mask token.
          train: apply drop path if True.
          return_blocks: 1-based indices of the blocks whose outputs to return (INO: 7 of 12).
          norm_blocks: apply the final LayerNorm to returned block outputs, as DINO's
            get_intermediate_layers does; False returns the raw residual stream.
          key: optional PRNG key for drop path (folded in per block); without it the module's
            own rng stream is used.

        Returns:
          A dict with 'cls', 'patches', 'blocks' (and 'logits' with a head); see the class
          docstring.

        Raises:
          ValueError: on a block index outside 1..depth, or bad masks (see `embed_patches`).
        """
        wanted = set(return_blocks)
        bad = sorted(i for i in wanted if not 1 <= i <= self.depth)
        if bad:
            raise ValueError(f"vit return_blocks {bad} outside 1..{self.depth}")
        x = self.prepare_tokens(images, masks)
        b, _, d = x.shape
        h, w = images.shape[1] // self.patch_size, images.shape[2] // self.patch_size
        blocks = {}
        for i, block in enumerate(self.blocks, start=1):
            block_key = None if key is None else jax.random.fold_in(key, i)
            x = block(x, train=train, key=block_key)
            if i in wanted:
                blocks[i] = self.norm(x) if norm_blocks else x
        x = self.norm(x)
        outputs = {"cls": x[:, 0], "patches": x[:, 1:].reshape(b, h, w, d), "blocks": blocks}
        if self.head is not None:
            outputs["logits"] = self.head(x[:, 0])
        return outputs


def vit_small(patch_size: int = 16, **kwargs) -> VisionTransformer:
    """ViT-S/p: D 384, 12 blocks, 6 heads (DINO's vit_small).

    Args:
      patch_size: 16 or 8.
      **kwargs: VisionTransformer options (rngs is required).
    """
    return VisionTransformer(patch_size=patch_size, embed_dim=384, depth=12, num_heads=6, **kwargs)


def vit_base(patch_size: int = 8, **kwargs) -> VisionTransformer:
    """ViT-B/p: D 768, 12 blocks, 12 heads (DINO's vit_base).

    Args:
      patch_size: 8 or 16.
      **kwargs: VisionTransformer options (rngs is required).
    """
    return VisionTransformer(patch_size=patch_size, embed_dim=768, depth=12, num_heads=12, **kwargs)
