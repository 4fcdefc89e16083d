"""Bad input to `python -m vosjax.eval_masks` (issue 31, items 5 and 7): each case fails naming
the file or flag, before any scoring where it can be told before, and never loses the table."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vosjax import eval_masks
from vosjax.data import davis, image_io

REPO = pathlib.Path(__file__).resolve().parents[2]
NUM_FRAMES = 5
SIZE = (16, 24)


def _object(t: int) -> np.ndarray:
    """Object 1 of frame t: a square that moves right by 2 pixels a frame."""
    mask = np.zeros(SIZE, np.uint8)
    mask[4:12, 2 + 2 * t : 10 + 2 * t] = 1
    return mask


def _layout(tmp_path: pathlib.Path, year: str = "2017", frames: bool = True):
    """(DAVIS root, results) with one sequence 'toy' and perfect predictions of it.

    2017: indexed ground truth of object ids; 2016: grayscale {0, 255}, as DAVIS-2016 ships it.
    """
    root, results = tmp_path / "davis", tmp_path / "results"
    (root / "ImageSets" / year).mkdir(parents=True)
    (root / "ImageSets" / year / "val.txt").write_text("toy\n")
    annotations = root / "Annotations" / "480p" / "toy"
    annotations.mkdir(parents=True)
    for t in range(NUM_FRAMES):
        if frames:
            path = root / "JPEGImages" / "480p" / "toy" / f"{t:05d}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.full((*SIZE, 3), 30 * t, np.uint8)).save(path)
        if year == "2016":
            Image.fromarray(_object(t) * 255, mode="L").save(annotations / f"{t:05d}.png")
        else:
            image_io.write_mask(annotations / f"{t:05d}.png", _object(t))
        image_io.write_mask(results / "toy" / f"{t:05d}.png", _object(t))
    return root, results


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vosjax.eval_masks", *args],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )


def test_missing_ground_truth_in_the_middle_names_the_file(tmp_path):
    root, results = _layout(tmp_path)
    output, _ = eval_masks.run(root, results, num_workers=1)
    assert output["J&F-Mean"] == 1.0  # the control: complete ground truth, perfect predictions
    missing = root / "Annotations" / "480p" / "toy" / "00002.png"
    missing.unlink()
    # Before: frame 00002 was skipped without a word and the sequence still scored 1.000.
    process = _cli(f"--davis_root={root}", f"--results={results}", "--num_workers=1")
    assert process.returncode == 1
    assert process.stderr.splitlines() == [
        f"eval_masks: {missing}: ground truth not found; evaluation needs an annotation for "
        f"every frame of sequence 'toy' (the 5 frames of {root / 'JPEGImages' / '480p' / 'toy'})"
        "; missing 1: 00002.png"
    ]
    assert process.stdout == ""


def test_missing_ground_truth_without_frames_uses_the_numbering(tmp_path):
    root, results = _layout(tmp_path, frames=False)
    eval_masks.run(root, results, num_workers=1)  # complete: scores
    for t in (1, 2):
        (root / "Annotations" / "480p" / "toy" / f"{t:05d}.png").unlink()
    with pytest.raises(image_io.DataError) as info:
        eval_masks.run(root, results, num_workers=1)
    message = str(info.value)
    assert message.startswith(f"{root / 'Annotations' / '480p' / 'toy' / '00001.png'}: ")
    assert "numbered 00000 .. 00004" in message and "missing 2: 00001.png, 00002.png" in message


def test_missing_last_ground_truth_is_told_by_the_frames(tmp_path):
    root, results = _layout(tmp_path)
    (root / "Annotations" / "480p" / "toy" / "00004.png").unlink()
    with pytest.raises(image_io.DataError, match=r"toy/00004\.png: ground truth not found"):
        eval_masks.run(root, results, num_workers=1)


@pytest.mark.parametrize("value", [1, 50, 128])
def test_davis2016_ground_truth_other_than_0_and_255(tmp_path, value):
    root, results = _layout(tmp_path, year="2016")
    output, _ = eval_masks.run(root, results, imageset="2016/val", num_workers=1)
    assert output["J&F-Mean"] == 1.0  # {0, 255}: object 1, as the predictions
    bad = root / "Annotations" / "480p" / "toy" / "00002.png"
    Image.fromarray(_object(2) * value, mode="L").save(bad)
    expected = (
        f"{bad}: DAVIS-2016 ground truth has values [0, {value}]; expected a binary mask with "
        "the values 0 and 255 only (255 = the object)"
    )
    with pytest.raises(image_io.DataError) as info:
        eval_masks.run(root, results, imageset="2016/val", num_workers=1)
    assert str(info.value).startswith(expected)
    # `vosjax.evaluate` and `vosjax.main --mode=eval` read the split through load_davis.
    with pytest.raises(image_io.DataError) as info:
        davis.load_davis(root, "2016/val")
    assert str(info.value).startswith(expected)


def test_davis2016_imageset_refuses_indexed_ground_truth(tmp_path):
    root, results = _layout(tmp_path, year="2017")
    (root / "ImageSets" / "2017").rename(root / "ImageSets" / "2016")
    with pytest.raises(image_io.DataError) as info:
        eval_masks.run(root, results, imageset="2016/val", num_workers=1)
    first = root / "Annotations" / "480p" / "toy" / "00000.png"
    assert str(info.value).startswith(
        f"{first}: DAVIS-2016 ground truth has values [0, 1] (an indexed PNG of object ids)"
    )


def test_load_davis_refuses_ground_truth_missing_in_the_middle(tmp_path):
    root, _ = _layout(tmp_path)
    missing = root / "Annotations" / "480p" / "toy" / "00003.png"
    missing.unlink()
    # Before: `vosjax.evaluate` segmented the sequence and left it out of the scores.
    with pytest.raises(image_io.DataError) as info:
        davis.load_davis(root)
    assert str(info.value).startswith(f"{missing}: ground truth not found")
    assert "annotations for 4 of its 5 frames" in str(info.value)
    for t in range(1, NUM_FRAMES):  # the first frame only: a test split, segmented, not scored
        (root / "Annotations" / "480p" / "toy" / f"{t:05d}.png").unlink(missing_ok=True)
    (seq,) = davis.load_davis(root)
    assert seq.annotated_frames == (0,)


def test_unwritable_output_dir_fails_before_scoring(tmp_path):
    root, results = _layout(tmp_path)
    # Scoring would fail on this; the output folder must be refused first.
    (results / "toy" / "00002.png").unlink()
    # Nothing can create a folder under /proc, not even root.
    output_dir = pathlib.Path("/proc") / "vosjax-eval-masks-test"
    process = _cli(f"--davis_root={root}", f"--results={results}", f"--output_dir={output_dir}")
    assert process.returncode == 1
    (line,) = process.stderr.splitlines()
    assert line.startswith(f"eval_masks: --output_dir={output_dir}: cannot create or write")
    assert "prediction" not in line and process.stdout == ""


def test_unwritable_results_folder_fails_before_scoring(tmp_path, monkeypatch):
    root, results = _layout(tmp_path)
    (results / "toy" / "00002.png").unlink()
    # The results folder refuses new files as a read-only mount would (root ignores file modes).
    real_open = os.open

    def read_only_open(path, flags, *args, **kwargs):
        if flags & os.O_CREAT and pathlib.Path(path).parent == results:
            raise PermissionError(30, "Read-only file system", str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only_open)
    with pytest.raises(image_io.DataError) as info:
        eval_masks.run(root, results, num_workers=1)
    assert str(info.value) == (
        f"{results}: cannot write into the results folder (Read-only file system), where the "
        "CSVs and results.json go by default; pass --output_dir=DIR to write them elsewhere"
    )
    monkeypatch.undo()
    with pytest.raises(image_io.DataError, match=r"toy/00002\.png: prediction not found"):
        eval_masks.run(root, results, num_workers=1)  # writable: the check passes, scoring runs


def test_failed_write_after_scoring_keeps_the_table(tmp_path):
    root, results = _layout(tmp_path)
    output_dir = tmp_path / "scores"
    (output_dir / "results.json").mkdir(parents=True)  # the folder is writable, this file not
    process = _cli(f"--davis_root={root}", f"--results={results}", f"--output_dir={output_dir}")
    assert process.returncode == 1
    assert "J&F-Mean" in process.stdout and "toy_1" in process.stdout
    values = process.stdout.splitlines()[2].split()
    assert values == ["1.000", "1.000", "1.000", "0.000", "1.000", "1.000", "0.000"]
    (line,) = process.stderr.splitlines()
    assert line.startswith(f"eval_masks: could not write {output_dir / 'results.json'} (")
    assert "--output_dir" in line and "Traceback" not in process.stderr


def test_sequence_listed_without_ground_truth_folder(tmp_path):
    root, results = _layout(tmp_path)
    (root / "ImageSets" / "2017" / "val.txt").write_text("toy\nghost\n")
    with pytest.raises(image_io.DataError) as info:
        eval_masks.run(root, results, num_workers=1)
    folder = root / "Annotations" / "480p" / "ghost"
    assert str(info.value) == f"{folder}: annotation folder not found"


def test_empty_frame_folder(tmp_path):
    root, results = _layout(tmp_path)
    for frame in (root / "JPEGImages" / "480p" / "toy").iterdir():
        frame.unlink()
    with pytest.raises(image_io.DataError) as info:
        eval_masks.run(root, results, num_workers=1)
    folder = root / "JPEGImages" / "480p" / "toy"
    assert str(info.value).startswith(f"{folder}: empty sequence, expected frame files")


def test_annotation_matching_no_frame(tmp_path):
    root, results = _layout(tmp_path)
    stray = root / "Annotations" / "480p" / "toy" / "00009.png"
    image_io.write_mask(stray, _object(0))
    with pytest.raises(image_io.DataError) as info:
        eval_masks.run(root, results, num_workers=1)
    assert str(info.value).startswith(f"{stray}: annotation matches no frame of sequence 'toy'")


def test_evaluate_command_names_a_missing_ground_truth_in_one_line(tmp_path):
    """`python -m vosjax.evaluate` reads DAVIS through the same checks: one line, exit 1."""
    root, _ = _layout(tmp_path)
    (root / "Annotations" / "480p" / "toy" / "00002.png").unlink()
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "vosjax.evaluate",
            "--config=configs/propagation/lab_pixels.py:smoke",
            f"--config.data.davis_root={root}",
            f"--workdir={tmp_path / 'work'}",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert process.returncode == 1, process.stderr[-2000:]
    assert "00002.png" in process.stderr
    assert "Traceback" not in process.stderr
    assert not (tmp_path / "work" / "results").exists()  # nothing segmented
