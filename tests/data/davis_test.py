"""Tests for vosjax.data.davis (and the VideoSequence it returns) on real and fake layouts."""

import pathlib

import numpy as np
import pytest
from PIL import Image

from vosjax.data import davis, image_io, sequence

VAL_FRAMES = {
    "blackswan": 50,
    "bmx-trees": 80,
    "breakdance": 84,
    "car-shadow": 40,
    "dog": 60,
    "drift-chicane": 52,
    "kite-surf": 50,
    "parkour": 100,
}


def _fake_davis(
    root: pathlib.Path,
    frames: int = 3,
    size: tuple[int, int] = (4, 6),
    masks: tuple[int, ...] = (0, 1, 2),
    imageset: str = "2017/val",
    name: str = "seq",
) -> pathlib.Path:
    """ROOT with one sequence `name` of `frames` JPEGs and indexed masks on frames `masks`."""
    (root / "ImageSets" / imageset).parent.mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / f"{imageset}.txt").write_text(f"{name}\n")
    jpegs = root / "JPEGImages" / "480p" / name
    jpegs.mkdir(parents=True)
    for i in range(frames):
        Image.fromarray(np.full((*size, 3), 40 * i, np.uint8)).save(jpegs / f"{i:05d}.jpg")
    for i in masks:
        mask = np.zeros(size, np.uint8)
        mask[: i + 1, :2] = 1
        mask[-1, -1] = 2
        image_io.write_mask(root / "Annotations" / "480p" / name / f"{i:05d}.png", mask)
    return root


def _message(info: pytest.ExceptionInfo) -> str:
    return str(info.value)


def test_load_davis2016_val(davis2016_root):
    seqs = davis.load_davis(davis2016_root, "2016/val")
    assert {s.name: len(s) for s in seqs} == VAL_FRAMES
    assert [s.name for s in seqs] == list(VAL_FRAMES)  # split-file order
    for seq in seqs:
        assert seq.image_size == (480, 854)
        assert seq.annotated_frames == tuple(range(len(seq)))
        assert seq.output_frames == tuple(range(len(seq)))
        assert seq.frame_names[0] == "00000" and seq.frame_names[-1] == f"{len(seq) - 1:05d}"
    dog = seqs[4]
    assert dog.read_frame(59).shape == (480, 854, 3)
    assert dog.start_frames == {1: 0}  # DAVIS-2016: object 1 (pixels 255) from the first mask
    assert dog.objects_starting_at(0) == (1,) and dog.objects_starting_at(3) == ()


def test_load_davis2016_train_240p(davis2016_root):
    seqs = davis.load_davis(davis2016_root, "2016/train", resolution="240p")
    assert len(seqs) == 30
    assert sum(len(s) for s in seqs) == 2079
    assert {s.image_size for s in seqs} == {(240, 427)}
    bear = next(s for s in seqs if s.name == "bear")
    mask = bear.read_mask(77)  # the 'LA' file
    assert set(np.unique(mask).tolist()) == {0, 1} and int(mask.sum()) == 11523


def test_empty_masks_of_davis2016(davis2016_root):
    seqs = davis.load_davis(davis2016_root, "2016/train", "240p", sequences=["surf", "bmx-bumps"])
    assert [s.name for s in seqs] == ["bmx-bumps", "surf"]  # split order, not request order
    empty = {
        s.name: [s.frame_names[i] for i in range(len(s)) if not s.read_mask(i).any()] for s in seqs
    }
    assert empty["surf"] == ["00054"]
    assert empty["bmx-bumps"] == ["00060"] + [f"{i:05d}" for i in range(62, 75)]
    assert len(empty["bmx-bumps"]) == 14


def test_fake_layout_masks_and_frames(tmp_path):
    root = _fake_davis(tmp_path, frames=3, masks=(0, 2))
    seq = davis.load_sequence(root, "seq")  # one sequence may be sparse; a split to score not
    assert seq.annotated_frames == (0, 2)
    assert seq.start_frames == {1: 0, 2: 0}
    expected = np.zeros((4, 6), np.uint8)
    expected[:3, :2] = 1
    expected[-1, -1] = 2
    np.testing.assert_array_equal(seq.read_mask(2), expected)
    assert abs(int(seq.read_frame(1).mean()) - 40) <= 1
    with pytest.raises(image_io.DataError, match="no annotation for frame 00001 of seq"):
        seq.read_mask(1)


def test_object_starts_declared_by_reader(tmp_path):
    frames = []
    for i in range(3):
        frames.append(tmp_path / f"{i:05d}.png")
        Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(frames[-1])
    seq = sequence.frame_folder_sequence("v", frames, {}, object_starts={2: 1, 1: 0, 3: 1})
    assert seq.start_frames == {1: 0, 2: 1, 3: 1}
    assert seq.objects_starting_at(1) == (2, 3)


# Bad input: each case raises DataError naming the file or folder and what was expected.


def test_missing_root(tmp_path):
    with pytest.raises(image_io.DataError) as info:
        davis.load_davis(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in _message(info) and "root folder not found" in _message(info)


def test_missing_split_file(tmp_path):
    root = _fake_davis(tmp_path)
    with pytest.raises(image_io.DataError) as info:
        davis.load_davis(root, "2017/test-dev")
    path = root / "ImageSets" / "2017" / "test-dev.txt"
    assert str(path) in _message(info) and "split file not found" in _message(info)


def test_malformed_imageset_and_empty_split(tmp_path):
    root = _fake_davis(tmp_path)
    with pytest.raises(image_io.DataError, match="expected '<year>/<split>'"):
        davis.load_davis(root, "val")
    (root / "ImageSets" / "2017" / "empty.txt").write_text("\n\n")
    with pytest.raises(image_io.DataError, match="empty.txt: split file lists no sequence"):
        davis.load_davis(root, "2017/empty")


def test_unknown_requested_sequence(tmp_path):
    root = _fake_davis(tmp_path)
    with pytest.raises(image_io.DataError, match=r"sequences \['cat'\] are not in imageset"):
        davis.load_davis(root, sequences=["cat"])


def test_sequence_in_split_without_folder(tmp_path):
    root = _fake_davis(tmp_path)
    (root / "ImageSets" / "2017" / "val.txt").write_text("seq\nghost\n")
    with pytest.raises(image_io.DataError) as info:
        davis.load_davis(root)
    folder = root / "JPEGImages" / "480p" / "ghost"
    assert str(folder) in _message(info) and "frame folder not found" in _message(info)


def test_empty_sequence_folder(tmp_path):
    root = _fake_davis(tmp_path)
    (root / "ImageSets" / "2017" / "val.txt").write_text("seq\nhollow\n")
    (root / "JPEGImages" / "480p" / "hollow").mkdir()
    (root / "JPEGImages" / "480p" / "hollow" / ".DS_Store").write_text("")
    with pytest.raises(image_io.DataError) as info:
        davis.load_davis(root)
    assert str(root / "JPEGImages" / "480p" / "hollow") in _message(info)
    assert "empty sequence, expected frame files" in _message(info)


def test_required_first_mask_missing(tmp_path):
    root = _fake_davis(tmp_path, masks=(1, 2))
    with pytest.raises(image_io.DataError) as info:
        davis.load_davis(root)
    assert str(root / "Annotations" / "480p" / "seq") in _message(info)
    assert "first frame 00000 needs an annotation (00000.png)" in _message(info)


def test_annotation_matching_no_frame(tmp_path):
    root = _fake_davis(tmp_path)
    stray = root / "Annotations" / "480p" / "seq" / "00042.png"
    image_io.write_mask(stray, np.zeros((4, 6), np.uint8))
    with pytest.raises(image_io.DataError) as info:
        davis.load_davis(root)
    assert str(stray) in _message(info) and "00000 .. 00002" in _message(info)


def test_frame_and_mask_sizes_differ(tmp_path):
    root = _fake_davis(tmp_path)
    bad = root / "Annotations" / "480p" / "seq" / "00001.png"
    image_io.write_mask(bad, np.zeros((5, 6), np.uint8))
    # A split to evaluate is checked when loaded (file headers), before any frame is segmented.
    with pytest.raises(image_io.DataError) as info:
        davis.load_davis(root)
    assert _message(info).startswith(f"{bad}: annotation size (5, 6) (H, W) differs from")
    assert "(4, 6) of the frames" in _message(info) and "(frame 00001)" in _message(info)
    seq = davis.load_sequence(root, "seq")
    with pytest.raises(image_io.DataError) as info:
        seq.read_mask(1)
    assert str(bad) in _message(info) and "(5, 6)" in _message(info) and "(4, 6)" in _message(info)


def test_frame_size_differs_within_sequence(tmp_path):
    root = _fake_davis(tmp_path)
    Image.fromarray(np.zeros((4, 7, 3), np.uint8)).save(root / "JPEGImages/480p/seq/00002.jpg")
    (seq,) = davis.load_davis(root)
    with pytest.raises(image_io.DataError) as info:
        seq.read_frame(2)
    assert "frame 00002 has size (4, 7), expected (4, 6)" in _message(info)
    assert str(root / "JPEGImages" / "480p" / "seq") in _message(info)


def test_unreadable_frame_and_mask_in_a_sequence(tmp_path):
    root = _fake_davis(tmp_path)
    noise = np.random.default_rng(1).bytes(500)
    (root / "JPEGImages/480p/seq/00001.jpg").write_bytes(noise)
    (root / "Annotations/480p/seq/00001.png").write_bytes(noise)
    with pytest.raises(image_io.DataError, match=r"seq/00001\.png: unreadable image"):
        davis.load_davis(root)  # annotations are checked at load, frames when read
    seq = davis.load_sequence(root, "seq")
    for read, suffix in ((seq.read_frame, "jpg"), (seq.read_mask, "png")):
        with pytest.raises(image_io.DataError, match="unreadable") as info:
            read(1)
        assert f"00001.{suffix}" in _message(info)
