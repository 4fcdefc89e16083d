"""Tests of the davis2017_frames builder on a fake layout and on real DAVIS-2016 sequences."""

import pathlib

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from vosjax.data import clip_sources, image_io, tfds_davis


def _fake_davis(root: pathlib.Path) -> pathlib.Path:
    """Sequences 'a' (3 frames) in train and 'b' (2 frames) in val, 10x12, 2 objects."""
    rng = np.random.default_rng(0)
    palette = image_io.davis_palette().ravel().tolist()
    for name, count in (("a", 3), ("b", 2)):
        for i in range(count):
            frames = root / "JPEGImages" / "480p" / name
            masks = root / "Annotations" / "480p" / name
            frames.mkdir(parents=True, exist_ok=True)
            masks.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(frames / f"{i:05d}.jpg")
            mask = Image.fromarray(np.full((10, 12), i % 3, np.uint8), mode="P")
            mask.putpalette(palette)
            mask.save(masks / f"{i:05d}.png")
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "train.txt").write_text("a\n")
    (root / "ImageSets" / "2017" / "val.txt").write_text("b\n")
    return root


def test_builder_stores_original_jpegs_and_masks(tmp_path):
    root = _fake_davis(tmp_path / "davis")
    data_dir = tmp_path / "tfds"
    builder = tfds_davis.build(root, data_dir)
    assert builder.info.splits["train"].num_examples == 1
    assert builder.info.splits["validation"].num_examples == 1

    decoded = tfds.data_source(f"{tfds_davis.NAME}/480p", split="train", data_dir=data_dir)
    example = decoded[0]
    assert example["id"] in ("a", b"a")
    np.testing.assert_array_equal(example["mask_frames"], [0, 1, 2])
    for i in range(3):
        np.testing.assert_array_equal(example["masks"][i][..., 0], np.full((10, 12), i % 3))

    source = clip_sources.TfdsVideoSource(
        f"{tfds_davis.NAME}/480p", "validation", data_dir, frames_key="frames"
    )
    assert len(source) == 1 and source.name(0) == "b" and source.num_frames(0) == 2
    frame = image_io.read_frame(root / "JPEGImages" / "480p" / "b" / "00001.jpg")
    np.testing.assert_array_equal(source.read_frames(0, [1])[0], frame)  # same JPEG bytes


def test_builder_without_split_files_names_the_folder(tmp_path):
    (tmp_path / "davis" / "JPEGImages").mkdir(parents=True)
    with pytest.raises(image_io.DataError, match="ImageSets"):
        tfds_davis.build(tmp_path / "davis", tmp_path / "tfds")


def test_builder_on_two_real_davis2016_sequences(davis2016_root, tmp_path):
    config = tfds_davis.DavisFramesConfig(
        name="test_2016_240p", resolution="240p", year="2016", sequences=("bear", "boat")
    )
    builder = tfds_davis.build(davis2016_root, tmp_path, config)
    assert builder.info.splits["train"].num_examples == 2
    source = clip_sources.TfdsVideoSource(
        f"{tfds_davis.NAME}/test_2016_240p", "train", tmp_path, frames_key="frames"
    )
    assert [source.name(i) for i in range(2)] == ["bear", "boat"]
    assert source.num_frames(0) == 82
    folder = davis2016_root / "JPEGImages" / "240p" / "boat"
    np.testing.assert_array_equal(
        source.read_frames(1, [5])[0], image_io.read_frame(folder / "00005.jpg")
    )
    decoded = tfds.data_source(
        f"{tfds_davis.NAME}/test_2016_240p", split="train", data_dir=tmp_path
    )
    mask = image_io.read_mask(davis2016_root / "Annotations" / "240p" / "bear" / "00010.png")
    np.testing.assert_array_equal(decoded[0]["masks"][10][..., 0], mask)
    assert set(np.unique(decoded[0]["masks"][10]).tolist()) == {0, 1}
