"""Mask-VOS mask embedding: frame-mask encoder V, mask decoder D and soft aggregation.

As the released code (which follows STCN's value encoder and decoder):
- V reads a normalised frame plus one object's probability map (4 input channels) through a
  ResNet cut after layer3 (layer3 at stride 1: output stride 8), projects layer3 to `value_dim`
  with a 1x1 conv and fuses it with the frame's `res4` from the encoder E
  (`FeatureFusionBlock`: concat -> ResBlock -> CBAM residual -> ResBlock).
- D reads [affinity readout of the memory values, the query frame's own value] at /8, adds
  skip convs of E's layer2 (f3, /8) and layer1 (f2, /4), and predicts one logit map per object
  at full resolution.
- Per-object probabilities are merged into K + 1 class logits by soft aggregation
  (bg = prod(1 - p), clamp, log-odds).

The released code projects layer3 only for ResNet-50 (1024 -> 512) and its ResNet-18 path does
not fit the fusion block; here both backbones are projected to `value_dim`. The released
ResNet-18 V loads supervised ImageNet weights; here V is randomly initialised.

Objects are folded into the batch axis (`MaskHead`): one call of V and D for all objects of a
frame.

Details of the released modules that are the defaults here (each an argument):
- `ResBlock(shortcut_kernel=3)`: the projection shortcut is a 3x3 conv (STCN's), not a 1x1;
- `ChannelSpatialAttention(pool_order=("max", "mean"))`: the spatial gate's 7x7 conv reads
  [channel max, channel mean] in that order;
- `FeatureFusionBlock(mask_feature_first=True)`: the fusion concatenates [V's feature, res4];
- `FrameMaskEncoder(stem_bias=True)`: V's 4-channel 7x7 conv1 has a bias;
- `MaskHead(mask_resize="align_corners")`: coarse masks at /8 reach V through a bilinear
  resize with align_corners=True (the released `F.interpolate(..., align_corners=True)`);
- `MaskHead(object_batches=True)`: in training, V runs once per object (and frame), so its
  BatchNorm statistics are those of one object's batch, as the released per-object calls.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from vosjax.methods.maskvos import encoder
from vosjax.models import resnet
from vosjax.ops import label_resize

BACKBONES = encoder.BACKBONES
# STCN / Mask-VOS clamp before taking log-odds, so that 0 and 1 stay finite.
PROB_EPSILON = 1e-7
_EXPANSION = {"resnet18": 1, "resnet50": 4}
MASK_RESIZES = ("align_corners", "half_pixel")
POOLS = ("max", "mean")


def _torch_default_conv(
    in_features: int,
    out_features: int,
    kernel_size: int,
    *,
    dtype: resnet.Dtype,
    rngs: nnx.Rngs,
) -> nnx.Conv:
    """A biased stride-1 conv with torch's symmetric 'same' padding and nn.Conv2d's default init.

    torch draws kernel and bias from U(-1/sqrt(fan_in), 1/sqrt(fan_in)); variance_scaling(1/3,
    fan_in, uniform) gives exactly that bound for the kernel.
    """
    pad = (kernel_size - 1) // 2
    bound = 1.0 / math.sqrt(in_features * kernel_size * kernel_size)
    return nnx.Conv(
        in_features,
        out_features,
        (kernel_size, kernel_size),
        padding=((pad, pad), (pad, pad)),
        use_bias=True,
        dtype=dtype,
        kernel_init=nnx.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform"),
        bias_init=resnet._symmetric_uniform(bound),
        rngs=rngs,
    )


def _torch_default_linear(
    in_features: int, out_features: int, *, dtype: resnet.Dtype, rngs: nnx.Rngs
) -> nnx.Linear:
    """nn.Linear with torch's default init, U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    init = resnet._symmetric_uniform(1.0 / math.sqrt(in_features))
    return nnx.Linear(
        in_features, out_features, dtype=dtype, kernel_init=init, bias_init=init, rngs=rngs
    )


def _check_channels(name: str, x: jax.Array, channels: int) -> None:
    if x.ndim != 4 or x.shape[-1] != channels:
        raise ValueError(f"{name} of shape {x.shape}; expected [B, H, W, {channels}]")


def _resize(x: jax.Array, height: int, width: int) -> jax.Array:
    """Bilinear resize of x [B, h, w, C] to [B, height, width, C] (torch align_corners=False)."""
    if x.shape[1:3] == (height, width):
        return x
    return jax.image.resize(x, (x.shape[0], height, width, x.shape[3]), "bilinear")


def resize_align_corners(x: jax.Array, height: int, width: int) -> jax.Array:
    """Bilinear resize of x [..., h, w] to [..., height, width] with align_corners=True.

    As torch's `F.interpolate(mode="bilinear", align_corners=True)` (no antialiasing, also when
    shrinking): two small interpolation matrices, applied as matmuls.
    """
    h, w = x.shape[-2:]
    if (h, w) == (height, width):
        return x
    wy = jnp.asarray(label_resize.align_corners_weights(h, height))
    wx = jnp.asarray(label_resize.align_corners_weights(w, width))
    hp = jax.lax.Precision.HIGHEST
    y = jnp.einsum("Yh,...hw->...Yw", wy, x.astype(jnp.float32), precision=hp)
    return jnp.einsum("Xw,...Yw->...YX", wx, y, precision=hp)


class ResBlock(nnx.Module):
    """Pre-activation residual block: x + conv(relu(conv(relu(x)))), as STCN / Mask-VOS.

    Two 3x3 convs with bias and no norm; a conv projects the shortcut when the channel counts
    differ (`shortcut_kernel` x `shortcut_kernel`: 3 in STCN and the released Mask-VOS, 1 for a
    pointwise projection). The output is not activated (the next block starts with a ReLU).
    `dtype` is the compute dtype (parameters stay float32), as in every module here.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        *,
        shortcut_kernel: int = 3,
        dtype: resnet.Dtype = None,
        rngs: nnx.Rngs,
    ):
        if shortcut_kernel not in (1, 3):
            raise ValueError(f"ResBlock shortcut_kernel={shortcut_kernel}; expected 1 or 3")
        kw = {"dtype": dtype, "rngs": rngs}
        self.conv1 = _torch_default_conv(in_ch, out_ch, 3, **kw)
        self.conv2 = _torch_default_conv(out_ch, out_ch, 3, **kw)
        self.shortcut = (
            _torch_default_conv(in_ch, out_ch, shortcut_kernel, **kw) if in_ch != out_ch else None
        )
        self.in_ch = in_ch

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, H, W, in_ch] -> [B, H, W, out_ch]."""
        _check_channels("ResBlock input", x, self.in_ch)
        r = self.conv2(nnx.relu(self.conv1(nnx.relu(x))))
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return shortcut + r


class ChannelSpatialAttention(nnx.Module):
    """CBAM (Woo et al., 2018): a channel gate then a spatial gate, each multiplying x.

    Channel gate: sigmoid(MLP(avg_pool(x)) + MLP(max_pool(x))) with one shared MLP
    C -> C / reduction -> C (ReLU). Spatial gate: sigmoid(conv7x7([max_c(x), mean_c(x)])) on the
    channel-gated x (the pooled maps in `pool_order`; CBAM's and the released order: max first).
    """

    def __init__(
        self,
        channels: int,
        *,
        reduction: int = 16,
        spatial_kernel: int = 7,
        pool_order: tuple[str, str] = ("max", "mean"),
        dtype: resnet.Dtype = None,
        rngs: nnx.Rngs,
    ):
        """Builds the gates.

        Args:
          channels: channels C of the input.
          reduction: the MLP's hidden width is max(1, C // reduction).
          spatial_kernel: side of the spatial gate's conv (odd).
          pool_order: the order of the channel-pooled maps that the spatial conv reads,
            ('max', 'mean') (CBAM, the released code) or ('mean', 'max').
          dtype: compute dtype; parameters stay float32.
          rngs: initialisation randomness.

        Raises:
          ValueError: reduction < 1, an even spatial_kernel or a bad pool_order.
        """
        if sorted(pool_order) != sorted(POOLS):
            raise ValueError(f"CBAM pool_order={pool_order!r}; expected an order of {POOLS}")
        if reduction < 1:
            raise ValueError(f"CBAM reduction={reduction}; expected >= 1")
        if spatial_kernel < 1 or spatial_kernel % 2 == 0:
            raise ValueError(f"CBAM spatial_kernel={spatial_kernel}; expected an odd size")
        hidden = max(1, channels // reduction)
        kw = {"dtype": dtype, "rngs": rngs}
        self.mlp1 = _torch_default_linear(channels, hidden, **kw)
        self.mlp2 = _torch_default_linear(hidden, channels, **kw)
        self.spatial = _torch_default_conv(2, 1, spatial_kernel, **kw)
        self.channels = channels
        self.pool_order = tuple(pool_order)

    def _mlp(self, x: jax.Array) -> jax.Array:
        return self.mlp2(nnx.relu(self.mlp1(x)))

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [B, H, W, C] -> x gated per channel and per pixel, [B, H, W, C]."""
        _check_channels("CBAM input", x, self.channels)
        pooled = self._mlp(jnp.mean(x, axis=(1, 2))) + self._mlp(jnp.max(x, axis=(1, 2)))
        x = x * nnx.sigmoid(pooled)[:, None, None, :]
        pools = {"max": jnp.max, "mean": jnp.mean}
        maps = jnp.concatenate(
            [pools[p](x, axis=-1, keepdims=True) for p in self.pool_order], axis=-1
        )
        return x * nnx.sigmoid(self.spatial(maps))


class FeatureFusionBlock(nnx.Module):
    """concat(mask feature, res4) -> ResBlock(in -> out) -> + CBAM -> ResBlock(out -> out).

    in_ch is the channels of the concatenation (embed_dim + value_dim), out_ch value_dim.
    `mask_feature_first` (the released order) puts V's feature before res4; False puts res4
    first.
    """

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        *,
        mask_feature_first: bool = True,
        dtype: resnet.Dtype = None,
        rngs: nnx.Rngs,
    ):
        kw = {"dtype": dtype, "rngs": rngs}
        self.block1 = ResBlock(in_ch, out_ch, **kw)
        self.attention = ChannelSpatialAttention(out_ch, **kw)
        self.block2 = ResBlock(out_ch, out_ch, **kw)
        self.in_ch = in_ch
        self.mask_feature_first = mask_feature_first

    def __call__(self, frame_feature: jax.Array, mask_feature: jax.Array) -> jax.Array:
        """Fuses two maps of one resolution.

        Args:
          frame_feature: [B, h, w, C1] the frame's res4 from the encoder E.
          mask_feature: [B, h, w, C2] V's projected layer3, C1 + C2 = in_ch.

        Returns:
          [B, h, w, out_ch].

        Raises:
          ValueError: if the maps' batch / spatial sizes differ or C1 + C2 != in_ch.
        """
        if frame_feature.shape[:3] != mask_feature.shape[:3]:
            raise ValueError(
                f"FeatureFusionBlock frame_feature {frame_feature.shape} and mask_feature "
                f"{mask_feature.shape}; expected the same [B, h, w]"
            )
        parts = [frame_feature, mask_feature.astype(frame_feature.dtype)]
        if self.mask_feature_first:
            parts = parts[::-1]
        x = jnp.concatenate(parts, axis=-1)
        _check_channels("FeatureFusionBlock concat(mask_feature, frame_feature)", x, self.in_ch)
        x = self.block1(x)
        x = x + self.attention(x)
        return self.block2(x)


class FrameMaskEncoder(nnx.Module):
    """V: (frame [B, H, W, 3], mask [B, H, W], res4 [B, H/8, W/8, E]) -> [B, H/8, W/8, value_dim].

    A ResNet with a 4-channel conv1 (RGB + the object's probability map), layers 1-3 with layer3
    at stride 1, a 1x1 conv layer3 -> value_dim, then `FeatureFusionBlock` with the frame's res4.
    Randomly initialised.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        *,
        embed_dim: int = 512,
        value_dim: int = 512,
        norm: str = "batch",
        stem_bias: bool = True,
        dtype: resnet.Dtype = None,
        rngs: nnx.Rngs,
    ):
        """Builds V.

        Args:
          backbone: 'resnet18' (layer3: 256 channels) or 'resnet50' (1024 channels).
          embed_dim: channels of E's res4 that V fuses with.
          value_dim: channels of the value (512).
          norm: the backbone's norm ('batch', 'group', 'frozen_batch').
          stem_bias: the 4-channel 7x7 conv1 has a bias (the released code).
          dtype: compute dtype; parameters stay float32.
          rngs: initialisation randomness.

        Raises:
          ValueError: unknown backbone, or embed_dim / value_dim < 1.
        """
        if backbone not in BACKBONES:
            raise ValueError(f"FrameMaskEncoder backbone={backbone!r}; expected one of {BACKBONES}")
        if embed_dim < 1 or value_dim < 1:
            raise ValueError(
                f"FrameMaskEncoder embed_dim={embed_dim}, value_dim={value_dim}; expected >= 1"
            )
        build = resnet.resnet18 if backbone == "resnet18" else resnet.resnet50
        self.backbone = build(
            in_channels=4,
            stem_bias=stem_bias,
            output_stride=8,
            num_stages=3,
            norm=norm,
            dtype=dtype,
            rngs=rngs,
        )
        kw = {"dtype": dtype, "rngs": rngs}
        self.project = encoder.conv1x1(self.backbone.num_features, value_dim, bias=True, **kw)
        self.fuser = FeatureFusionBlock(embed_dim + value_dim, value_dim, **kw)
        self.embed_dim = embed_dim
        self.value_dim = value_dim

    def __call__(
        self, frames: jax.Array, masks: jax.Array, res4: jax.Array, *, train: bool = False
    ) -> jax.Array:
        """Encodes one object mask of each frame.

        Args:
          frames: [B, H, W, 3] frames normalised with `color.normalize_frames`.
          masks: [B, H, W] or [B, H, W, 1] the object's probability map in [0, 1].
          res4: [B, ceil(H/8), ceil(W/8), embed_dim] the frame's res4 from the encoder E.
          train: use and update the backbone's batch statistics if True.

        Returns:
          [B, ceil(H/8), ceil(W/8), value_dim] values.

        Raises:
          ValueError: on shapes that do not fit together.
        """
        _check_channels("FrameMaskEncoder frames", frames, 3)
        if masks.ndim == 3:
            masks = masks[..., None]
        if masks.shape != frames.shape[:3] + (1,):
            raise ValueError(
                f"FrameMaskEncoder masks of shape {masks.shape}; expected "
                f"{frames.shape[:3]} or {frames.shape[:3] + (1,)} (the frames' [B, H, W])"
            )
        b, h, w = frames.shape[:3]
        expected = (b, -(-h // 8), -(-w // 8), self.embed_dim)
        if res4.shape != expected:
            raise ValueError(f"FrameMaskEncoder res4 of shape {res4.shape}; expected {expected}")
        return self.fuser(res4, self.mask_feature(frames, masks, train=train))

    def mask_feature(self, frames: jax.Array, masks: jax.Array, *, train: bool = False):
        """The backbone's projected layer3 [B, H/8, W/8, value_dim], before the fusion.

        Args:
          frames: [B, H, W, 3] normalised frames.
          masks: [B, H, W, 1] object probability maps.
          train: use and update the backbone's batch statistics if True.
        """
        x = jnp.concatenate([frames, masks.astype(frames.dtype)], axis=-1)
        return self.project(self.backbone(x, train=train)["layer3"])


class MaskDecoder(nnx.Module):
    """D: (readout, value [B, h, w, value_dim], f3 at /8, f2 at /4) -> logits [B, H, W].

    ResBlock(2 value_dim -> hidden) -> + conv3x3(f3) -> ResBlock(-> mid) (still /8)
    -> conv3x3(f2) + x2 bilinear -> ResBlock(-> out) (/4) -> ReLU -> conv3x3(-> 1) -> x4 bilinear.
    """

    def __init__(
        self,
        *,
        value_dim: int = 512,
        f3_dim: int = 512,
        f2_dim: int = 256,
        widths: tuple[int, int, int] = (512, 256, 128),
        dtype: resnet.Dtype = None,
        rngs: nnx.Rngs,
    ):
        """Builds D.

        Args:
          value_dim: channels of the readout and of the query value.
          f3_dim: channels of E's layer2 (128 e; e = 1 ResNet-18, 4 ResNet-50).
          f2_dim: channels of E's layer1 (64 e).
          widths: (hidden, mid, out) channels of the three ResBlocks (512, 256, 128).
          dtype: compute dtype; parameters stay float32.
          rngs: initialisation randomness.

        Raises:
          ValueError: if widths is not three positive ints or a dim is < 1.
        """
        if len(widths) != 3 or min(widths) < 1:
            raise ValueError(f"MaskDecoder widths={widths}; expected three positive ints")
        if min(value_dim, f3_dim, f2_dim) < 1:
            raise ValueError(
                f"MaskDecoder value_dim={value_dim}, f3_dim={f3_dim}, f2_dim={f2_dim}; "
                "expected >= 1"
            )
        hidden, mid, out = widths
        kw = {"dtype": dtype, "rngs": rngs}
        self.compress = ResBlock(2 * value_dim, hidden, **kw)
        self.skip3 = _torch_default_conv(f3_dim, hidden, 3, **kw)
        self.block3 = ResBlock(hidden, mid, **kw)
        self.skip2 = _torch_default_conv(f2_dim, mid, 3, **kw)
        self.block2 = ResBlock(mid, out, **kw)
        self.pred = _torch_default_conv(out, 1, 3, **kw)
        self.value_dim = value_dim
        self.f3_dim = f3_dim
        self.f2_dim = f2_dim

    def __call__(
        self,
        readout: jax.Array,
        value: jax.Array,
        f3: jax.Array,
        f2: jax.Array,
        *,
        output_size: tuple[int, int] | None = None,
    ) -> jax.Array:
        """Decodes one object per batch element.

        Args:
          readout: [B, h, w, value_dim] memory values read out through the affinity.
          value: [B, h, w, value_dim] the query frame's own value (V of its coarse mask).
          f3: [B, h, w, f3_dim] E's layer2 of the query frame.
          f2: [B, h2, w2, f2_dim] E's layer1 of the query frame (h2 = 2 h for sides that are
            multiples of 8).
          output_size: (H, W) of the logits; (4 h2, 4 w2) when None.

        Returns:
          [B, H, W] float32 logits of the object.

        Raises:
          ValueError: on shapes that do not fit together.
        """
        _check_channels("MaskDecoder readout", readout, self.value_dim)
        _check_channels("MaskDecoder value", value, self.value_dim)
        _check_channels("MaskDecoder f3", f3, self.f3_dim)
        _check_channels("MaskDecoder f2", f2, self.f2_dim)
        if not readout.shape[:3] == value.shape[:3] == f3.shape[:3]:
            raise ValueError(
                f"MaskDecoder readout {readout.shape}, value {value.shape}, f3 {f3.shape}; "
                "expected the same [B, h, w]"
            )
        if f2.shape[0] != readout.shape[0]:
            raise ValueError(
                f"MaskDecoder f2 of shape {f2.shape}; expected batch {readout.shape[0]}"
            )
        h2, w2 = f2.shape[1:3]
        height, width = output_size if output_size is not None else (4 * h2, 4 * w2)
        x = self.compress(jnp.concatenate([readout, value.astype(readout.dtype)], axis=-1))
        x = self.block3(self.skip3(f3) + x)
        # Resize to f2's grid (exactly x2 when H, W are multiples of 8; robust otherwise).
        x = self.block2(self.skip2(f2) + _resize(x, h2, w2))
        logits = self.pred(nnx.relu(x)).astype(jnp.float32)
        return _resize(logits, height, width)[..., 0]


class MaskHead(nnx.Module):
    """V and D together; objects are folded into the batch axis (B K) for one call of each."""

    def __init__(
        self,
        backbone: str = "resnet18",
        *,
        encoder_backbone: str | None = None,
        embed_dim: int = 512,
        value_dim: int = 512,
        decoder_widths: tuple[int, int, int] = (512, 256, 128),
        norm: str = "batch",
        mask_resize: str = "align_corners",
        object_batches: bool = True,
        dtype: resnet.Dtype = None,
        rngs: nnx.Rngs,
    ):
        """Builds V and D.

        Args:
          backbone: V's ResNet, 'resnet18' or 'resnet50'.
          encoder_backbone: E's ResNet, which sets the channels of f3 / f2; `backbone` if None.
          embed_dim: channels of E's res4.
          value_dim: channels of V's values.
          decoder_widths: D's (hidden, mid, out) widths.
          norm: V's backbone norm.
          mask_resize: how masks that are not at the frame's size reach V: 'align_corners'
            (bilinear, torch align_corners=True: the released code) or 'half_pixel' (bilinear,
            align_corners=False).
          object_batches: in training, run V once per object so that its BatchNorm statistics
            are one object's batch (the released per-object calls); False folds the objects
            into one batch. Outputs in eval mode do not depend on it.
          dtype: compute dtype; parameters stay float32.
          rngs: initialisation randomness.

        Raises:
          ValueError: on an unknown backbone, bad widths or an unknown mask_resize.
        """
        if mask_resize not in MASK_RESIZES:
            raise ValueError(
                f"MaskHead mask_resize={mask_resize!r}; expected one of {MASK_RESIZES}"
            )
        encoder_backbone = backbone if encoder_backbone is None else encoder_backbone
        if encoder_backbone not in BACKBONES:
            raise ValueError(
                f"MaskHead encoder_backbone={encoder_backbone!r}; expected one of {BACKBONES}"
            )
        e = _EXPANSION[encoder_backbone]
        kw = {"dtype": dtype, "rngs": rngs}
        self.value_encoder = FrameMaskEncoder(
            backbone, embed_dim=embed_dim, value_dim=value_dim, norm=norm, **kw
        )
        self.decoder = MaskDecoder(
            value_dim=value_dim, f3_dim=128 * e, f2_dim=64 * e, widths=decoder_widths, **kw
        )
        self.value_dim = value_dim
        self.mask_resize = mask_resize
        self.object_batches = object_batches

    def resize_masks(self, masks: jax.Array, height: int, width: int) -> jax.Array:
        """masks [..., h, w] -> float32 [..., height, width] as `mask_resize` says."""
        masks = masks.astype(jnp.float32)
        if self.mask_resize == "align_corners":
            return resize_align_corners(masks, height, width)
        flat = masks.reshape(-1, *masks.shape[-2:], 1)
        return _resize(flat, height, width)[..., 0].reshape(*masks.shape[:-2], height, width)

    def encode(
        self, frames: jax.Array, masks: jax.Array, res4: jax.Array, *, train: bool = False
    ) -> jax.Array:
        """Values of K objects of each frame (for the memory or the query).

        Args:
          frames: [B, H, W, 3] normalised frames.
          masks: [B, K, H', W'] object probability maps; bilinearly resized to (H, W) when
            (H', W') differs (e.g. coarse masks at /8), as `mask_resize` says.
          res4: [B, H/8, W/8, embed_dim] E's res4 of the frames.
          train: use and update V's batch statistics if True.

        Returns:
          [B, K, H/8, W/8, value_dim] values.

        Raises:
          ValueError: on shapes that do not fit together.
        """
        if frames.ndim != 4 or masks.ndim != 4 or masks.shape[0] != frames.shape[0]:
            raise ValueError(
                f"MaskHead frames {frames.shape} and masks {masks.shape}; expected "
                "[B, H, W, 3] and [B, K, H', W']"
            )
        b, h, w = frames.shape[:3]
        k = masks.shape[1]
        masks = self.resize_masks(masks, h, w)  # [B, K, H, W]
        if train and self.object_batches:
            values = [self.value_encoder(frames, masks[:, j], res4, train=True) for j in range(k)]
            return jnp.stack(values, axis=1)
        values = self.value_encoder(
            jnp.repeat(frames, k, axis=0),
            masks.reshape(b * k, h, w),
            jnp.repeat(res4, k, axis=0),
            train=train,
        )
        return values.reshape(b, k, *values.shape[1:])

    def decode(
        self,
        frames: jax.Array,
        coarse_masks: jax.Array,
        readout: jax.Array,
        res4: jax.Array,
        f3: jax.Array,
        f2: jax.Array,
        *,
        train: bool = False,
    ) -> jax.Array:
        """Object logits of one query frame: V on each coarse mask, then D.

        Args:
          frames: [B, H, W, 3] normalised query frames.
          coarse_masks: [B, K, H', W'] coarse object probabilities (full resolution, or /8:
            resized bilinearly).
          readout: [B, K, h, w, value_dim] memory values read out through the affinity.
          res4: [B, h, w, embed_dim] E's res4 of the query frames.
          f3: [B, h, w, f3_dim] E's layer2 of the query frames.
          f2: [B, h2, w2, f2_dim] E's layer1 of the query frames.
          train: use and update V's batch statistics if True.

        Returns:
          [B, K, H, W] float32 per-object logits (merge them with `aggregate_objects`).

        Raises:
          ValueError: on shapes that do not fit together.
        """
        b, h, w = frames.shape[:3]
        k = coarse_masks.shape[1] if coarse_masks.ndim == 4 else -1
        if readout.ndim != 5 or readout.shape[:2] != (b, k):
            raise ValueError(
                f"MaskHead readout of shape {readout.shape}; expected [B={b}, K={k}, h, w, C] "
                f"(coarse_masks {coarse_masks.shape})"
            )
        values = self.encode(frames, coarse_masks, res4, train=train)
        fold = lambda x: x.reshape(b * k, *x.shape[2:])  # noqa: E731
        logits = self.decoder(
            fold(readout),
            fold(values),
            jnp.repeat(f3, k, axis=0),
            jnp.repeat(f2, k, axis=0),
            output_size=(h, w),
        )
        return logits.reshape(b, k, h, w)


def soft_aggregate(probs: jax.Array) -> jax.Array:
    """Per-object probabilities -> K + 1 class logits, as STCN / Mask-VOS.

    q = clamp([prod_k (1 - p_k), p_1, ..., p_K], 1e-7, 1 - 1e-7) and logit = log(q / (1 - q)).
    softmax over the K + 1 logits gives q / (1 - q) normalised (the odds, not q itself); its
    argmax is the argmax of q.

    Args:
      probs: [B, K, H, W] object probabilities in [0, 1].

    Returns:
      [B, K + 1, H, W] float32 logits, background first.

    Raises:
      ValueError: if probs is not 4-D.
    """
    if probs.ndim != 4:
        raise ValueError(f"soft_aggregate probs of shape {probs.shape}; expected [B, K, H, W]")
    probs = probs.astype(jnp.float32)
    bg = jnp.prod(1.0 - probs, axis=1, keepdims=True)
    q = jnp.clip(jnp.concatenate([bg, probs], axis=1), PROB_EPSILON, 1.0 - PROB_EPSILON)
    return jnp.log(q / (1.0 - q))


def aggregate_objects(object_logits: jax.Array, valid_objects: jax.Array) -> jax.Array:
    """Per-object logits with padded (absent) objects -> K + 1 class logits.

    Absent objects get probability 0: they leave the background unchanged and their logit is the
    clamp floor log(1e-7 / (1 - 1e-7)), which some present class or the background always
    exceeds, so they never win the argmax.

    Args:
      object_logits: [B, K, H, W] decoder logits (pre-sigmoid).
      valid_objects: [B, K] bool, True for objects present in the example.

    Returns:
      [B, K + 1, H, W] float32 logits, background first.

    Raises:
      ValueError: on shapes that do not fit together.
    """
    if object_logits.ndim != 4 or valid_objects.shape != object_logits.shape[:2]:
        raise ValueError(
            f"aggregate_objects object_logits {object_logits.shape} and valid_objects "
            f"{valid_objects.shape}; expected [B, K, H, W] and [B, K]"
        )
    probs = jax.nn.sigmoid(object_logits.astype(jnp.float32))
    probs = jnp.where(valid_objects[:, :, None, None], probs, 0.0)
    return soft_aggregate(probs)
