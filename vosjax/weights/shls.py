"""The released SHLS `My_Net` state_dict -> `vosjax.methods.shls.model.SHLSModel`.

Names (IvisionLab/SHLS, Models/get_model_LT.py) and where they go:
- `spx_embedding.feat_extractor.{conv1.0, conv1.1}` -> backbone.conv1, backbone.norm1;
  `...layerL.i.left.{0,1,3,4}` -> layers[L-1][i].{conv1, norm1, conv2, norm2};
  `...layerL.i.shortcut.{0,1}` -> layers[L-1][i].downsample.{conv, norm};
- `sf_head_L1.{0,1}`, `sf_head_L4.{0,1}` -> superfeatures.{l1,l4}_proj (Linear) and
  .{l1,l4}_norm (the scalar `BatchNorm1d(1)`); `sf_conv_1x1.0` -> superfeatures.fuse;
- `mem_select.{convAM, convL2, gate}` -> mem_select.{conv_am, conv_l2, gate};
- `segmenter.layer2.i.{left,shortcut}` -> segmenter.layer2[i] (as the backbone's blocks),
  `segmenter.convFM` -> conv_fm, `segmenter.res_L4.convK.{0,1}` -> res_l4.convK.{conv, norm},
  `segmenter.RFk.{convFS, ResFS, ResMM}` -> rfk.{conv_fs, res_fs, res_mm}, `segmenter.pred`.
Every tensor is taken (num_batches_tracked dropped); a missing, extra or misshaped tensor is a
`layout.WeightImportError` naming it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from vosjax.methods.shls import model as model_lib
from vosjax.methods.shls import segmenter_net
from vosjax.models import resnet
from vosjax.weights import layout


def _basic_block(reader: layout.StateDictReader, prefix: str, block: resnet.BasicBlock) -> None:
    """The released ResidualBlock (left: conv, BN, ReLU, conv, BN; shortcut: conv, BN)."""
    layout.load_conv(reader, f"{prefix}.left.0", block.conv1)
    layout.load_batch_norm(reader, f"{prefix}.left.1", block.norm1)
    layout.load_conv(reader, f"{prefix}.left.3", block.conv2)
    layout.load_batch_norm(reader, f"{prefix}.left.4", block.norm2)
    if block.downsample is not None:
        layout.load_conv(reader, f"{prefix}.shortcut.0", block.downsample.conv)
        layout.load_batch_norm(reader, f"{prefix}.shortcut.1", block.downsample.norm)
    elif reader.names(f"{prefix}.shortcut."):
        raise layout.WeightImportError(
            f"{reader.source}: {prefix}.shortcut exists but the vosjax block has no projection"
        )


def _res_block(reader: layout.StateDictReader, prefix: str, block: segmenter_net.ResBlock):
    for name in ("conv1", "conv2"):
        part = getattr(block, name)
        layout.load_conv(reader, f"{prefix}.{name}.0", part.conv)
        layout.load_batch_norm(reader, f"{prefix}.{name}.1", part.norm)


def _refine(reader: layout.StateDictReader, prefix: str, refine: segmenter_net.Refine) -> None:
    layout.load_conv(reader, f"{prefix}.convFS", refine.conv_fs)
    _res_block(reader, f"{prefix}.ResFS", refine.res_fs)
    _res_block(reader, f"{prefix}.ResMM", refine.res_mm)


def import_released(
    model: model_lib.SHLSModel, state_dict: Mapping[str, np.ndarray], source: str = "state_dict"
) -> None:
    """Fills `model` in place from the released My_Net state_dict (no `module.` prefix).

    Raises:
      layout.WeightImportError: a tensor is missing, left over or of the wrong shape.
    """
    reader = layout.StateDictReader(state_dict, source)
    net = model.backbone
    pre = "spx_embedding.feat_extractor"
    layout.load_conv(reader, f"{pre}.conv1.0", net.conv1)
    layout.load_batch_norm(reader, f"{pre}.conv1.1", net.norm1)
    for i, layer in enumerate(net.layers):
        for j, block in enumerate(layer):
            _basic_block(reader, f"{pre}.layer{i + 1}.{j}", block)

    head = model.superfeatures
    layout.load_linear(reader, "sf_head_L1.0", head.l1_proj)
    layout.load_batch_norm(reader, "sf_head_L1.1", head.l1_norm)
    layout.load_linear(reader, "sf_head_L4.0", head.l4_proj)
    layout.load_batch_norm(reader, "sf_head_L4.1", head.l4_norm)
    layout.load_conv(reader, "sf_conv_1x1.0", head.fuse)

    gate = model.mem_select
    layout.load_conv(reader, "mem_select.convAM", gate.conv_am)
    layout.load_conv(reader, "mem_select.convL2", gate.conv_l2)
    layout.load_conv(reader, "mem_select.gate", gate.gate)

    seg = model.segmenter
    for j, block in enumerate(seg.layer2):
        _basic_block(reader, f"segmenter.layer2.{j}", block)
    layout.load_conv(reader, "segmenter.convFM", seg.conv_fm)
    _res_block(reader, "segmenter.res_L4", seg.res_l4)
    _refine(reader, "segmenter.RF2", seg.rf2)
    _refine(reader, "segmenter.RF1", seg.rf1)
    layout.load_conv(reader, "segmenter.pred", seg.pred)
    reader.finish()
