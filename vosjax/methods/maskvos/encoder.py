"""Mask-VOS visual encoder E: ResNet (layer3 at stride 8, no layer4) -> down_dim -> key head.

As the released code (a DUL fork): a torchvision-layout ResNet with layer3's stride set to 1
and layer4 removed gives `res4` at output stride 8 after `down_dim` (1x1 conv -> BN -> ReLU to
512 channels); the key head `emb_q` (1x1 conv 512 -> 512, BN, ReLU, 1x1 conv -> 128) gives the
L2-normalised keys that the correspondence losses train and label propagation matches. The
mask stage's decoder later reads the intermediate maps f3 (layer2, /8) and f2 (layer1, /4).

The released code builds only ResNet-50 this way (its ResNet-18 path does not fit); here
`down_dim` takes whatever layer3 gives (256 channels for ResNet-18, 1024 for ResNet-50).

Details of the released `Net` that are the defaults here (each an argument of the encoder):
- `head_bias`: down_dim's and emb_q's first 1x1 convs are plain nn.Conv2d, bias included;
- `skip_heads`: the decoder's skips are not layer2 / layer1 themselves but `down_dim3(layer2)`
  and `down_dim2(layer1)` (1x1 conv with bias -> BN -> ReLU, channels kept);
- `down_dim_in_backbone`: down_dim belongs to the backbone module, so the mask stage's frozen
  backbone (`torch.no_grad()` + `.eval()`) freezes it too: running statistics, no gradient.
The released `emb_v` head is never used by the mask stage and has no counterpart here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from vosjax.models import resnet
from vosjax.ops import correspondence_losses

BACKBONES = ("resnet18", "resnet50")


def conv1x1(
    in_features: int, out_features: int, *, bias: bool, dtype: resnet.Dtype, rngs: nnx.Rngs
) -> nnx.Conv:
    """A 1x1 convolution with PyTorch-style (Kaiming fan-out) initialisation."""
    return nnx.Conv(
        in_features,
        out_features,
        (1, 1),
        use_bias=bias,
        dtype=dtype,
        kernel_init=nnx.initializers.variance_scaling(2.0, "fan_out", "normal"),
        rngs=rngs,
    )


def _batch_norm(num_features: int, *, dtype: resnet.Dtype, rngs: nnx.Rngs) -> nnx.BatchNorm:
    # torch momentum 0.1 on the new batch = flax momentum 0.9 on the running average.
    return nnx.BatchNorm(num_features, momentum=0.9, epsilon=1e-5, dtype=dtype, rngs=rngs)


class MaskVOSEncoder(nnx.Module):
    """E: frames [B, H, W, 3] -> keys [B, H/8, W/8, key_dim] (+ res4, f3, f2).

    Outputs of `__call__` (sizes round up for sides that are not multiples of 8):
      'key'  [B, H/8, W/8, key_dim]    L2-normalised (float32);
      'res4' [B, H/8, W/8, embed_dim]  after down_dim;
      'f3'   [B, H/8, W/8, 128 e]      layer2, through its skip head (e = 1 for ResNet-18, 4 for
                                       ResNet-50);
      'f2'   [B, H/4, W/4, 64 e]       layer1, through its skip head.
    """

    def __init__(
        self,
        backbone: str = "resnet18",
        *,
        output_stride: int = 8,
        embed_dim: int = 512,
        key_dim: int = 128,
        norm: str = "batch",
        head_bias: bool = True,
        skip_heads: bool = True,
        down_dim_in_backbone: bool = True,
        dtype: jnp.dtype | None = None,
        rngs: nnx.Rngs,
    ):
        """Builds E.

        Args:
          backbone: 'resnet18' or 'resnet50'.
          output_stride: stride of the keys (8 in Mask-VOS; 16 keeps layer3's stride).
          embed_dim: channels of res4 (down_dim's output) and of the key head's hidden layer.
          key_dim: channels of the key (128).
          norm: the backbone's norm ('batch', 'group', 'frozen_batch').
          head_bias: down_dim's conv and the key head's first conv have biases (the released
            code); False leaves them out (they sit before a BatchNorm).
          skip_heads: f3 / f2 go through 1x1 conv + BN + ReLU heads (the released down_dim3 /
            down_dim2); False returns layer2 / layer1 as they are.
          down_dim_in_backbone: down_dim runs in the backbone's mode (`train_backbone`): a
            frozen backbone keeps its running statistics and passes it no gradient (the
            released code); False runs it in the heads' mode (`train`).
          dtype: compute dtype; parameters stay float32.
          rngs: initialisation randomness.

        Raises:
          ValueError: unknown backbone, or output_stride not 8 or 16 (layer4 is removed).
        """
        if backbone not in BACKBONES:
            raise ValueError(f"config.model.backbone={backbone!r}; expected one of {BACKBONES}")
        if output_stride not in (8, 16):
            raise ValueError(
                f"config.model.output_stride={output_stride}; expected 8 or 16 (no layer4)"
            )
        build = resnet.resnet18 if backbone == "resnet18" else resnet.resnet50
        self.backbone = build(
            output_stride=output_stride, num_stages=3, norm=norm, dtype=dtype, rngs=rngs
        )
        kw = {"dtype": dtype, "rngs": rngs}
        self.down_conv = conv1x1(self.backbone.num_features, embed_dim, bias=head_bias, **kw)
        self.down_norm = _batch_norm(embed_dim, **kw)
        self.key_conv1 = conv1x1(embed_dim, embed_dim, bias=head_bias, **kw)
        self.key_norm = _batch_norm(embed_dim, **kw)
        self.key_conv2 = conv1x1(embed_dim, key_dim, bias=True, **kw)
        if skip_heads:
            expansion = self.backbone.num_features // 256  # 1 (ResNet-18) or 4 (ResNet-50)
            f3_dim, f2_dim = 128 * expansion, 64 * expansion
            self.f3_conv = conv1x1(f3_dim, f3_dim, bias=True, **kw)
            self.f3_norm = _batch_norm(f3_dim, **kw)
            self.f2_conv = conv1x1(f2_dim, f2_dim, bias=True, **kw)
            self.f2_norm = _batch_norm(f2_dim, **kw)
        else:
            self.f3_conv = self.f3_norm = self.f2_conv = self.f2_norm = None
        self.output_stride = output_stride
        self.key_dim = key_dim
        self.down_dim_in_backbone = down_dim_in_backbone

    def __call__(
        self, x: jax.Array, *, train: bool = False, train_backbone: bool | None = None
    ) -> dict[str, jax.Array]:
        """Encodes normalised frames.

        Args:
          x: [B, H, W, 3] frames normalised with ImageNet mean / std
            (`vosjax.ops.color.normalize_frames`).
          train: use and update batch statistics if True.
          train_backbone: False runs the backbone as the released mask stage runs its frozen
            one (`torch.no_grad()` and `.eval()`): running statistics, no gradient to it (nor
            to down_dim, with `down_dim_in_backbone`). Defaults to `train`.

        Returns:
          {'key', 'res4', 'f3', 'f2'}; see the class docstring.
        """
        if train_backbone is None:
            train_backbone = train
        stages = self.backbone(x, train=train_backbone)
        if not train_backbone:
            stages = jax.lax.stop_gradient(stages)
        down_train = train_backbone if self.down_dim_in_backbone else train
        res4 = nnx.relu(
            self.down_norm(self.down_conv(stages["layer3"]), use_running_average=not down_train)
        )
        if self.down_dim_in_backbone and not train_backbone:
            res4 = jax.lax.stop_gradient(res4)
        use_avg = not train
        hidden = nnx.relu(self.key_norm(self.key_conv1(res4), use_running_average=use_avg))
        key = correspondence_losses.l2_normalize(self.key_conv2(hidden).astype(jnp.float32))
        f3, f2 = stages["layer2"], stages["layer1"]
        if self.f3_conv is not None:
            f3 = nnx.relu(self.f3_norm(self.f3_conv(f3), use_running_average=use_avg))
            f2 = nnx.relu(self.f2_norm(self.f2_conv(f2), use_running_average=use_avg))
        return {"key": key, "res4": res4, "f3": f3, "f2": f2}
