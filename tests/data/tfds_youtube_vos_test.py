"""Tests of the youtube_vos_frames builder on a fake layout."""

import pathlib

import numpy as np
import pytest
from PIL import Image

from vosjax.data import clip_sources, image_io, tfds_youtube_vos


def _write_video(folder: pathlib.Path, count: int, seed: int) -> None:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        pixels = rng.integers(0, 256, (8, 10, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{5 * i:05d}.jpg")


def test_builder_stores_every_video_and_frame(tmp_path):
    root = tmp_path / "ytvos"
    _write_video(root / "train" / "JPEGImages" / "zebra", 3, 0)
    _write_video(root / "train" / "JPEGImages" / "apple", 4, 1)
    _write_video(root / "valid" / "JPEGImages" / "cat", 2, 2)
    builder = tfds_youtube_vos.build(root, tmp_path / "tfds")
    assert builder.info.splits["train"].num_examples == 2
    assert builder.info.splits["validation"].num_examples == 1
    source = clip_sources.TfdsVideoSource(
        f"{tfds_youtube_vos.NAME}/every_5th", "train", tmp_path / "tfds", frames_key="frames"
    )
    assert [source.name(i) for i in range(2)] == ["apple", "zebra"]
    assert [source.num_frames(i) for i in range(2)] == [4, 3]
    expected = image_io.read_frame(root / "train" / "JPEGImages" / "apple" / "00015.jpg")
    np.testing.assert_array_equal(source.read_frames(0, [3])[0], expected)


def test_builder_without_frames_names_the_expected_folder(tmp_path):
    (tmp_path / "ytvos" / "valid_all_frames").mkdir(parents=True)  # not empty, no train/
    with pytest.raises(image_io.DataError, match="train/JPEGImages"):
        tfds_youtube_vos.build(tmp_path / "ytvos", tmp_path / "tfds")
