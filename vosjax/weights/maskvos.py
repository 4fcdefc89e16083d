"""The released Mask-VOS `FrameworkMask` state_dict -> vosjax's Mask-VOS model.

    from vosjax.weights import maskvos
    model = method.MaskVOS(config).build_model(config, nnx.Rngs(0))   # configs/maskvos/r50.py
    maskvos.import_released(model, state_dict, "checkpoint.pth")

Name map (released -> vosjax `MaskVOSModel`):

    fast_net.backbone.{conv1, bn1, layer1-3}     -> encoder.backbone (torchvision layout)
    fast_net.backbone.down_dim4.block.{0, 1}     -> encoder.down_conv, encoder.down_norm
    fast_net.emb_q.{conv1, bn1, conv2}           -> encoder.key_conv1, key_norm, key_conv2
    fast_net.down_dim3.block.{0, 1}              -> encoder.f3_conv, encoder.f3_norm
    fast_net.down_dim2.block.{0, 1}              -> encoder.f2_conv, encoder.f2_norm
    fast_net.emb_v.*                             -> skipped: the mask stage never uses it
    mask_encoder.backbone.{conv1, bn1, layer1-3} -> head.value_encoder.backbone
    mask_encoder.backbone.down_dim               -> head.value_encoder.project
    mask_encoder.fuser.block{1, 2}               -> head.value_encoder.fuser.block{1, 2}
    mask_encoder.fuser.attention.ChannelGate.mlp.{1, 3}   -> ...fuser.attention.mlp{1, 2}
    mask_encoder.fuser.attention.SpatialGate.spatial.conv -> ...fuser.attention.spatial
    decoder.compress                             -> head.decoder.compress
    decoder.up_16_8.{skip_conv, out_conv}        -> head.decoder.skip3, head.decoder.block3
    decoder.up_8_4.{skip_conv, out_conv}         -> head.decoder.skip2, head.decoder.block2
    decoder.pred                                 -> head.decoder.pred
    (a ResBlock's conv1, conv2, downsample       -> conv1, conv2, shortcut)

The model must be built with the released structure (the defaults of `MaskVOSEncoder`,
`MaskHead` and their parts); a model built otherwise (no skip heads, 1x1 shortcuts, no stem
bias) fails with the tensor and both shapes named.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from vosjax.methods.maskvos import encoder as encoder_lib
from vosjax.methods.maskvos import mask_model
from vosjax.weights import layout
from vosjax.weights import resnet as resnet_weights

# Released modules that vosjax's mask stage has no use for (imported deliberately as unused).
UNUSED = ("fast_net.emb_v.",)


def load_encoder(
    reader: layout.StateDictReader, prefix: str, encoder: encoder_lib.MaskVOSEncoder
) -> None:
    """The released `Net` (fast_net) under `prefix` -> E."""
    resnet_weights.load_resnet(reader, f"{prefix}backbone.", encoder.backbone)
    layout.load_conv(reader, f"{prefix}backbone.down_dim4.block.0", encoder.down_conv)
    layout.load_batch_norm(reader, f"{prefix}backbone.down_dim4.block.1", encoder.down_norm)
    layout.load_conv(reader, f"{prefix}emb_q.conv1", encoder.key_conv1)
    layout.load_batch_norm(reader, f"{prefix}emb_q.bn1", encoder.key_norm)
    layout.load_conv(reader, f"{prefix}emb_q.conv2", encoder.key_conv2)
    if encoder.f3_conv is None:
        raise layout.WeightImportError(
            f"{reader.source}: the released encoder has skip heads {prefix}down_dim3 / "
            "down_dim2; build MaskVOSEncoder with skip_heads=True"
        )
    layout.load_conv(reader, f"{prefix}down_dim3.block.0", encoder.f3_conv)
    layout.load_batch_norm(reader, f"{prefix}down_dim3.block.1", encoder.f3_norm)
    layout.load_conv(reader, f"{prefix}down_dim2.block.0", encoder.f2_conv)
    layout.load_batch_norm(reader, f"{prefix}down_dim2.block.1", encoder.f2_norm)


def load_res_block(reader: layout.StateDictReader, prefix: str, block: mask_model.ResBlock) -> None:
    """A released ResBlock (conv1, conv2, optional downsample) -> `mask_model.ResBlock`."""
    layout.load_conv(reader, f"{prefix}.conv1", block.conv1)
    layout.load_conv(reader, f"{prefix}.conv2", block.conv2)
    if block.shortcut is not None:
        layout.load_conv(reader, f"{prefix}.downsample", block.shortcut)
    elif f"{prefix}.downsample.weight" in reader:
        raise layout.WeightImportError(
            f"{reader.source}: tensor {prefix + '.downsample.weight'!r} exists but the vosjax "
            "ResBlock has no projection shortcut (its in and out channels are equal)"
        )


def load_value_encoder(
    reader: layout.StateDictReader, prefix: str, value_encoder: mask_model.FrameMaskEncoder
) -> None:
    """The released `Net2` (mask_encoder: backbone + down_dim + fuser) under `prefix` -> V."""
    resnet_weights.load_resnet(reader, f"{prefix}backbone.", value_encoder.backbone)
    layout.load_conv(reader, f"{prefix}backbone.down_dim", value_encoder.project)
    fuser = value_encoder.fuser
    load_res_block(reader, f"{prefix}fuser.block1", fuser.block1)
    gate = f"{prefix}fuser.attention"
    layout.load_linear(reader, f"{gate}.ChannelGate.mlp.1", fuser.attention.mlp1)
    layout.load_linear(reader, f"{gate}.ChannelGate.mlp.3", fuser.attention.mlp2)
    layout.load_conv(reader, f"{gate}.SpatialGate.spatial.conv", fuser.attention.spatial)
    load_res_block(reader, f"{prefix}fuser.block2", fuser.block2)


def load_decoder(
    reader: layout.StateDictReader, prefix: str, decoder: mask_model.MaskDecoder
) -> None:
    """The released `Decoder` under `prefix` -> D."""
    load_res_block(reader, f"{prefix}compress", decoder.compress)
    layout.load_conv(reader, f"{prefix}up_16_8.skip_conv", decoder.skip3)
    load_res_block(reader, f"{prefix}up_16_8.out_conv", decoder.block3)
    layout.load_conv(reader, f"{prefix}up_8_4.skip_conv", decoder.skip2)
    load_res_block(reader, f"{prefix}up_8_4.out_conv", decoder.block2)
    layout.load_conv(reader, f"{prefix}pred", decoder.pred)


def import_released(
    model: Any, state_dict: Mapping[str, np.ndarray], source: str = "state_dict"
) -> None:
    """Fills, in place, the model of `MaskVOS.build_model` from a released FrameworkMask.

    Args:
      model: a `vosjax.methods.maskvos.method.MaskVOSModel` (`encoder`, `head`) built with the
        released structure (configs/maskvos/r50.py: ResNet-50 for E and V).
      state_dict: the released model's state_dict (`module.` prefixes already stripped).
      source: what the tensors came from, for error messages.

    Raises:
      layout.WeightImportError: a missing, unexpected or wrongly shaped tensor (named, with
        both shapes).
    """
    reader = layout.StateDictReader(state_dict, source)
    for prefix in UNUSED:
        reader.skip(prefix)
    load_encoder(reader, "fast_net.", model.encoder)
    load_value_encoder(reader, "mask_encoder.", model.head.value_encoder)
    load_decoder(reader, "decoder.", model.head.decoder)
    reader.finish()
