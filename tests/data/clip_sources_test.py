"""Tests of the training video sources: folders, video files, tfds, dispatch."""

import pathlib
import pickle

import cv2
import numpy as np
import pytest
from PIL import Image

from vosjax.data import clip_sampling, clip_sources, image_io

H, W = 12, 16


def _frame(video: int, index: int) -> np.ndarray:
    """Red = 10 * video, green = 10 * index, blue = 50."""
    frame = np.zeros((H, W, 3), np.uint8)
    frame[..., 0], frame[..., 1], frame[..., 2] = 10 * video, 10 * index, 50
    return frame


def _write_folder(folder: pathlib.Path, video: int, count: int, ext: str = ".png") -> None:
    folder.mkdir(parents=True)
    for i in range(count):
        Image.fromarray(_frame(video, i)).save(folder / f"{i:05d}{ext}")


def _fake_davis(root: pathlib.Path, lengths: dict[str, int]) -> pathlib.Path:
    for v, (name, count) in enumerate(lengths.items()):
        _write_folder(root / "JPEGImages" / "480p" / name, v, count)
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "train.txt").write_text("\n".join(lengths) + "\n")
    return root


def test_davis_frames_reads_only_the_requested_frames(tmp_path):
    source = clip_sources.davis_frames(_fake_davis(tmp_path, {"a": 5, "b": 9}))
    assert len(source) == 2 and source.name(1) == "b" and source.num_frames(1) == 9
    frames = source.read_frames(1, [7, 2, 7])
    np.testing.assert_array_equal(frames, np.stack([_frame(1, 7), _frame(1, 2), _frame(1, 7)]))
    clip, indices = source.sample_clip(
        0, clip_sampling.ClipSampler(3, frame_gap=2), np.random.default_rng(0)
    )
    np.testing.assert_array_equal(indices, [0, 2, 4])
    np.testing.assert_array_equal(clip[:, 0, 0, 1], 10 * indices)
    whole = source[-1]
    assert whole["name"] == "b" and whole["video"].shape == (9, H, W, 3)
    restored = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(restored.read_frames(0, [4]), source.read_frames(0, [4]))


def test_davis_frames_on_real_davis2016(davis2016_root):
    source = clip_sources.davis_frames(davis2016_root, "2016/train", "240p")
    assert len(source) == 30 and source.name(0) == "bear" and source.num_frames(0) == 82
    frames = source.read_frames(0, [81, 0])
    folder = davis2016_root / "JPEGImages" / "240p" / "bear"
    np.testing.assert_array_equal(frames[0], image_io.read_frame(folder / "00081.jpg"))
    np.testing.assert_array_equal(frames[1], image_io.read_frame(folder / "00000.jpg"))


def test_youtube_vos_frames(tmp_path):
    for v, name in enumerate(["vid_b", "vid_a"]):
        _write_folder(tmp_path / "train" / "JPEGImages" / name, v, 3 + v, ext=".jpg")
    source = clip_sources.youtube_vos_frames(tmp_path)
    assert [source.name(i) for i in range(2)] == ["vid_a", "vid_b"]
    assert source.num_frames(0) == 4
    frame = source.read_frames(0, [3])[0].astype(int)
    assert np.abs(frame - _frame(1, 3)).max() <= 3  # JPEG
    with pytest.raises(image_io.DataError, match="YouTube-VOS frame folder not found"):
        clip_sources.youtube_vos_frames(tmp_path, split="valid")


def _write_mp4(path: pathlib.Path, video: int, count: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (W * 4, H * 4))
    assert writer.isOpened()
    for i in range(count):
        big = cv2.resize(_frame(video, i), (W * 4, H * 4), interpolation=cv2.INTER_NEAREST)
        writer.write(cv2.cvtColor(big, cv2.COLOR_RGB2BGR))
    writer.release()


def test_video_file_source_decodes_sampled_frames(tmp_path):
    _write_mp4(tmp_path / "class_b" / "x.mp4", 2, 6)
    _write_mp4(tmp_path / "class_a" / "y.mp4", 1, 10)
    (tmp_path / "notes.txt").write_text("not a video")
    source = clip_sources.VideoFileSource(tmp_path)
    assert len(source) == 2 and source.name(0) == "class_a/y" and source.num_frames(0) == 10
    clip, indices = source.sample_clip(
        0, clip_sampling.ClipSampler(3, frame_gap=4), np.random.default_rng(0)
    )
    np.testing.assert_array_equal(np.diff(indices), [4, 4])
    assert 0 <= indices[0] <= 1
    expected = np.asarray([[10, 10 * i, 50] for i in indices])  # lossy codec: +-a few levels
    np.testing.assert_allclose(clip.mean(axis=(1, 2)), expected, atol=4)
    restored = pickle.loads(pickle.dumps(source))
    assert restored.read_frames(1, [5]).shape == (1, H * 4, W * 4, 3)


def test_video_file_source_corrupt_file_raises_data_error(tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x01" * 200)
    source = clip_sources.VideoFileSource(tmp_path)
    with pytest.raises(image_io.DataError, match="bad.mp4"):
        source.read_frames(0, [0])


def test_synthetic_tfds_source_matches_the_decoded_dataset(tmp_path_factory):
    from vosjax.data.synthetic import tfds_builder

    data_dir = tmp_path_factory.getbasetemp() / "tfds"
    source = clip_sources.open_source(None, synthetic_config="tiny", data_dir=data_dir)
    decoded = tfds_builder.load_source("tiny", "train", data_dir=data_dir)
    assert len(source) == len(decoded) == 4
    example = tfds_builder.to_arrays(decoded[2])
    assert source.name(2) == example["id"] and source.num_frames(2) == 8
    np.testing.assert_array_equal(source.read_frames(2, [6, 1]), example["video"][[6, 1]])
    restored = pickle.loads(pickle.dumps(source))
    np.testing.assert_array_equal(restored.read_frames(3, [0]), source.read_frames(3, [0]))


def test_open_source_dispatch(tmp_path):
    davis_root = _fake_davis(tmp_path / "davis", {"a": 2})
    assert isinstance(clip_sources.open_source(str(davis_root)), clip_sources.FrameFolderSource)
    _write_folder(tmp_path / "ytvos" / "train" / "JPEGImages" / "v", 0, 2)
    ytvos = clip_sources.open_source(str(tmp_path / "ytvos"))
    assert ytvos.names == ("v",)
    _write_mp4(tmp_path / "videos" / "a.mp4", 0, 2)
    videos = clip_sources.open_source(str(tmp_path / "videos"))
    assert isinstance(videos, clip_sources.VideoFileSource)
    with pytest.raises(image_io.DataError, match="training data not found"):
        clip_sources.open_source(str(tmp_path / "missing"))
    with pytest.raises(image_io.DataError, match="holds no video file"):
        clip_sources.open_source(str(tmp_path / "ytvos" / "train" / "JPEGImages" / "v"))


def test_truncated_jpeg_raises_data_error_naming_it(tmp_path):
    _write_folder(tmp_path / "v", 0, 3, ext=".jpg")
    path = tmp_path / "v" / "00001.jpg"
    path.write_bytes(path.read_bytes()[:200])
    source = clip_sources.FrameFolderSource([tmp_path / "v"])
    source.read_frames(0, [0, 2])  # the good frames still read
    with pytest.raises(image_io.DataError, match="00001.jpg"):
        source.read_frames(0, [1])


def test_mixed_source_maps_indices_and_weights_parts(tmp_path):
    a = clip_sources.davis_frames(_fake_davis(tmp_path / "a", {"a0": 2, "a1": 3}), "2017/train")
    _folders(tmp_path, 4)
    b = clip_sources.FrameFolderSource([tmp_path / f"b{i}" for i in range(4)])
    mix = clip_sources.MixedSource([(a, 3), (b, 1)])
    assert len(mix) == 2 * 3 + 4
    assert [mix.name(i) for i in range(len(mix))] == ["a0", "a1"] * 3 + [f"b{i}" for i in range(4)]
    assert mix.num_frames(1) == 3 and mix.num_frames(8) == 1
    # Frames come from the right video: red = 10 * video in _fake_davis / _folders.
    np.testing.assert_array_equal(mix.read_frames(3, [2])[0], _frame(1, 2))
    np.testing.assert_array_equal(mix.read_frames(9, [0])[0], _frame(23, 0))
    sampler = clip_sampling.ClipSampler(num_frames=1)
    frames, _ = mix.sample_clip(7, sampler, np.random.default_rng(0))
    np.testing.assert_array_equal(frames[0], _frame(21, 0))
    assert mix.fractions() == [0.6, 0.4]
    with pytest.raises(IndexError):
        mix.name(10)
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        clip_sources.MixedSource([(a, 0)])
    restored = pickle.loads(pickle.dumps(mix))
    assert restored.name(9) == "b3"


@pytest.mark.parametrize(
    "n, m, fraction, expected",
    [(30, 200, 0.25, [0.75, 0.25]), (30, 200, 0.5, [210 / 410, 200 / 410]), (200, 30, 0.3, None)],
)
def test_mix_with_fraction_repeats_the_smaller_share(n, m, fraction, expected):
    class Sized(clip_sources.VideoSource):
        def __init__(self, count):
            self.count = count

        def __len__(self):
            return self.count

    mix = clip_sources.mix_with_fraction(Sized(n), Sized(m), fraction)
    if expected is not None:
        np.testing.assert_allclose(mix.fractions(), expected)
    assert abs(mix.fractions()[1] - fraction) < 0.03
    with pytest.raises(ValueError, match="mix fraction 1.0"):
        clip_sources.mix_with_fraction(Sized(n), Sized(m), 1.0)


def _folders(root: pathlib.Path, count: int) -> None:
    """Folders b0..b{count-1} of one frame each, video number 20 + i."""
    for i in range(count):
        _write_folder(root / f"b{i}", 20 + i, 1)
