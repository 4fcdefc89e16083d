"""Tests for vosjax.data.user_video: image folders and lazily decoded video files."""

import pathlib
import pickle

import cv2
import numpy as np
import pytest
from PIL import Image

from vosjax.data import image_io, user_video

H, W = 48, 64
NUM_FRAMES = 12


def _red(i: int) -> int:
    return 20 * i


def _write_video(path: pathlib.Path, fourcc: str, frames: int = NUM_FRAMES) -> pathlib.Path:
    """Frame i has red = 20 i, green = 100, blue = 0 (written as BGR)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10, (W, H))
    assert writer.isOpened()
    for i in range(frames):
        bgr = np.zeros((H, W, 3), np.uint8)
        bgr[..., 2], bgr[..., 1] = _red(i), 100
        writer.write(bgr)
    writer.release()
    return path


def _write_mask(path: pathlib.Path, size: tuple[int, int] = (H, W)) -> pathlib.Path:
    mask = np.zeros(size, np.uint8)
    mask[10:20, 10:30] = 1
    mask[30:40, 40:50] = 2
    image_io.write_mask(path, mask)
    return path


def _assert_frame(frame: np.ndarray, i: int) -> None:
    assert frame.shape == (H, W, 3) and frame.dtype == np.uint8
    # mp4v is lossy: a few grey levels of error, far less than the 20 between frames.
    np.testing.assert_allclose(frame.reshape(-1, 3).mean(0), (_red(i), 100, 0), atol=5)


@pytest.fixture(scope="module")
def mp4(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    return _write_video(tmp_path_factory.mktemp("video") / "clip.mp4", "mp4v")


def test_mp4_is_decoded_lazily_and_in_order(mp4, tmp_path):
    mask = _write_mask(tmp_path / "first.png")
    seq = user_video.load_user_video(mp4, mask)
    assert seq.name == "clip" and len(seq) == NUM_FRAMES
    assert seq.frame_names[:3] == ("00000", "00001", "00002")
    assert seq.image_size == (H, W)
    assert seq.output_frames == tuple(range(NUM_FRAMES)) and seq.annotated_frames == (0,)
    assert seq.start_frames == {1: 0, 2: 0}
    reader = seq.read_frame_fn.__self__
    assert (reader.decoded, reader.opens) == (1, 1)  # only frame 0 at load
    for i in range(NUM_FRAMES):
        _assert_frame(seq.read_frame(i), i)
        _assert_frame(seq.read_frame(0), 0)  # the first frame stays cached
    assert (reader.decoded, reader.opens) == (NUM_FRAMES, 1)  # each frame decoded once
    assert len(reader._recent) <= reader.cache_size


def test_mp4_backward_seek_reopens(mp4, tmp_path):
    seq = user_video.load_user_video(mp4, _write_mask(tmp_path / "m.png"), name="mine")
    assert seq.name == "mine"
    reader = seq.read_frame_fn.__self__
    _assert_frame(seq.read_frame(9), 9)
    _assert_frame(seq.read_frame(8), 8)  # behind the decoder: re-open, decode 0..8 again
    assert reader.opens == 2 and reader.decoded == 1 + 9 + 9
    _assert_frame(seq.read_frame(9), 9)  # cached
    assert reader.opens == 2
    with pytest.raises(IndexError, match="frame 12 of a 12-frame video"):
        seq.read_frame(NUM_FRAMES)
    clone = pickle.loads(pickle.dumps(reader))
    _assert_frame(clone.read(5), 5)
    _assert_frame(clone.read(0), 0)


def test_avi_frames_are_counted(tmp_path):
    path = _write_video(tmp_path / "clip.avi", "MJPG", frames=7)
    seq = user_video.load_user_video(path, _write_mask(tmp_path / "m.png"))
    assert len(seq) == 7
    reader = seq.read_frame_fn.__self__
    assert reader.opens == 2  # avi headers may estimate the count: counted, then re-opened
    _assert_frame(seq.read_frame(6), 6)


def test_image_folder_in_natural_order(tmp_path):
    folder = tmp_path / "shots"
    folder.mkdir()
    for i in (1, 2, 10, 11, 3):
        Image.fromarray(np.full((H, W, 3), 10 * i, np.uint8)).save(folder / f"frame_{i}.png")
    (folder / "notes.txt").write_text("not a frame")
    mask = _write_mask(folder / "mask.png")  # the mask may sit among the frames
    seq = user_video.load_user_video(folder, mask)
    assert seq.name == "shots"
    assert seq.frame_names == ("frame_1", "frame_2", "frame_3", "frame_10", "frame_11")
    assert [int(seq.read_frame(i)[0, 0, 0]) for i in range(len(seq))] == [10, 20, 30, 100, 110]
    assert seq.mask_paths == {0: mask}
    assert int(seq.read_mask(0).max()) == 2


def test_natural_key():
    names = ["f10.jpg", "F2.jpg", "f1.jpg", "f1b.jpg", "f01.jpg"]
    assert sorted(names, key=user_video.natural_key)[:2] == ["f1.jpg", "f01.jpg"]
    assert sorted(names, key=user_video.natural_key)[2:] == ["f1b.jpg", "F2.jpg", "f10.jpg"]


# Bad input.


def test_missing_frames_and_mask(tmp_path, mp4):
    mask = _write_mask(tmp_path / "m.png")
    with pytest.raises(image_io.DataError) as info:
        user_video.load_user_video(tmp_path / "gone.mp4", mask)
    assert str(tmp_path / "gone.mp4") in str(info.value) and "frames not found" in str(info.value)
    with pytest.raises(image_io.DataError) as info:
        user_video.load_user_video(mp4, tmp_path / "nomask.png")
    assert str(tmp_path / "nomask.png") in str(info.value) and "mask not found" in str(info.value)


def test_folder_without_frames(tmp_path):
    folder = tmp_path / "empty"
    folder.mkdir()
    (folder / "readme.txt").write_text("")
    with pytest.raises(image_io.DataError, match="no frames, expected image files") as info:
        user_video.load_user_video(folder, _write_mask(tmp_path / "m.png"))
    assert str(folder) in str(info.value)


def test_unreadable_video(tmp_path):
    path = tmp_path / "noise.mp4"
    path.write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(image_io.DataError, match="unreadable video") as info:
        user_video.load_user_video(path, _write_mask(tmp_path / "m.png"))
    assert str(path) in str(info.value)


def test_video_without_frames(tmp_path):
    path = tmp_path / "zero.mp4"
    cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10, (W, H)).release()
    with pytest.raises(image_io.DataError, match="unreadable video") as info:
        user_video.load_user_video(path, _write_mask(tmp_path / "m.png"))
    assert str(path) in str(info.value)


def test_not_a_video_file(tmp_path):
    path = tmp_path / "clip.txt"
    path.write_text("hello")
    with pytest.raises(image_io.DataError, match="expected a folder of images or a video file"):
        user_video.load_user_video(path, _write_mask(tmp_path / "m.png"))


def test_mask_size_differs(mp4, tmp_path):
    mask = _write_mask(tmp_path / "m.png", size=(H, W + 1))
    with pytest.raises(image_io.DataError) as info:
        user_video.load_user_video(mp4, mask)
    message = str(info.value)
    assert str(mask) in message and str(mp4) in message
    assert f"({H}, {W + 1})" in message and f"({H}, {W})" in message


def test_mask_size_differs_folder(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(folder / "a.jpg")
    mask = _write_mask(tmp_path / "m.png", size=(W, H))
    with pytest.raises(image_io.DataError) as info:
        user_video.load_user_video(folder, mask)
    assert str(folder / "a.jpg") in str(info.value) and f"({W}, {H})" in str(info.value)


def test_empty_first_mask(mp4, tmp_path):
    path = tmp_path / "empty.png"
    image_io.write_mask(path, np.zeros((H, W), np.uint8))
    with pytest.raises(image_io.DataError, match="holds no object") as info:
        user_video.load_user_video(mp4, path)
    assert str(path) in str(info.value)


def test_binary_first_mask(mp4, tmp_path):
    path = tmp_path / "binary.png"
    Image.fromarray(np.where(np.arange(W) < 5, 255, 0).astype(np.uint8)[None].repeat(H, 0)).save(
        path
    )
    seq = user_video.load_user_video(mp4, path)
    assert seq.start_frames == {1: 0} and int(seq.read_mask(0).sum()) == 5 * H


# Masks beside the frames, later masks (issue 31 item 6, issue 32).


def _folder(tmp_path: pathlib.Path, count: int = 4) -> pathlib.Path:
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(count):
        Image.fromarray(np.full((H, W, 3), 10 * i, np.uint8)).save(folder / f"{i:05d}.jpg")
    return folder


def test_files_sharing_a_stem_are_an_error(tmp_path):
    folder = _folder(tmp_path)
    for i in range(4):  # masks beside their frames, as a DAVIS user might put them
        _write_mask(folder / f"{i:05d}.png")
    with pytest.raises(image_io.DataError) as info:
        user_video.load_user_video(folder, folder / "00000.png")
    message = str(info.value)
    assert str(folder) in message and "3 frame name(s) belong to more than one file" in message
    assert "00001.jpg + 00001.png" in message and "move them out of the frames folder" in message


def test_later_masks_by_index_and_name(tmp_path):
    folder = _folder(tmp_path, count=6)
    first = _write_mask(tmp_path / "first.png")  # objects 1 and 2
    later = np.zeros((H, W), np.uint8)
    later[0:5, 0:5] = 1  # object 1 again: given earlier, left out here
    later[40:45, 0:9] = 3
    image_io.write_mask(tmp_path / "later.png", later)
    binary = tmp_path / "binary.png"
    Image.fromarray(np.where(np.arange(W) < 4, 255, 0).astype(np.uint8)[None].repeat(H, 0)).save(
        binary
    )
    seq = user_video.load_user_video(
        folder, {"00000": first, 2: tmp_path / "later.png", "00004": binary}
    )
    assert seq.start_frames == {1: 0, 2: 0, 3: 2, 4: 4}  # the binary mask: the next free id
    assert seq.annotated_frames == (0, 2, 4)
    np.testing.assert_array_equal(seq.read_mask(2), np.where(later == 3, 3, 0))
    assert int((seq.read_mask(4) == 4).sum()) == 4 * H and set(np.unique(seq.read_mask(4))) == {
        0,
        4,
    }
    small = seq.downsized(32)
    assert small.image_size == (24, 32) and small.read_frame(5).shape == (24, 32, 3)
    assert small.read_mask(0).shape == (24, 32) and small.start_frames == seq.start_frames
    assert seq.downsized(64) is seq


def test_bad_later_masks(tmp_path):
    folder = _folder(tmp_path)
    first = _write_mask(tmp_path / "first.png")
    with pytest.raises(image_io.DataError, match="given for frame 4, but") as info:
        user_video.load_user_video(folder, {0: first, 4: first})
    assert str(first) in str(info.value) and "0..3" in str(info.value)
    with pytest.raises(image_io.DataError, match="given for frame x7, but"):
        user_video.load_user_video(folder, {0: first, "x7": first})
    other = _write_mask(tmp_path / "other.png")
    with pytest.raises(image_io.DataError, match="second mask for frame 00000") as info:
        user_video.load_user_video(folder, {0: first, "00000": other})
    assert str(first) in str(info.value) and str(other) in str(info.value)
    with pytest.raises(image_io.DataError, match="holds no new object") as info:
        user_video.load_user_video(folder, {0: first, 2: other})  # ids 1 and 2 again
    assert str(other) in str(info.value) and "start on frame(s) ['00000']" in str(info.value)
