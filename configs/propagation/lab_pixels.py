"""Raw-pixel baseline: CIE Lab patches at stride 8, propagated with a reference preset.

Usage:
  python -m vosjax.evaluate --config=configs/propagation/lab_pixels.py --workdir=W
  python -m vosjax.evaluate --config=configs/propagation/lab_pixels.py:crw \
      --config.data.davis_root=../shared/data/DAVIS2016 --config.data.imageset=2016/val --workdir=W

The argument after ':' is a comma-separated list of: a propagation preset (dino, crw, ino;
default dino) and 'smoke' (a tiny synthetic run for tests).

A preset is the released evaluation code's whole protocol, reader and writer included
(`vosjax.ops.propagation`): with `dino` the frames are read at short side 480 with the long side
floored to a multiple of 64 (480 x 854 -> 480 x 832; smaller videos are upscaled), `crw` keeps
the native size (edge-padded to whole patches), `ino` floors the long side to a multiple of 8.
Override fields as usual, e.g. --config.propagation.size_multiple=8
--config.propagation.upsample=frame (vosjax's reader and writer before they followed DINO's).
"""

import ml_collections

from configs.propagation import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    options = common.parse_arg(arg)
    config = common.base_config(preset=options.preset, smoke=options.smoke)
    # mode: 'patch' (the 8x8 patch flattened, 192-d) or 'mean' (the patch's mean colour, 3-d).
    config.features = ml_collections.ConfigDict(
        {"name": "lab_pixels", "stride": 8, "mode": "patch"}
    )
    return config
