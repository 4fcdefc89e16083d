"""End-to-end: `vosjax.evaluate` segments, writes PNGs, scores and summarises."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from configs.propagation import lab_pixels
from vosjax import evaluate
from vosjax.data import image_io, user_video
from vosjax.metrics import davis_protocol
from vosjax.models import pixel_features
from vosjax.ops import propagation

REPO = pathlib.Path(__file__).resolve().parents[1]


def _static_davis(root: pathlib.Path, num_frames: int = 6) -> np.ndarray:
    """A DAVIS-2017 layout with one sequence whose frames never change; returns its mask.

    480 x 640: every preset's reader keeps this size (DINO's 480 and multiple of 64 included).
    """
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)
    mask = np.zeros((480, 640), np.uint8)
    mask[80:240, 80:320] = 1  # whole 8x8 cells, so the stride-8 grid represents them exactly.
    mask[320:480, 400:640] = 2
    for t in range(num_frames):
        path = root / "JPEGImages" / "480p" / "still" / f"{t:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(frame).save(path)
        image_io.write_mask(root / "Annotations" / "480p" / "still" / f"{t:05d}.png", mask)
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("still\n")
    return mask


@pytest.mark.parametrize("preset", ["dino", "crw", "ino"])
def test_static_video_keeps_the_first_mask(tmp_path, preset):
    mask = _static_davis(tmp_path / "davis")
    config = lab_pixels.get_config(preset)
    config.data.davis_root = str(tmp_path / "davis")
    results = evaluate.run(config, str(tmp_path / "work"))
    # Every frame is the first mask taken to the feature grid and back (bilinear upsampling
    # rounds the corners of the squares: that is the protocol, not an error); DINO and INO
    # write the first mask itself for frame 0, CRW its labels taken back.
    propagator = propagation.VideoPropagator(propagation.from_config_dict(config.propagation), 3)
    expected = propagator.to_mask(propagator.labels_from_mask(mask, (60, 80)), mask.shape)
    assert (expected != mask).sum() > 0
    first = mask if preset in ("dino", "ino") else expected
    for t in range(6):
        written = image_io.read_mask(tmp_path / "work" / "results" / "still" / f"{t:05d}.png")
        np.testing.assert_array_equal(written, first if t == 0 else expected)
    predicted = np.stack([first] + [expected] * 5)
    scores = davis_protocol.evaluate_sequence(np.stack([mask] * 6), predicted)
    expected_results = davis_protocol.summarize({f"still_{k}": v for k, v in scores.items()})
    assert results == expected_results
    assert 0.9 < results["J&F-Mean"] < 1.0
    saved = json.loads((tmp_path / "work" / "results" / "results.json").read_text())
    assert saved["J-Mean"] == pytest.approx(results["J-Mean"], abs=1e-12)
    csv = (tmp_path / "work" / "results" / "global_results-val.csv").read_text()
    assert csv.splitlines()[0].startswith("J&F-Mean,J-Mean,J-Recall")
    assert list((tmp_path / "work" / "eval").glob("events.out.tfevents.*"))


def test_user_video_in_motion(tmp_path):
    """A textured square moving right by one feature cell a frame is tracked.

    480 x 1152: DINO's reader keeps it (a smaller video would be upscaled to a short side of
    480, as DINO's reader does, which blurs a per-pixel texture into ambiguity).
    """
    rng = np.random.default_rng(1)
    background = rng.integers(0, 256, (480, 1152, 3), dtype=np.uint8)
    square = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    folder = tmp_path / "frames"
    folder.mkdir()
    masks = []
    for t in range(8):
        frame = background.copy()
        mask = np.zeros((480, 1152), np.uint8)
        frame[128:152, 128 + 8 * t : 152 + 8 * t] = square
        mask[128:152, 128 + 8 * t : 152 + 8 * t] = 1
        Image.fromarray(frame).save(folder / f"frame_{t}.png")
        masks.append(mask)
    image_io.write_mask(tmp_path / "first.png", masks[0])
    video = user_video.load_user_video(folder, tmp_path / "first.png")
    config = lab_pixels.get_config("dino")
    segmenter = evaluate.PropagationSegmenter(
        evaluate.build_extractor(config), propagation.from_config_dict(config.propagation)
    )
    predicted = list(segmenter.segment(video))
    assert len(predicted) == 8
    for t in (3, 7):
        overlap = (
            np.logical_and(predicted[t], masks[t]).sum()
            / np.logical_or(predicted[t], masks[t]).sum()
        )
        assert overlap > 0.9, (t, overlap)


def test_smoke_command_on_synthetic_default(tmp_path):
    """The README's main job, shrunk: no data path, so the synthetic default is generated."""
    env = dict(os.environ, VOSJAX_DATA_DIR=str(tmp_path / "cache"))
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "vosjax.evaluate",
            "--config=configs/propagation/lab_pixels.py:smoke",
            f"--workdir={tmp_path / 'work'}",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=600,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    results = json.loads((tmp_path / "work" / "results" / "results.json").read_text())
    # The synthetic objects move and deform: propagation is good but not perfect.
    assert 0.3 < results["J&F-Mean"] < 1.0
    sequences = sorted(p.name for p in (tmp_path / "work" / "results").iterdir() if p.is_dir())
    assert len(sequences) == 2
    assert len(list((tmp_path / "work" / "results" / sequences[0]).glob("*.png"))) == 6
    assert "J&F-Mean" in process.stdout
    assert list((tmp_path / "cache").rglob("vosjax_synthetic.json"))


def test_bad_config_fields_are_named(tmp_path):
    config = lab_pixels.get_config("smoke")
    config.features.name = "sift"
    with pytest.raises(ValueError, match="config.features.name"):
        evaluate.build_extractor(config)
    config = lab_pixels.get_config("smoke")
    config.data.davis_root = str(tmp_path / "nowhere")
    with pytest.raises(image_io.DataError, match="nowhere"):
        evaluate.load_sequences(config.data)
    with pytest.raises(ValueError, match="expected 'smoke' or a preset"):
        lab_pixels.get_config("fast")


def test_youtube_vos_layout_object_starting_later(tmp_path):
    """A static YouTube-VOS video whose object 2 is annotated at its first frame, frame 3."""
    rng = np.random.default_rng(2)
    frame = rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)  # DINO's reader keeps it
    split = tmp_path / "ytvos" / "valid"
    names = [f"{5 * t:05d}" for t in range(6)]
    for name in names:
        path = split / "JPEGImages" / "vid" / f"{name}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(frame).save(path, quality=100)
    first, later = np.zeros((480, 640), np.uint8), np.zeros((480, 640), np.uint8)
    first[80:240, 80:320] = 1
    later[320:480, 400:640] = 2
    image_io.write_mask(split / "Annotations" / "vid" / "00000.png", first)
    image_io.write_mask(split / "Annotations" / "vid" / "00015.png", later)
    meta = {"videos": {"vid": {"objects": {"1": {"frames": names}, "2": {"frames": names[3:]}}}}}
    (split / "meta.json").write_text(json.dumps(meta))

    config = lab_pixels.get_config("dino")
    config.data.layout = "youtube_vos"
    config.data.youtube_vos_root = str(tmp_path / "ytvos")
    assert evaluate.run(config, str(tmp_path / "work")) is None  # no ground truth to score.
    out = tmp_path / "work" / "results"
    written = {p.stem: image_io.read_mask(p) for p in (out / "Annotations" / "vid").glob("*.png")}
    assert sorted(written) == names
    for t, name in enumerate(names):
        assert (written[name] == 1).sum() > 0.7 * (first == 1).sum()
        if t < 3:
            assert not (written[name] == 2).any(), t  # not yet started.
        else:
            assert (written[name] == 2).sum() > 0.7 * (later == 2).sum(), t
    # A static video: frame 5 sees frame 4 in its context besides frame 3, which moves the
    # soft labels a little; only a pixel or so on an object's border may flip.
    assert (written[names[4]] != written[names[5]]).mean() < 1e-4
    assert (out / "submission.zip").is_file()


def test_user_video_outputs_its_given_masks_exactly(tmp_path):
    """CRW's protocol rebuilds frame 0 from the stride-8 grid; a user's video gets its masks."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "frames"
    folder.mkdir()
    for t in range(4):
        Image.fromarray(rng.integers(0, 256, (42, 61, 3), dtype=np.uint8)).save(folder / f"{t}.png")
    first = np.zeros((42, 61), np.uint8)
    first[5:22, 7:30] = 1  # off the 8-pixel grid
    later = np.zeros((42, 61), np.uint8)
    later[13:35, 20:50] = 2  # on top of object 1's mask
    image_io.write_mask(tmp_path / "first.png", first)
    image_io.write_mask(tmp_path / "later.png", later)
    masks = {0: tmp_path / "first.png", 2: tmp_path / "later.png"}
    video = user_video.load_user_video(folder, masks)
    segmenter = evaluate.PropagationSegmenter(
        pixel_features.LabPixelFeatures(), propagation.PRESETS["crw"]
    )
    raw = list(segmenter.segment(video))
    assert (raw[0] != first).sum() > 20 and (raw[2] == 2).sum() != (later == 2).sum()
    evaluate.evaluate_sequences(segmenter, [video], tmp_path / "out")
    written = [image_io.read_mask(tmp_path / "out" / "frames" / f"{t}.png") for t in range(4)]
    np.testing.assert_array_equal(written[0], first)
    np.testing.assert_array_equal(written[2] == 2, later == 2)
    kept = (raw[2] == 1) & (later == 0)
    np.testing.assert_array_equal(written[2][kept], 1)  # object 1 outside the new mask
    np.testing.assert_array_equal(written[1], raw[1])
