"""Tests for vosjax.data.results_writer: DAVIS and YouTube-VOS layouts, the submission zip."""

import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from vosjax.data import image_io, results_writer, sequence

SIZE = (3, 5)


def _sequence(name: str, frames: int, output_frames: tuple[int, ...]) -> sequence.VideoSequence:
    return sequence.VideoSequence(
        name=name,
        frame_names=tuple(f"{5 * i:05d}" for i in range(frames)),
        image_size=SIZE,
        read_frame_fn=lambda i: np.zeros((*SIZE, 3), np.uint8),
        mask_paths={},
        output_frames=output_frames,
    )


def _prediction(i: int) -> np.ndarray:
    mask = np.zeros(SIZE, np.int64)
    mask[:, : i + 1] = 1
    mask[0, -1] = 3
    return mask


def test_davis_layout_every_frame(tmp_path):
    seq = _sequence("dog", 3, output_frames=(0, 1, 2))
    writer = results_writer.ResultsWriter(tmp_path / "results")
    assert len(writer.missing(seq)) == 3
    for i in range(3):
        path = writer.write(seq, i, _prediction(i))
        assert path == tmp_path / "results" / "dog" / f"{5 * i:05d}.png"
    assert writer.missing(seq) == []
    with Image.open(tmp_path / "results" / "dog" / "00010.png") as image:
        assert image.mode == "P"
        assert image.getpalette()[3:9] == [128, 0, 0, 0, 128, 0]
    for i in range(3):
        read = image_io.read_mask(tmp_path / "results" / "dog" / f"{5 * i:05d}.png")
        np.testing.assert_array_equal(read, _prediction(i))


def test_davis_layout_accepts_bool_masks(tmp_path):
    seq = _sequence("dog", 1, output_frames=(0,))
    path = results_writer.ResultsWriter(tmp_path).write(seq, 0, _prediction(0) == 1)
    np.testing.assert_array_equal(image_io.read_mask(path), (_prediction(0) == 1).astype(np.uint8))


def test_youtube_vos_layout_only_required_frames(tmp_path):
    seq = _sequence("0a1b2c", 4, output_frames=(1, 3))
    writer = results_writer.ResultsWriter(tmp_path, layout="youtube_vos")
    assert writer.required_frames(seq) == (1, 3)
    assert writer.write(seq, 0, _prediction(0)) is None
    assert writer.write(seq, 2, _prediction(2)) is None
    assert writer.missing(seq) == [
        tmp_path / "Annotations" / "0a1b2c" / "00005.png",
        tmp_path / "Annotations" / "0a1b2c" / "00015.png",
    ]
    for i in (1, 3):
        assert writer.write(seq, i, _prediction(i)) == writer.path(seq, i)
    assert sorted(p.name for p in (tmp_path / "Annotations" / "0a1b2c").iterdir()) == [
        "00005.png",
        "00015.png",
    ]
    assert writer.missing(seq) == []


def test_submission_zip(tmp_path):
    seqs = [_sequence("vid_a", 2, (0, 1)), _sequence("vid_b", 3, (2,))]
    writer = results_writer.ResultsWriter(tmp_path / "out", layout="youtube_vos")
    for seq in seqs:
        for i in range(len(seq)):
            writer.write(seq, i, _prediction(i))
    zip_path = results_writer.make_youtube_vos_submission(tmp_path / "out", seqs)
    assert zip_path == tmp_path / "out" / "submission.zip"
    with zipfile.ZipFile(zip_path) as archive:
        assert archive.namelist() == [
            "Annotations/vid_a/00000.png",
            "Annotations/vid_a/00005.png",
            "Annotations/vid_b/00010.png",
        ]
        with Image.open(io.BytesIO(archive.read("Annotations/vid_b/00010.png"))) as image:
            assert image.mode == "P"
            np.testing.assert_array_equal(np.asarray(image), _prediction(2))
    # Another target; only Annotations/ goes in, not the first archive.
    again = results_writer.make_youtube_vos_submission(
        tmp_path / "out", zip_path=tmp_path / "s.zip"
    )
    with zipfile.ZipFile(again) as archive:
        assert len(archive.namelist()) == 3


def test_submission_with_missing_frames(tmp_path):
    seq = _sequence("vid_a", 3, (0, 1, 2))
    writer = results_writer.ResultsWriter(tmp_path, layout="youtube_vos")
    writer.write(seq, 0, _prediction(0))
    with pytest.raises(image_io.DataError) as info:
        results_writer.make_youtube_vos_submission(tmp_path, [seq])
    message = str(info.value)
    assert "2 required prediction files are missing" in message
    assert str(tmp_path / "Annotations" / "vid_a" / "00005.png") in message


def test_submission_without_results(tmp_path):
    with pytest.raises(image_io.DataError, match="results folder not found") as info:
        results_writer.make_youtube_vos_submission(tmp_path)
    assert str(tmp_path / "Annotations") in str(info.value)
    (tmp_path / "Annotations").mkdir()
    with pytest.raises(image_io.DataError, match="no PNG to submit"):
        results_writer.make_youtube_vos_submission(tmp_path)


def test_bad_predictions(tmp_path):
    seq = _sequence("dog", 2, (0, 1))
    writer = results_writer.ResultsWriter(tmp_path)
    with pytest.raises(ValueError, match=r"prediction shape \(5, 3\), expected .* \(3, 5\)"):
        writer.write(seq, 0, np.zeros((5, 3), np.uint8))
    with pytest.raises(ValueError, match="dtype float32, expected integer object ids"):
        writer.write(seq, 0, np.zeros(SIZE, np.float32))
    with pytest.raises(ValueError, match=r"0\.\.255"):
        writer.write(seq, 0, np.full(SIZE, 256))
    with pytest.raises(IndexError, match="frame 2 of a 2-frame sequence"):
        writer.write(seq, 2, np.zeros(SIZE, np.uint8))
    with pytest.raises(ValueError, match="layout 'coco'"):
        results_writer.ResultsWriter(tmp_path, layout="coco")
    assert not any(tmp_path.iterdir())
