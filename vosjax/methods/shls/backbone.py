"""SHLS's encoder: a ResNet-18-like network that keeps stride 4 (no max pool, two /4 layers).

As the released code: conv 7x7/2 (width) + norm + ReLU (/2, no max pool) -> layer1: BasicBlocks of
width (/2) -> layer2: 2 width, stride 2 (/4) -> layer3 and layer4: 4 width, stride 1 (/4). With
the default width 64 that is 64 / 64 / 128 / 256 / 256 channels: layer1 (64) and layer4 (256)
feed the superfeatures (L1 and L4, each with 3 superpixel-info channels appended) and the
segmenter. The blocks are `resnet.BasicBlock`s; convolutions pad symmetrically as torch does.
"""

from __future__ import annotations

import jax
from flax import nnx

from vosjax.models import resnet


class SHLSBackbone(nnx.Module):
    """The SHLS encoder, randomly initialised (kernels He-normal, fan_out, as torchvision).

    Outputs of `__call__` (NHWC; sides round up for inputs that are not multiples of 4):
      'stem'   [B, H/2, W/2, width]       conv1 + norm + ReLU;
      'layer1' [B, H/2, W/2, width];
      'layer2' [B, H/4, W/4, 2 width];
      'layer3' [B, H/4, W/4, 4 width];
      'layer4' [B, H/4, W/4, 4 width].
    """

    def __init__(
        self,
        *,
        width: int = 64,
        blocks: tuple[int, int, int, int] = (2, 2, 2, 2),
        norm: str = "batch",
        dtype: resnet.Dtype = None,
        rngs: nnx.Rngs,
    ):
        """Builds the network.

        Args:
          width: channels of the stem and layer1 (64); layer2 has 2 width, layer3 and layer4
            4 width. A smoke config shrinks it (e.g. 8).
          blocks: BasicBlocks in layer1..layer4, each >= 1.
          norm: 'batch' (default), 'group' (min(32, C) groups) or 'frozen_batch', for the stem
            and every block.
          dtype: compute dtype (e.g. jnp.bfloat16); parameters stay float32.
          rngs: initialisation randomness.

        Raises:
          ValueError: on width < 1, `blocks` not four ints >= 1, or an unknown norm.
        """
        if width < 1:
            raise ValueError(f"SHLSBackbone width={width}; expected >= 1")
        if len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"SHLSBackbone blocks={blocks}; expected four ints >= 1")
        if norm not in resnet.NORMS:
            raise ValueError(f"SHLSBackbone norm={norm!r}; expected one of {resnet.NORMS}")
        self.dtype = dtype
        self.width = width
        self.conv1 = resnet.stem_conv(3, width, dtype=dtype, rngs=rngs)
        self.norm1 = resnet.make_norm(norm, width, dtype=dtype, rngs=rngs)
        planes_per_layer = (width, 2 * width, 4 * width, 4 * width)
        strides = (1, 2, 1, 1)
        layers = []
        in_features = width
        for planes, stride, depth in zip(planes_per_layer, strides, blocks, strict=True):
            layer = []
            for j in range(depth):
                layer.append(
                    resnet.BasicBlock(
                        in_features,
                        planes,
                        stride=stride if j == 0 else 1,
                        dilation=1,
                        norm=norm,
                        zero_init_residual=False,
                        dtype=dtype,
                        rngs=rngs,
                    )
                )
                in_features = planes
            layers.append(nnx.List(layer))
        self.layers = nnx.List(layers)

    @property
    def layer1_features(self) -> int:
        """Channels of 'layer1' (width)."""
        return self.width

    @property
    def layer4_features(self) -> int:
        """Channels of 'layer4' (4 width)."""
        return 4 * self.width

    def __call__(self, images: jax.Array, *, train: bool = False) -> dict[str, jax.Array]:
        """Runs the network.

        Args:
          images: [B, H, W, 3] normalised float images.
          train: use and update batch statistics (BatchNorm) if True; running averages if False.

        Returns:
          {'stem', 'layer1', 'layer2', 'layer3', 'layer4'}; see the class docstring for shapes.

        Raises:
          ValueError: if images is not [B, H, W, 3].
        """
        if images.ndim != 4 or images.shape[-1] != 3:
            raise ValueError(f"SHLSBackbone images of shape {images.shape}; expected [B, H, W, 3]")
        x = images if self.dtype is None else images.astype(self.dtype)
        x = self.conv1(x)
        x = self.norm1(x, use_running_average=not train)
        x = nnx.relu(x)
        outputs = {"stem": x}
        for i, layer in enumerate(self.layers):
            for block in layer:
                x = block(x, train=train)
            outputs[f"layer{i + 1}"] = x
        return outputs
