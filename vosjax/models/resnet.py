"""ResNet-18 / ResNet-50 backbones in flax.nnx (torchvision v1.5 architecture, NHWC).

The layout follows torchvision so that its ImageNet weights map one to one: a 7x7/2 stem, a 3x3/2
max pool, four residual layers of BasicBlocks (ResNet-18) or Bottlenecks with the stride on the
3x3 conv (ResNet-50, "v1.5"), global average pooling and an optional linear head. Convolutions
pad symmetrically as torch does (not 'SAME', which pads one side only for stride 2).

Video correspondence methods (CRW, DUL, Mask-VOS) keep more resolution by setting the stride of
the last layers to 1: `output_stride` 16 or 8. Mask-VOS's encoders also drop layer4
(`num_stages=3`) and its frame-mask encoder reads RGB + one mask (`in_channels=4`).
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

NORMS = ("batch", "group", "frozen_batch")
OUTPUT_STRIDES = (8, 16, 32)
# torch's BatchNorm momentum 0.1 weighs the new batch by 0.1; flax's weighs the old average.
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5
_GROUPS = 32

Dtype = jnp.dtype | type | None


class Frozen(nnx.Variable):
    """A constant that is neither trained (not an nnx.Param) nor updated (not an nnx.BatchStat)."""


class FrozenBatchNorm(nnx.Module):
    """BatchNorm with fixed statistics and affine terms, as torchvision's FrozenBatchNorm2d.

    All four vectors are `Frozen` variables, so `nnx.state(model, nnx.Param)` does not hold them and
    an optimiser over nnx.Param leaves them alone; they are loaded from a pretrained checkpoint.
    """

    def __init__(self, num_features: int, *, dtype: Dtype = None, epsilon: float = BN_EPSILON):
        self.scale = Frozen(jnp.ones((num_features,), jnp.float32))
        self.bias = Frozen(jnp.zeros((num_features,), jnp.float32))
        self.mean = Frozen(jnp.zeros((num_features,), jnp.float32))
        self.var = Frozen(jnp.ones((num_features,), jnp.float32))
        self.epsilon = epsilon
        self.dtype = dtype

    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        """Normalises x [..., C] with the stored statistics; `use_running_average` is ignored."""
        del use_running_average
        multiplier = self.scale[...] * jax.lax.rsqrt(self.var[...] + self.epsilon)
        offset = self.bias[...] - self.mean[...] * multiplier
        dtype = self.dtype or x.dtype
        return (x * multiplier.astype(dtype) + offset.astype(dtype)).astype(dtype)


class _GroupNorm(nnx.Module):
    """GroupNorm with the BatchNorm call signature, so blocks need not know which norm they hold."""

    def __init__(self, num_features: int, *, dtype: Dtype, scale_init: Callable, rngs: nnx.Rngs):
        self.norm = nnx.GroupNorm(
            num_features,
            num_groups=min(_GROUPS, num_features),
            epsilon=BN_EPSILON,
            dtype=dtype,
            scale_init=scale_init,
            rngs=rngs,
        )

    def __call__(self, x: jax.Array, use_running_average: bool | None = None) -> jax.Array:
        """Normalises x [B, H, W, C] per sample and group; `use_running_average` is ignored."""
        del use_running_average
        return self.norm(x)


def make_norm(
    norm: str,
    num_features: int,
    *,
    dtype: Dtype,
    rngs: nnx.Rngs,
    zero_init: bool = False,
    fast_variance: bool = True,
) -> nnx.Module:
    """One normalisation layer of kind `norm`; `zero_init` starts its scale at 0 (residual ends).

    `fast_variance` (BatchNorm in training only): flax's one-pass E[x^2] - E[x]^2 (the default,
    kept: on the Mask-VOS reference cases both formulas agree with the release equally well),
    which loses the variance to cancellation when |mean| >> std; False computes
    mean((x - mean)^2) as torch does.
    """
    scale_init = nnx.initializers.zeros if zero_init else nnx.initializers.ones
    if norm == "batch":
        return nnx.BatchNorm(
            num_features,
            momentum=BN_MOMENTUM,
            epsilon=BN_EPSILON,
            use_fast_variance=fast_variance,
            dtype=dtype,
            scale_init=scale_init,
            rngs=rngs,
        )
    if norm == "group":
        return _GroupNorm(num_features, dtype=dtype, scale_init=scale_init, rngs=rngs)
    if norm == "frozen_batch":
        return FrozenBatchNorm(num_features, dtype=dtype)
    raise ValueError(f"resnet norm={norm!r}; expected one of {NORMS}")


def stem_conv(
    in_features: int,
    out_features: int,
    *,
    dtype: Dtype,
    rngs: nnx.Rngs,
    bias: bool = False,
) -> nnx.Conv:
    """The 7x7 stride-2 stem convolution (He-normal fan_out init, as torchvision).

    torchvision's stem has no bias; Mask-VOS's value encoder replaces it by an nn.Conv2d with
    the default bias (`bias=True`).
    """
    return nnx.Conv(
        in_features,
        out_features,
        (7, 7),
        strides=2,
        padding=((3, 3), (3, 3)),
        use_bias=bias,
        dtype=dtype,
        kernel_init=nnx.initializers.variance_scaling(2.0, "fan_out", "normal"),
        rngs=rngs,
    )


def _conv(
    in_features: int,
    out_features: int,
    kernel_size: int,
    *,
    stride: int = 1,
    dilation: int = 1,
    dtype: Dtype,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """A bias-free conv with torch's symmetric padding (dilation * (k - 1) / 2 on each side)."""
    pad = dilation * (kernel_size - 1) // 2
    return nnx.Conv(
        in_features,
        out_features,
        (kernel_size, kernel_size),
        strides=stride,
        padding=((pad, pad), (pad, pad)),
        kernel_dilation=dilation,
        use_bias=False,
        dtype=dtype,
        # torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu").
        kernel_init=nnx.initializers.variance_scaling(2.0, "fan_out", "normal"),
        rngs=rngs,
    )


def _symmetric_uniform(bound: float) -> Callable:
    """An initialiser drawing from U(-bound, bound) (nnx's uniform draws from [0, scale))."""

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


class Downsample(nnx.Module):
    """The projection shortcut: 1x1 conv with the block's stride, then a norm."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        stride: int,
        *,
        norm: str,
        dtype: Dtype,
        rngs: nnx.Rngs,
    ):
        self.conv = _conv(in_features, out_features, 1, stride=stride, dtype=dtype, rngs=rngs)
        self.norm = make_norm(norm, out_features, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """x [B, H, W, C_in] -> [B, H / stride, W / stride, C_out]."""
        return self.norm(self.conv(x), use_running_average=not train)


class BasicBlock(nnx.Module):
    """Two 3x3 convs (ResNet-18/34); output channels = planes."""

    expansion = 1

    def __init__(
        self,
        in_features: int,
        planes: int,
        *,
        stride: int,
        dilation: int,
        norm: str,
        zero_init_residual: bool,
        dtype: Dtype,
        rngs: nnx.Rngs,
    ):
        kw = {"dtype": dtype, "rngs": rngs}
        self.conv1 = _conv(in_features, planes, 3, stride=stride, dilation=dilation, **kw)
        self.norm1 = make_norm(norm, planes, **kw)
        self.conv2 = _conv(planes, planes, 3, dilation=dilation, **kw)
        self.norm2 = make_norm(norm, planes, zero_init=zero_init_residual, **kw)
        needs_projection = stride != 1 or in_features != planes
        self.downsample = (
            Downsample(in_features, planes, stride, norm=norm, **kw) if needs_projection else None
        )

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """x [B, H, W, C_in] -> [B, H / stride, W / stride, planes]."""
        use_avg = not train
        y = nnx.relu(self.norm1(self.conv1(x), use_running_average=use_avg))
        y = self.norm2(self.conv2(y), use_running_average=use_avg)
        shortcut = x if self.downsample is None else self.downsample(x, train=train)
        return nnx.relu(y + shortcut)


class Bottleneck(nnx.Module):
    """1x1 reduce, 3x3 (carrying the stride: v1.5), 1x1 expand; output channels = 4 * planes."""

    expansion = 4

    def __init__(
        self,
        in_features: int,
        planes: int,
        *,
        stride: int,
        dilation: int,
        norm: str,
        zero_init_residual: bool,
        dtype: Dtype,
        rngs: nnx.Rngs,
    ):
        kw = {"dtype": dtype, "rngs": rngs}
        out_features = planes * self.expansion
        self.conv1 = _conv(in_features, planes, 1, **kw)
        self.norm1 = make_norm(norm, planes, **kw)
        self.conv2 = _conv(planes, planes, 3, stride=stride, dilation=dilation, **kw)
        self.norm2 = make_norm(norm, planes, **kw)
        self.conv3 = _conv(planes, out_features, 1, **kw)
        self.norm3 = make_norm(norm, out_features, zero_init=zero_init_residual, **kw)
        needs_projection = stride != 1 or in_features != out_features
        self.downsample = (
            Downsample(in_features, out_features, stride, norm=norm, **kw)
            if needs_projection
            else None
        )

    def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
        """x [B, H, W, C_in] -> [B, H / stride, W / stride, 4 * planes]."""
        use_avg = not train
        y = nnx.relu(self.norm1(self.conv1(x), use_running_average=use_avg))
        y = nnx.relu(self.norm2(self.conv2(y), use_running_average=use_avg))
        y = self.norm3(self.conv3(y), use_running_average=use_avg)
        shortcut = x if self.downsample is None else self.downsample(x, train=train)
        return nnx.relu(y + shortcut)


def layer_strides(output_stride: int, dilation: bool) -> tuple[list[int], list[int]]:
    """Per-layer (stride, dilation) of layer1..layer4 for an output stride.

    Args:
      output_stride: 32 (standard), 16 (layer4 stride 1) or 8 (layer3 and layer4 stride 1).
      dilation: if True, a layer whose stride is removed dilates its 3x3 convs by the stride it
        lost (cumulative), as torchvision's replace_stride_with_dilation; if False, no dilation
        (CRW / DUL / Mask-VOS).

    Returns:
      ([s1, s2, s3, s4], [d1, d2, d3, d4]).

    Raises:
      ValueError: if output_stride is not 8, 16 or 32.
    """
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"resnet output_stride={output_stride}; expected one of {OUTPUT_STRIDES}")
    strides, dilations = [1, 2, 2, 2], [1, 1, 1, 1]
    current = 1
    n_undone = {32: 0, 16: 1, 8: 2}[output_stride]
    for i in range(4):
        if i >= 4 - n_undone:
            if dilation:
                current *= strides[i]
            strides[i] = 1
        dilations[i] = current
    return strides, dilations


class ResNet(nnx.Module):
    """A torchvision-layout ResNet returning its intermediate stages.

    Outputs of `__call__` (NHWC, strides for output_stride 32 / 16 / 8):
      'stem'   [B, H/2, W/2, 64]          after conv1 + norm + ReLU, before the max pool;
      'layer1' [B, H/4, W/4, 64 e]        e = 1 (BasicBlock) or 4 (Bottleneck);
      'layer2' [B, H/8, W/8, 128 e];
      'layer3' [B, h3, w3, 256 e]         stride 16 / 16 / 8;
      'layer4' [B, h4, w4, 512 e]         stride 32 / 16 / 8;
      'logits' [B, num_classes]           only with a head (and num_stages 4).
    Sizes round up (ceil) for inputs that are not multiples of the stride.
    """

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        depths: tuple[int, int, int, int],
        *,
        in_channels: int = 3,
        stem_bias: bool = False,
        output_stride: int = 32,
        dilation: bool = False,
        num_stages: int = 4,
        num_classes: int | None = None,
        norm: str = "batch",
        zero_init_residual: bool = False,
        dtype: Dtype = None,
        rngs: nnx.Rngs,
    ):
        """Builds the network.

        Args:
          block: BasicBlock or Bottleneck.
          depths: blocks per layer, (2, 2, 2, 2) for ResNet-18, (3, 4, 6, 3) for ResNet-50.
          in_channels: channels of the input (3 RGB; 4 for Mask-VOS's RGB + mask encoder).
          stem_bias: give the 7x7 stem conv a bias (Mask-VOS's released value encoder: its
            4-channel conv1 is a plain nn.Conv2d, bias included); torchvision has none.
          output_stride: 32, 16 or 8 (see `layer_strides`).
          dilation: dilate layers whose stride was removed instead of just dropping the stride.
          num_stages: residual layers kept, 1..4 (Mask-VOS: 3, no layer4).
          num_classes: size of the linear classification head; None for no head. Needs
            num_stages 4.
          norm: 'batch' (default), 'group' (32 groups) or 'frozen_batch' (fixed statistics and
            affine terms, not parameters).
          zero_init_residual: start the last norm scale of each block at 0 (Goyal et al.).
          dtype: compute dtype (e.g. jnp.bfloat16); parameters stay float32.
          rngs: initialisation randomness.

        Raises:
          ValueError: on an unknown norm / output_stride, num_stages outside 1..4, a head without
            layer4, or in_channels < 1.
        """
        if not 1 <= num_stages <= 4:
            raise ValueError(f"resnet num_stages={num_stages}; expected 1..4")
        if num_classes is not None and num_stages != 4:
            raise ValueError(
                f"resnet num_classes={num_classes} needs num_stages=4, got {num_stages}"
            )
        if in_channels < 1:
            raise ValueError(f"resnet in_channels={in_channels}; expected >= 1")
        if norm not in NORMS:
            raise ValueError(f"resnet norm={norm!r}; expected one of {NORMS}")
        strides, dilations = layer_strides(output_stride, dilation)
        self.output_stride = output_stride
        self.num_stages = num_stages
        self.dtype = dtype
        kw = {"dtype": dtype, "rngs": rngs}
        self.conv1 = stem_conv(in_channels, 64, dtype=dtype, rngs=rngs, bias=stem_bias)
        self.norm1 = make_norm(norm, 64, **kw)
        layers = []
        in_features, previous_dilation = 64, 1
        for i in range(num_stages):
            planes = 64 * 2**i
            blocks = []
            for j in range(depths[i]):
                blocks.append(
                    block(
                        in_features,
                        planes,
                        stride=strides[i] if j == 0 else 1,
                        # As torchvision: a layer's first block keeps the previous dilation.
                        dilation=previous_dilation if j == 0 else dilations[i],
                        norm=norm,
                        zero_init_residual=zero_init_residual,
                        **kw,
                    )
                )
                in_features = planes * block.expansion
            previous_dilation = dilations[i]
            layers.append(nnx.List(blocks))
        self.layers = nnx.List(layers)
        self.num_features = in_features
        if num_classes is None:
            self.head = None
        else:
            init = _symmetric_uniform(1.0 / in_features**0.5)  # torch nn.Linear's default
            self.head = nnx.Linear(
                in_features, num_classes, dtype=dtype, kernel_init=init, bias_init=init, rngs=rngs
            )

    def __call__(self, x: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        """Runs the network.

        Args:
          x: [B, H, W, in_channels] images (normalised float).
          train: use and update batch statistics (BatchNorm) if True; running averages if False.

        Returns:
          {'stem', 'layer1', ..., f'layer{num_stages}'} (and 'logits' with a head); see the class
          docstring for shapes and strides.
        """
        if x.ndim != 4:
            raise ValueError(f"resnet input of shape {x.shape}; expected [B, H, W, C]")
        if self.dtype is not None:
            x = x.astype(self.dtype)
        outputs = {}
        x = nnx.relu(self.norm1(self.conv1(x), use_running_average=not train))
        outputs["stem"] = x
        # torch MaxPool2d(3, 2, padding=1): padding never wins the max (reduce_window pads -inf).
        x = nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for i, layer in enumerate(self.layers):
            for blk in layer:
                x = blk(x, train=train)
            outputs[f"layer{i + 1}"] = x
        if self.head is not None:
            outputs["logits"] = self.head(jnp.mean(x, axis=(1, 2)))
        return outputs


def resnet18(**kwargs) -> ResNet:
    """ResNet-18 (BasicBlocks, 2-2-2-2): 11,689,512 parameters with a 1000-class head.

    Args:
      **kwargs: ResNet options (rngs is required; see `ResNet.__init__`).
    """
    return ResNet(BasicBlock, (2, 2, 2, 2), **kwargs)


def resnet50(**kwargs) -> ResNet:
    """ResNet-50 (Bottlenecks, 3-4-6-3): 25,557,032 parameters with a 1000-class head.

    Args:
      **kwargs: ResNet options (rngs is required; see `ResNet.__init__`).
    """
    return ResNet(Bottleneck, (3, 4, 6, 3), **kwargs)
