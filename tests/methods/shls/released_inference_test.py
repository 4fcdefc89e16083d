"""The released SHLS test loop as a vosjax segmenter (config.eval.protocol='released')."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.shls import davis2016_frames
from vosjax.data import image_io
from vosjax.data import sequence as sequence_lib
from vosjax.methods.shls import method, released_inference


def _video(tmp_path, starts):
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (32, 44, 3), dtype=np.uint8)
    frame[4:20, 6:22] = (250, 30, 30)
    first = np.zeros((32, 44), np.uint8)
    first[6:18, 8:20] = 1
    first[22:30, 26:42] = 2
    image_io.write_mask(tmp_path / "00000.png", first)
    image_io.write_mask(tmp_path / "00001.png", first)
    sequence = sequence_lib.VideoSequence(
        name="static",
        frame_names=("00000", "00001", "00002"),
        image_size=(32, 44),
        read_frame_fn=lambda i: frame,
        mask_paths={0: tmp_path / "00000.png", 1: tmp_path / "00001.png"},
        output_frames=(0, 1, 2),
        object_starts=starts,
    )
    return sequence, first


def _segmenter():
    config = davis2016_frames.get_config("smoke")
    config.eval.protocol = "released"
    shls = method.SHLS(config)
    model = shls.build_model(config, nnx.Rngs(0))
    fuse = model.superfeatures.fuse  # live superfeatures (see method_test)
    fuse.kernel[...] = jnp.abs(fuse.kernel[...]) + 0.1
    fuse.bias[...] = jnp.zeros_like(fuse.bias[...])
    segmenter = shls.make_segmenter(model)
    assert isinstance(segmenter, released_inference.ReleasedSegmenter)
    return segmenter


def test_released_loop_returns_the_given_mask_then_full_size_masks(tmp_path):
    sequence, first = _video(tmp_path, {1: 0, 2: 0})
    masks = list(_segmenter().segment(sequence))
    assert len(masks) == 3
    np.testing.assert_array_equal(masks[0], first)
    for mask in masks[1:]:
        assert mask.shape == (32, 44) and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 1, 2}


def test_released_loop_needs_every_object_on_the_first_frame(tmp_path):
    sequence, _ = _video(tmp_path, {1: 0, 2: 1})
    with pytest.raises(ValueError, match="first frame"):
        list(_segmenter().segment(sequence))
