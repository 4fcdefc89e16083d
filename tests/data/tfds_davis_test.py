"""Tests of the davis2017_frames builder on a fake layout and on real DAVIS-2016 sequences."""

import pathlib
import pickle
import subprocess
import sys
import textwrap

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


_SAMPLE_WITHOUT_IMPORTS = textwrap.dedent(
    """
    import builtins, pickle, sys
    source = pickle.loads(open(sys.argv[1], "rb").read())  # as a grain worker receives it
    imported = []
    real_import = builtins.__import__
    def recording_import(name, *args, **kwargs):
        imported.append(name)
        return real_import(name, *args, **kwargs)
    builtins.__import__ = recording_import
    frames = source.read_frames(0, [0, 1])
    builtins.__import__ = real_import
    tfds_imports = [n for n in imported if n.startswith("tensorflow_datasets")]
    print(frames.shape, tfds_imports)
    """
)


def test_unpickled_source_reads_frames_without_importing_tfds(tmp_path):
    # Importing tfds swaps builtins.__import__ for a moment (etils' lazy_imports), which breaks
    # relative imports in other threads (PIL decoding frames): a grain worker must not import
    # it while its threads sample clips, so the source is opened when it is unpickled.
    root = _fake_davis(tmp_path / "davis")
    tfds_davis.build(root, tmp_path / "tfds")
    source = clip_sources.TfdsVideoSource(
        f"{tfds_davis.NAME}/480p", "train", tmp_path / "tfds", frames_key="frames"
    )
    (tmp_path / "source.pkl").write_bytes(pickle.dumps(source))
    repo = pathlib.Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", _SAMPLE_WITHOUT_IMPORTS, str(tmp_path / "source.pkl")],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "(2, 10, 12, 3) []"


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
