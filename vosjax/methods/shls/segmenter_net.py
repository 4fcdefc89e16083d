"""SHLS's segmenter: a memory-select gate and a refinement decoder, one object per batch element.

For one object in the current frame (objects are folded into the batch axis by the caller):
  guide  = concat(attention maps, previous-frame probability)            [B, H, W, A + 1]
  gate   = softmax(convs(concat(avgpool4(guide), avgpool2(L1))))          [B, H/4, W/4, 2]
  fused  = gate_0 * L4_current + gate_1 * L4_previous                     [B, H/4, W/4, C4]
  x      = ResBlock(conv3x3(concat(fused, avgpool4(guide))))              /4, hidden
  x      = Refine(x, L1)        (x2 bilinear + conv3x3(L1), ResBlock)     /2, hidden / 2
  x      = Refine(x, guide)     (x2 bilinear + conv3x3(guide), ResBlock)  /1, hidden / 4
  logits = conv3x3(ReLU(x))                                               [B, H, W, 2]
The released code ("Mem_select" + "SegmenterN", after STM's decoder) gates the 259-channel L4
features of the last and current frames with conv layers on the attention maps and L1, and
refines at /4 -> /2 -> /1 with ResBlocks; its exact widths are not documented, so here the
decoder halves the width at each step (hidden 128: 128 / 64 / 32) and the gate is hidden / 4 wide.
Convolutions carry a bias and no norm, with torch's default initialisation.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from vosjax.models import resnet


def _conv(
    in_features: int, out_features: int, kernel_size: int, *, dtype: resnet.Dtype, rngs: nnx.Rngs
) -> nnx.Conv:
    """A biased stride-1 conv, symmetric 'same' padding, torch's nn.Conv2d default init.

    torch draws kernel and bias from U(-1/sqrt(fan_in), 1/sqrt(fan_in)); variance_scaling(1/3,
    fan_in, uniform) has exactly that bound for the kernel.
    """
    pad = (kernel_size - 1) // 2
    bound = 1.0 / math.sqrt(in_features * kernel_size * kernel_size)

    def bias_init(key: jax.Array, shape: tuple[int, ...], dtype: resnet.Dtype = jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return nnx.Conv(
        in_features,
        out_features,
        (kernel_size, kernel_size),
        padding=((pad, pad), (pad, pad)),
        dtype=dtype,
        kernel_init=nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
        bias_init=bias_init,
        rngs=rngs,
    )


def _avg_pool(x: jax.Array, factor: int) -> jax.Array:
    """Mean over non-overlapping factor x factor cells: [B, H, W, C] -> [B, H/f, W/f, C]."""
    b, h, w, c = x.shape
    return jnp.mean(x.reshape(b, h // factor, factor, w // factor, factor, c), axis=(2, 4))


def _upsample2(x: jax.Array) -> jax.Array:
    """x2 bilinear upsampling of [B, h, w, C] (torch's align_corners=False)."""
    b, h, w, c = x.shape
    return jax.image.resize(x, (b, 2 * h, 2 * w, c), "bilinear")


class ResBlock(nnx.Module):
    """Pre-activation residual block of constant width: x + conv3x3(ReLU(conv3x3(ReLU(x))))."""

    def __init__(self, channels: int, *, dtype: resnet.Dtype = None, rngs: nnx.Rngs):
        self.conv1 = _conv(channels, channels, 3, dtype=dtype, rngs=rngs)
        self.conv2 = _conv(channels, channels, 3, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, H, W, C] -> [B, H, W, C]."""
        return x + self.conv2(nnx.relu(self.conv1(nnx.relu(x))))


class Refine(nnx.Module):
    """One x2 decoder step: ResBlock(conv3x3(skip) + upsample2(conv1x1(x)))."""

    def __init__(
        self,
        in_features: int,
        skip_features: int,
        out_features: int,
        *,
        dtype: resnet.Dtype = None,
        rngs: nnx.Rngs,
    ):
        kw = {"dtype": dtype, "rngs": rngs}
        # Reduce before upsampling: the 1x1 conv then runs on 4x fewer pixels.
        self.reduce = _conv(in_features, out_features, 1, **kw)
        self.skip = _conv(skip_features, out_features, 3, **kw)
        self.block = ResBlock(out_features, **kw)

    def __call__(self, x: jax.Array, skip: jax.Array) -> jax.Array:
        """x [B, h, w, in_features], skip [B, 2h, 2w, skip_features] -> [B, 2h, 2w, out]."""
        return self.block(self.skip(skip) + _upsample2(self.reduce(x)))


class SegmentationNet(nnx.Module):
    """(L4 now and before, L1, attention maps, previous mask) -> [B, H, W, 2] logits.

    See the module docstring for the layers. Channel 0 of the logits is the background, 1 the
    object.
    """

    def __init__(
        self,
        l1_dim: int,
        l4_dim: int,
        attention_dim: int = 4,
        hidden: int = 128,
        *,
        dtype: resnet.Dtype = None,
        rngs: nnx.Rngs,
    ):
        """Builds the gate and the decoder.

        Args:
          l1_dim: channels of the /2 features L1 (64, or 67 with the info map).
          l4_dim: channels of the /4 features L4 (256, or 259 with the info map).
          attention_dim: attention maps per object (4: kNN similarity to the object, max to the
            other classes, centroid similarity, max to the other centroids).
          hidden: decoder width at /4; /2 and /1 use hidden // 2 and hidden // 4, the gate
            hidden // 4. 128 by default, 16 in smoke configs.
          dtype: compute dtype; parameters stay float32.
          rngs: initialisation randomness.

        Raises:
          ValueError: if a dim is < 1 or hidden < 4.
        """
        if min(l1_dim, l4_dim, attention_dim) < 1:
            raise ValueError(
                f"SegmentationNet l1_dim={l1_dim}, l4_dim={l4_dim}, "
                f"attention_dim={attention_dim}; expected >= 1"
            )
        if hidden < 4:
            raise ValueError(f"SegmentationNet hidden={hidden}; expected >= 4")
        kw = {"dtype": dtype, "rngs": rngs}
        guide_dim = attention_dim + 1
        quarter, half = hidden // 4, hidden // 2
        self.gate1 = _conv(l1_dim + guide_dim, quarter, 3, **kw)
        self.gate2 = _conv(quarter, quarter, 3, **kw)
        self.gate_out = _conv(quarter, 2, 1, **kw)
        self.modulate = _conv(l4_dim + guide_dim, hidden, 3, **kw)
        self.block4 = ResBlock(hidden, **kw)
        self.refine2 = Refine(hidden, l1_dim, half, **kw)
        self.refine1 = Refine(half, guide_dim, quarter, **kw)
        self.predict = _conv(quarter, 2, 3, **kw)
        self.l1_dim = l1_dim
        self.l4_dim = l4_dim
        self.attention_dim = attention_dim
        self.dtype = dtype

    def _guide(self, attention: jax.Array, prev_mask: jax.Array) -> jax.Array:
        """concat(attention, prev_mask) [B, H, W, A + 1] in the compute dtype."""
        guide = jnp.concatenate([attention, prev_mask[..., None].astype(attention.dtype)], -1)
        return guide.astype(self.dtype or jnp.result_type(guide, jnp.float32))

    def _gate(self, l1: jax.Array, guide4: jax.Array) -> jax.Array:
        x = jnp.concatenate([guide4, _avg_pool(l1.astype(guide4.dtype), 2)], axis=-1)
        x = nnx.relu(self.gate2(nnx.relu(self.gate1(x))))
        return jax.nn.softmax(self.gate_out(x).astype(jnp.float32), axis=-1)

    def _check(
        self,
        l1: jax.Array,
        attention: jax.Array,
        prev_mask: jax.Array,
        cur_l4: jax.Array | None = None,
        prev_l4: jax.Array | None = None,
    ) -> None:
        """Raises ValueError unless the shapes fit the [B, H, W] of `attention`."""
        if attention.ndim != 4 or attention.shape[-1] != self.attention_dim:
            raise ValueError(
                f"SegmentationNet attention of shape {attention.shape}; expected "
                f"[B, H, W, {self.attention_dim}]"
            )
        b, h, w = attention.shape[:3]
        if h % 4 or w % 4:
            raise ValueError(
                f"SegmentationNet attention of shape {attention.shape}; expected H and W "
                "multiples of 4"
            )
        expected = {
            "l1": (l1, (b, h // 2, w // 2, self.l1_dim)),
            "prev_mask": (prev_mask, (b, h, w)),
            "cur_l4": (cur_l4, (b, h // 4, w // 4, self.l4_dim)),
            "prev_l4": (prev_l4, (b, h // 4, w // 4, self.l4_dim)),
        }
        for name, (x, shape) in expected.items():
            if x is not None and x.shape != shape:
                raise ValueError(f"SegmentationNet {name} of shape {x.shape}; expected {shape}")

    def memory_gate(self, l1: jax.Array, attention: jax.Array, prev_mask: jax.Array) -> jax.Array:
        """The memory-select gate alone.

        Args:
          l1: [B, H/2, W/2, l1_dim] L1 features of the current frame.
          attention: [B, H, W, attention_dim] the object's attention maps.
          prev_mask: [B, H, W] the object's probability in the previous frame.

        Returns:
          float32 [B, H/4, W/4, 2], weights of (current, previous) L4 that sum to 1.

        Raises:
          ValueError: on shapes that do not fit together.
        """
        self._check(l1, attention, prev_mask)
        return self._gate(l1, _avg_pool(self._guide(attention, prev_mask), 4))

    def __call__(
        self,
        cur_l4: jax.Array,
        prev_l4: jax.Array,
        l1: jax.Array,
        attention: jax.Array,
        prev_mask: jax.Array,
        *,
        train: bool = False,
    ) -> jax.Array:
        """Segments one object per batch element.

        Args:
          cur_l4: [B, H/4, W/4, l4_dim] L4 features of the current frame.
          prev_l4: [B, H/4, W/4, l4_dim] L4 features of the previous frame.
          l1: [B, H/2, W/2, l1_dim] L1 features of the current frame.
          attention: [B, H, W, attention_dim] the object's attention maps in the current frame.
          prev_mask: [B, H, W] the object's probability in the previous frame.
          train: unused (the network has no norm or dropout); kept so that every SHLS network
            is called alike.

        Returns:
          float32 [B, H, W, 2] logits, background first.

        Raises:
          ValueError: on shapes that do not fit together or H, W not multiples of 4.
        """
        del train
        self._check(l1, attention, prev_mask, cur_l4, prev_l4)
        guide = self._guide(attention, prev_mask)
        dtype = guide.dtype
        guide4 = _avg_pool(guide, 4)
        gate = self._gate(l1, guide4).astype(dtype)
        fused = gate[..., :1] * cur_l4.astype(dtype) + gate[..., 1:] * prev_l4.astype(dtype)
        x = self.block4(self.modulate(jnp.concatenate([fused, guide4], axis=-1)))
        x = self.refine2(x, l1.astype(dtype))
        x = self.refine1(x, guide)
        return self.predict(nnx.relu(x)).astype(jnp.float32)
