"""Tests for vosjax.data.youtube_vos on tiny fake YouTube-VOS layouts."""

import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from vosjax.data import image_io, youtube_vos

SIZE = (4, 6)


def _mask(ids: tuple[int, ...]) -> np.ndarray:
    """Object k covers column k of a [4, 6] mask."""
    mask = np.zeros(SIZE, np.uint8)
    for k in ids:
        mask[:, k] = k
    return mask


def _write_video(
    split_root: pathlib.Path,
    video: str,
    frames: list[int],
    annotations: dict[int, tuple[int, ...]],
) -> None:
    for i in frames:
        path = split_root / "JPEGImages" / video / f"{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((*SIZE, 3), i, np.uint8)).save(path)
    for i, ids in annotations.items():
        image_io.write_mask(split_root / "Annotations" / video / f"{i:05d}.png", _mask(ids))


def _names(indices) -> list[str]:
    return [f"{i:05d}" for i in indices]


@pytest.fixture
def valid_root(tmp_path: pathlib.Path) -> pathlib.Path:
    """A 'valid' split: object 2 of 'bvid' appears at frame 00010; 'avid' has one object."""
    split = tmp_path / "valid"
    _write_video(split, "bvid", list(range(0, 30, 5)), {0: (1,), 10: (2,)})
    _write_video(split, "avid", list(range(0, 20, 5)), {0: (1,)})
    meta = {
        "videos": {
            "bvid": {
                "objects": {
                    "1": {"frames": _names(range(0, 30, 5))},
                    "2": {"frames": _names(range(10, 30, 5))},
                }
            },
            "avid": {"objects": {"1": {"frames": _names(range(0, 20, 5))}}},
        }
    }
    (split / "meta.json").write_text(json.dumps(meta))
    return tmp_path


def _meta(root: pathlib.Path, split: str = "valid") -> dict:
    return json.loads((root / split / "meta.json").read_text())


def _save_meta(root: pathlib.Path, meta: dict, split: str = "valid") -> None:
    (root / split / "meta.json").write_text(json.dumps(meta))


def test_valid_split(valid_root):
    seqs = youtube_vos.load_youtube_vos(valid_root)
    assert [s.name for s in seqs] == ["avid", "bvid"]
    avid, bvid = seqs
    assert len(bvid) == 6 and bvid.frame_names == tuple(_names(range(0, 30, 5)))
    assert bvid.image_size == SIZE
    assert bvid.output_frames == (0, 1, 2, 3, 4, 5)
    assert bvid.annotated_frames == (0, 2)
    assert bvid.object_starts == {1: 0, 2: 2}
    assert bvid.start_frames == {1: 0, 2: 2}
    assert bvid.objects_starting_at(2) == (2,)
    np.testing.assert_array_equal(bvid.read_mask(2), _mask((2,)))
    assert abs(int(bvid.read_frame(3).mean()) - 15) <= 1
    assert avid.output_frames == (0, 1, 2, 3) and avid.start_frames == {1: 0}
    (only,) = youtube_vos.load_youtube_vos(valid_root, videos=["bvid"])
    assert only.name == "bvid"


def test_output_frames_start_at_the_first_object(valid_root):
    split = valid_root / "valid"
    _write_video(split, "late", list(range(0, 20, 5)), {5: (3,)})
    meta = _meta(valid_root)
    meta["videos"]["late"] = {"objects": {"3": {"frames": _names([5, 10, 15])}}}
    _save_meta(valid_root, meta)
    (late,) = youtube_vos.load_youtube_vos(valid_root, videos=["late"])
    assert len(late) == 4
    assert late.output_frames == (1, 2, 3)  # frame 00000 needs no prediction
    assert late.start_frames == {3: 1}


def test_all_frames(valid_root):
    all_split = valid_root / "valid_all_frames"
    _write_video(all_split, "bvid", list(range(26)), {})
    _write_video(all_split, "avid", list(range(16)), {})
    avid, bvid = youtube_vos.load_youtube_vos(valid_root, "valid", all_frames=True)
    assert len(bvid) == 26 and bvid.frame_names[7] == "00007"
    assert bvid.output_frames == (0, 5, 10, 15, 20, 25)
    assert bvid.start_frames == {1: 0, 2: 10}
    assert bvid.annotated_frames == (0, 10)
    np.testing.assert_array_equal(bvid.read_mask(10), _mask((2,)))
    assert abs(int(bvid.read_frame(7).mean()) - 7) <= 1
    assert avid.output_frames == (0, 5, 10, 15)
    with pytest.raises(image_io.DataError) as info:
        youtube_vos.load_youtube_vos(valid_root, "valid_all_frames")
    message = str(info.value)
    assert str(all_split / "meta.json") in message and "split='valid', all_frames=True" in message


def test_train_split_with_categories(tmp_path):
    split = tmp_path / "train"
    _write_video(split, "tvid", list(range(0, 15, 5)), {0: (1, 2), 5: (1, 2), 10: (2,)})
    meta = {
        "videos": {
            "tvid": {
                "objects": {
                    "1": {"category": "cat", "frames": _names([0, 5])},
                    "2": {"category": "dog", "frames": _names([0, 5, 10])},
                }
            }
        }
    }
    (split / "meta.json").write_text(json.dumps(meta))
    (seq,) = youtube_vos.load_youtube_vos(tmp_path, "train")
    assert seq.annotated_frames == (0, 1, 2)
    assert seq.start_frames == {1: 0, 2: 0} and seq.output_frames == (0, 1, 2)
    np.testing.assert_array_equal(seq.read_mask(1), _mask((1, 2)))


# Bad input.


def test_missing_root_and_split(tmp_path):
    with pytest.raises(image_io.DataError, match="root folder not found") as info:
        youtube_vos.load_youtube_vos(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere") in str(info.value)
    with pytest.raises(image_io.DataError, match="split folder 'valid' not found") as info:
        youtube_vos.load_youtube_vos(tmp_path)
    assert str(tmp_path / "valid") in str(info.value)


def test_missing_meta_json(valid_root):
    (valid_root / "valid" / "meta.json").unlink()
    with pytest.raises(image_io.DataError, match="meta.json not found") as info:
        youtube_vos.load_youtube_vos(valid_root)
    assert str(valid_root / "valid" / "meta.json") in str(info.value)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("{not json", "not valid JSON"),
        ('{"vids": {}}', 'expected an object with a "videos" mapping'),
        ('{"videos": {"v": {}}}', "video 'v' has no \"objects\" mapping"),
        ('{"videos": {"v": {"objects": {"1": {"frames": []}}}}}', 'object 1 lists no "frames"'),
        ('{"videos": {"v": {"objects": {"x": {"frames": ["00000"]}}}}}', "expected an id in 1"),
    ],
)
def test_malformed_meta_json(valid_root, text, expected):
    meta = valid_root / "valid" / "meta.json"
    meta.write_text(text)
    with pytest.raises(image_io.DataError, match=expected) as info:
        youtube_vos.load_youtube_vos(valid_root)
    assert str(meta) in str(info.value)


def test_video_in_meta_without_frame_folder(valid_root):
    meta = _meta(valid_root)
    meta["videos"]["ghost"] = {"objects": {"1": {"frames": ["00000"]}}}
    _save_meta(valid_root, meta)
    with pytest.raises(image_io.DataError) as info:
        youtube_vos.load_youtube_vos(valid_root)
    assert str(valid_root / "valid" / "JPEGImages" / "ghost") in str(info.value)
    assert "frame folder not found" in str(info.value)


def test_unknown_requested_video(valid_root):
    with pytest.raises(image_io.DataError, match=r"videos \['cvid'\] are not listed"):
        youtube_vos.load_youtube_vos(valid_root, videos=["cvid"])


def test_listed_frame_without_image(valid_root):
    (valid_root / "valid" / "JPEGImages" / "avid" / "00010.jpg").unlink()
    with pytest.raises(image_io.DataError) as info:
        youtube_vos.load_youtube_vos(valid_root, videos=["avid"])
    message = str(info.value)
    assert str(valid_root / "valid" / "JPEGImages" / "avid") in message
    assert "['00010']" in message and "object 1" in message


def test_first_annotation_png_missing(valid_root):
    path = valid_root / "valid" / "Annotations" / "bvid" / "00010.png"
    path.unlink()
    with pytest.raises(image_io.DataError) as info:
        youtube_vos.load_youtube_vos(valid_root)
    message = str(info.value)
    assert str(path) in message and "a required mask is missing" in message
    assert "object 2 of bvid" in message and "frame 00010" in message


def test_first_annotation_lacks_the_object(valid_root):
    path = valid_root / "valid" / "Annotations" / "bvid" / "00010.png"
    image_io.write_mask(path, _mask((1,)))
    with pytest.raises(image_io.DataError) as info:
        youtube_vos.load_youtube_vos(valid_root)
    message = str(info.value)
    assert str(path) in message and "a required mask is missing" in message
    assert "object 2 of bvid" in message and "frame 00010" in message and "[0, 1]" in message
    # Without the check the loader reads no mask and accepts it.
    seqs = youtube_vos.load_youtube_vos(valid_root, check_masks=False)
    assert seqs[1].start_frames == {1: 0, 2: 2}


def test_unreadable_first_annotation(valid_root):
    path = valid_root / "valid" / "Annotations" / "avid" / "00000.png"
    path.write_bytes(b"\x89PNG not really")
    with pytest.raises(image_io.DataError, match="unreadable") as info:
        youtube_vos.load_youtube_vos(valid_root)
    assert str(path) in str(info.value)


def test_first_annotation_of_another_size(valid_root):
    path = valid_root / "valid" / "Annotations" / "avid" / "00000.png"
    image_io.write_mask(path, np.ones((5, 6), np.uint8))
    with pytest.raises(image_io.DataError) as info:
        youtube_vos.load_youtube_vos(valid_root)
    assert str(path) in str(info.value) and "(5, 6)" in str(info.value)
    assert "(4, 6)" in str(info.value)
