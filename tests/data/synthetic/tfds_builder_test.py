"""Tests of the `vosjax_synthetic` tfds builder (config `tiny`, built into a temporary dir)."""

import pathlib

import numpy as np
import pytest

from vosjax.data.synthetic import generator, tfds_builder


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("tfds")
    tfds_builder.load_source("tiny", "validation", path)  # builds both splits once
    return path


def _expected(seed: int) -> generator.SyntheticVideo:
    return generator.generate_video(
        seed, num_frames=8, height=64, width=64, config=generator.level_config("medium")
    )


def test_splits_have_the_configured_sizes(data_dir):
    assert len(tfds_builder.load_source("tiny", "train", data_dir)) == 4
    assert len(tfds_builder.load_source("tiny", "validation", data_dir)) == 2
    files = sorted(p.name for p in (data_dir / "vosjax_synthetic" / "tiny").rglob("*array_record*"))
    assert files and all("array_record" in name for name in files)


def test_validation_examples_equal_generate_video(data_dir):
    source = tfds_builder.load_source("tiny", "validation", data_dir)
    for index in (1, 0):  # random access, in any order
        example = tfds_builder.to_arrays(source[index])
        assert example["id"] == f"synth-val-{index:03d}"
        assert example["seed"] == generator.split_seed(0, "validation", index)
        video = _expected(example["seed"])
        assert example["video"].shape == (8, 64, 64, 3) and example["video"].dtype == np.uint8
        np.testing.assert_array_equal(example["video"], video.frames)
        np.testing.assert_array_equal(example["masks"], video.masks)
        assert example["num_objects"] == video.num_objects


def test_train_examples_have_frames_and_no_masks(data_dir):
    source = tfds_builder.load_source("tiny", "train", data_dir)
    example = tfds_builder.to_arrays(source[3])
    assert example["id"] == "synth-train-003"
    assert example["seed"] == generator.split_seed(0, "train", 3)
    np.testing.assert_array_equal(example["video"], _expected(example["seed"]).frames)
    assert example["masks"].shape == (0, 64, 64)
    assert example["num_objects"] == 0


def test_unknown_config_is_refused(tmp_path):
    with pytest.raises(ValueError, match="huge"):
        tfds_builder.load_source("huge", "train", tmp_path)
