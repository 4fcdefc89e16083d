"""torchvision ResNet state_dict -> `vosjax.models.resnet.ResNet`.

torchvision's names map one to one onto vosjax's tree:

    conv1, bn1                         -> conv1, norm1
    layer{i}.{j}.conv{k}, .bn{k}       -> layers[i-1][j].conv{k}, .norm{k}
    layer{i}.{j}.downsample.{0, 1}     -> layers[i-1][j].downsample.conv, .norm
    fc                                 -> head

Any prefix works (`fast_net.backbone.` for Mask-VOS's encoder). Norms may be nnx.BatchNorm or
FrozenBatchNorm (both take the four BatchNorm tensors); GroupNorm backbones have no torchvision
counterpart. Layers that the vosjax model omits (layer4 of a `num_stages=3` model, fc without a
head) are an error unless the caller names them in `skip`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from vosjax.models import resnet
from vosjax.weights import layout


def load_resnet(
    reader: layout.StateDictReader,
    prefix: str,
    model: resnet.ResNet,
    *,
    skip: Iterable[str] = (),
) -> None:
    """Takes a ResNet's tensors under `prefix` from `reader` into `model` (no `finish()`).

    Args:
      reader: the state_dict being imported (shared with the caller's other modules).
      prefix: name prefix of the ResNet, e.g. '' or 'fast_net.backbone.' (with the dot).
      model: the vosjax ResNet to fill in place.
      skip: torchvision submodule names under `prefix` that the caller leaves out on purpose
        (e.g. 'fc', 'layer4'); their tensors are marked used.

    Raises:
      layout.WeightImportError: a tensor is missing or has the wrong shape, or the model has a
        GroupNorm (no torchvision counterpart).
    """
    for name in skip:
        reader.skip(f"{prefix}{name}.")
    layout.load_conv(reader, f"{prefix}conv1", model.conv1)
    _load_norm(reader, f"{prefix}bn1", model.norm1)
    for i, layer in enumerate(model.layers):
        for j, block in enumerate(layer):
            name = f"{prefix}layer{i + 1}.{j}"
            convs = 3 if isinstance(block, resnet.Bottleneck) else 2
            for k in range(1, convs + 1):
                layout.load_conv(reader, f"{name}.conv{k}", getattr(block, f"conv{k}"))
                _load_norm(reader, f"{name}.bn{k}", getattr(block, f"norm{k}"))
            if block.downsample is not None:
                layout.load_conv(reader, f"{name}.downsample.0", block.downsample.conv)
                _load_norm(reader, f"{name}.downsample.1", block.downsample.norm)
    if model.head is not None:
        layout.load_linear(reader, f"{prefix}fc", model.head)


def _load_norm(reader: layout.StateDictReader, name: str, norm) -> None:
    if isinstance(norm, resnet._GroupNorm):
        raise layout.WeightImportError(
            f"{reader.source}: {name!r} is a BatchNorm, the vosjax ResNet has a GroupNorm there "
            "(build it with norm='batch' or 'frozen_batch')"
        )
    layout.load_batch_norm(reader, name, norm)


def import_torchvision(
    model: resnet.ResNet,
    state_dict: Mapping[str, np.ndarray],
    *,
    prefix: str = "",
    skip: Iterable[str] = (),
    source: str = "state_dict",
) -> None:
    """Fills `model` from a torchvision ResNet state_dict; every tensor must be used.

    Args:
      model: the vosjax ResNet (its depth, stages and head must match the state_dict).
      state_dict: torch name -> array; tensors outside `prefix` are an error too.
      prefix: the ResNet's name prefix in `state_dict` (with the trailing dot).
      skip: torchvision submodules to leave out on purpose, e.g. ('fc',) for a model built
        without a head, ('layer4', 'fc') for a `num_stages=3` model.
      source: what the state_dict came from, for error messages.

    Raises:
      layout.WeightImportError: a missing, unexpected or wrongly shaped tensor (named).
    """
    reader = layout.StateDictReader(state_dict, source)
    load_resnet(reader, prefix, model, skip=skip)
    reader.finish()
