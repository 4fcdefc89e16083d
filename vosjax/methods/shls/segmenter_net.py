"""SHLS's segmenter: the memory-select gate and the refinement decoder, as the released code.

For one object, on its box in the current frame padded to a multiple of 4 (h x w), with the
last and the current frame stacked on the batch axis where two are given
(`Models/get_model_LT.py`: `Mem_select`, `SegmenterN`, `Refine`, `ResBlock`, `ResidualBlock`):

  MemorySelect(att [2, h, w, 4], L1 [2, h, w, 67], L4 [2, h/4, w/4, 259]):
    g = softmax_channels(gate(convL2(L1) + convAM(att)))        three 3x3 stride-2 convs
    out = (g * L4) with the two frames folded into channels     [1, h/4, w/4, 2 x 259]
  The softmax runs over the 259 channels of each position (not over positions or frames).

  SegmenterN(L1 [1, h, w, 69], L4 [1, h/4, w/4, 777], att [1, h, w, 4]):
    l2 = layer2(L1)                          two ResidualBlocks (BN), 69 -> 128, /2
    l4 = res_L4(convFM(L4))                  777 -> 256 at /4
    l2 = RF2(l2, l4)                         Refine: ResMM(ResFS(convFS(l2)) + up2(l4))
    l1 = RF1(concat(L1, att), l2)            73 -> 256 at /1
    logits = pred(l1)                        [1, h, w, 2], background first

ResBlock (STM's) is x + CBR(CBR(ReLU(x))) with CBR = conv3x3 (bias) + BatchNorm + ReLU.
Widths are the released ones by default (gate 32, layer2 128, decoder 256); smoke configs
shrink them. Convolutions pad symmetrically as torch does.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from vosjax.models import resnet


def _conv(
    in_features: int,
    out_features: int,
    kernel_size: int,
    *,
    stride: int = 1,
    dtype: resnet.Dtype,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """A biased conv with torch's symmetric padding and nn.Conv2d's default init.

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
        strides=stride,
        padding=((pad, pad), (pad, pad)),
        dtype=dtype,
        kernel_init=nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
        bias_init=bias_init,
        rngs=rngs,
    )


def upsample2(x: jax.Array) -> jax.Array:
    """x2 bilinear upsampling of [B, h, w, C] (torch's scale_factor=2, align_corners=False)."""
    b, h, w, c = x.shape
    return jax.image.resize(x, (b, 2 * h, 2 * w, c), "bilinear", antialias=False)


class ConvNormReLU(nnx.Module):
    """conv3x3 (bias) + BatchNorm + ReLU: one `nn.Sequential` of the released ResBlock."""

    def __init__(self, channels: int, *, dtype: resnet.Dtype = None, rngs: nnx.Rngs):
        self.conv = _conv(channels, channels, 3, dtype=dtype, rngs=rngs)
        self.norm = resnet.make_norm("batch", channels, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        return nnx.relu(self.norm(self.conv(x), use_running_average=not train))


class ResBlock(nnx.Module):
    """The released (STM-style) ResBlock of constant width: x + CBR2(CBR1(ReLU(x)))."""

    def __init__(self, channels: int, *, dtype: resnet.Dtype = None, rngs: nnx.Rngs):
        self.conv1 = ConvNormReLU(channels, dtype=dtype, rngs=rngs)
        self.conv2 = ConvNormReLU(channels, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """x [B, H, W, C] -> [B, H, W, C]."""
        return x + self.conv2(self.conv1(nnx.relu(x), train=train), train=train)


class Refine(nnx.Module):
    """One x2 decoder step: ResMM(ResFS(convFS(f)) + upsample2(pm))."""

    def __init__(
        self, in_features: int, planes: int, *, dtype: resnet.Dtype = None, rngs: nnx.Rngs
    ):
        kw = {"dtype": dtype, "rngs": rngs}
        self.conv_fs = _conv(in_features, planes, 3, **kw)
        self.res_fs = ResBlock(planes, **kw)
        self.res_mm = ResBlock(planes, **kw)

    def __call__(self, f: jax.Array, pm: jax.Array, *, train: bool) -> jax.Array:
        """f [B, 2h, 2w, in_features], pm [B, h, w, planes] -> [B, 2h, 2w, planes]."""
        s = self.res_fs(self.conv_fs(f), train=train)
        return self.res_mm(s + upsample2(pm), train=train)


class MemorySelect(nnx.Module):
    """The released `Mem_select`: a per-position softmax gate over the L4 channels."""

    def __init__(
        self,
        l1_dim: int,
        l4_dim: int,
        attention_dim: int = 4,
        hidden: int = 32,
        *,
        dtype: resnet.Dtype = None,
        rngs: nnx.Rngs,
    ):
        """Builds convAM, convL2 (3x3 stride 2 to `hidden`) and gate (3x3 stride 2 to l4_dim).

        Raises:
          ValueError: if a size is < 1.
        """
        if min(l1_dim, l4_dim, attention_dim, hidden) < 1:
            raise ValueError(
                f"MemorySelect l1_dim={l1_dim}, l4_dim={l4_dim}, attention_dim={attention_dim}, "
                f"hidden={hidden}; expected >= 1"
            )
        kw = {"stride": 2, "dtype": dtype, "rngs": rngs}
        self.conv_am = _conv(attention_dim, hidden, 3, **kw)
        self.conv_l2 = _conv(l1_dim, hidden, 3, **kw)
        self.gate = _conv(hidden, l4_dim, 3, **kw)
        self.l1_dim, self.l4_dim, self.attention_dim = l1_dim, l4_dim, attention_dim

    def gate_weights(self, attention: jax.Array, l1: jax.Array) -> jax.Array:
        """[F, h, w, A], [F, h, w, l1_dim] -> softmax over channels [F, h/4, w/4, l4_dim]."""
        x = self.conv_l2(l1) + self.conv_am(attention.astype(l1.dtype))
        return jax.nn.softmax(self.gate(x), axis=-1)

    def __call__(self, attention: jax.Array, l1: jax.Array, l4: jax.Array) -> jax.Array:
        """The gated L4 of F frames folded into channels.

        Args:
          attention: [B, F, h, w, attention_dim] attention maps (F frames, e.g. last and this).
          l1: [B, F, h, w, l1_dim].
          l4: [B, F, h/4, w/4, l4_dim] (h, w multiples of 4).

        Returns:
          [B, h/4, w/4, F x l4_dim]: frame 0's gated channels first (torch's `.view(1, 2c, ...)`
          of the [2, c, ...] batch).

        Raises:
          ValueError: on shapes that do not fit together.
        """
        b, f, h, w = attention.shape[:4]
        expected = {
            "attention": (attention, (b, f, h, w, self.attention_dim)),
            "l1": (l1, (b, f, h, w, self.l1_dim)),
            "l4": (l4, (b, f, -(-h // 4), -(-w // 4), self.l4_dim)),
        }
        for name, (x, shape) in expected.items():
            if x.shape != shape:
                raise ValueError(f"MemorySelect {name} of shape {x.shape}; expected {shape}")
        fold = lambda x: x.reshape(b * f, *x.shape[2:])  # noqa: E731
        gate = self.gate_weights(fold(attention), fold(l1))
        gated = gate * fold(l4).astype(gate.dtype)
        gated = gated.reshape(b, f, *gated.shape[1:])  # [B, F, h4, w4, C]
        return jnp.moveaxis(gated, 1, -2).reshape(*gated.shape[:1], *gated.shape[2:4], -1)


class SegmenterN(nnx.Module):
    """The released `SegmenterN`: (L1 crops, L4 crops, attention) -> 2-class logits."""

    def __init__(
        self,
        l1_dim: int,
        l4_dim: int,
        attention_dim: int = 4,
        width: int = 256,
        *,
        dtype: resnet.Dtype = None,
        rngs: nnx.Rngs,
    ):
        """Builds the decoder.

        Args:
          l1_dim: channels of the full-size input (69 = first mask, last prediction, first
            frame's 67-channel L1).
          l4_dim: channels of the /4 input (777 = first frame's RoI L4 ++ MemorySelect's 518).
          attention_dim: channels of the current frame's attention maps (4).
          width: decoder width (256); layer2 has width / 2.
          dtype: compute dtype; parameters stay float32.
          rngs: initialisation randomness.

        Raises:
          ValueError: if a size is < 1 or width < 2.
        """
        if min(l1_dim, l4_dim, attention_dim) < 1 or width < 2:
            raise ValueError(
                f"SegmenterN l1_dim={l1_dim}, l4_dim={l4_dim}, attention_dim={attention_dim}, "
                f"width={width}; expected dims >= 1 and width >= 2"
            )
        kw = {"dtype": dtype, "rngs": rngs}
        half = width // 2
        block = {"dilation": 1, "norm": "batch", "zero_init_residual": False, **kw}
        self.layer2 = nnx.List(
            [
                resnet.BasicBlock(l1_dim, half, stride=2, **block),
                resnet.BasicBlock(half, half, stride=1, **block),
            ]
        )
        self.conv_fm = _conv(l4_dim, width, 3, **kw)
        self.res_l4 = ResBlock(width, **kw)
        self.rf2 = Refine(half, width, **kw)
        self.rf1 = Refine(l1_dim + attention_dim, width, **kw)
        self.pred = _conv(width, 2, 3, **kw)
        self.l1_dim, self.l4_dim, self.attention_dim = l1_dim, l4_dim, attention_dim

    def __call__(
        self, l1: jax.Array, l4: jax.Array, attention: jax.Array, *, train: bool = False
    ) -> jax.Array:
        """Logits of one object per batch element.

        Args:
          l1: [B, h, w, l1_dim], h and w multiples of 4.
          l4: [B, h/4, w/4, l4_dim].
          attention: [B, h, w, attention_dim].
          train: batch statistics (and their updates) in the BatchNorms if True.

        Returns:
          float32 [B, h, w, 2], background first.

        Raises:
          ValueError: on shapes that do not fit together.
        """
        b, h, w = l1.shape[:3]
        expected = {
            "l1": (l1, (b, h, w, self.l1_dim)),
            "l4": (l4, (b, h // 4, w // 4, self.l4_dim)),
            "attention": (attention, (b, h, w, self.attention_dim)),
        }
        if h % 4 or w % 4:
            raise ValueError(f"SegmenterN l1 of shape {l1.shape}; expected h, w multiples of 4")
        for name, (x, shape) in expected.items():
            if x.shape != shape:
                raise ValueError(f"SegmenterN {name} of shape {x.shape}; expected {shape}")
        x2 = l1
        for block in self.layer2:
            x2 = block(x2, train=train)
        x4 = self.res_l4(self.conv_fm(l4), train=train)
        x2 = self.rf2(x2, x4, train=train)
        x1 = self.rf1(jnp.concatenate([l1, attention.astype(l1.dtype)], -1), x2, train=train)
        return self.pred(x1).astype(jnp.float32)
