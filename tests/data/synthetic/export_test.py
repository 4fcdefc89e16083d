"""Tests of the DAVIS-2017 export of synthetic videos."""

import json
import pathlib

import numpy as np
import pytest

from vosjax.data import davis, image_io
from vosjax.data.synthetic import export, generator

PARAMS = dict(num_train=1, num_val=2, num_frames=3, height=40, width=56, seed=3)


def _expected(split: str, index: int) -> generator.SyntheticVideo:
    return generator.generate_video(
        generator.split_seed(PARAMS["seed"], split, index),
        num_frames=PARAMS["num_frames"],
        height=PARAMS["height"],
        width=PARAMS["width"],
        config=generator.MEDIUM,
    )


@pytest.mark.parametrize("image_format", ["png", "jpg"])
def test_export_round_trips_through_load_davis(tmp_path, image_format):
    root = export.export_davis(tmp_path / "synth", **PARAMS, image_format=image_format)
    sequences = davis.load_davis(root, "2017/val")
    assert [s.name for s in sequences] == ["synth-val-000", "synth-val-001"]
    assert [s.name for s in davis.load_davis(root, "2017/train")] == ["synth-train-000"]
    for index, sequence in enumerate(sequences):
        video = _expected("validation", index)
        assert len(sequence) == 3 and sequence.image_size == (40, 56)
        assert sequence.annotated_frames == (0, 1, 2)
        for t in range(3):
            np.testing.assert_array_equal(sequence.read_mask(t), video.masks[t])
            frame = sequence.read_frame(t).astype(np.int16)
            if image_format == "png":
                np.testing.assert_array_equal(frame, video.frames[t])
            else:  # JPEG quality 95
                assert np.abs(frame - video.frames[t]).mean() < 6
    suffix = ".png" if image_format == "png" else ".jpg"
    assert (root / "JPEGImages" / "480p" / "synth-val-000" / f"00000{suffix}").is_file()


def test_export_is_reused_when_the_parameters_match(tmp_path, monkeypatch):
    root = export.export_davis(tmp_path / "synth", **PARAMS)
    manifest = json.loads((root / export.MANIFEST).read_text())
    assert manifest["num_val"] == 2 and manifest["config"]["speed"] == list(generator.MEDIUM.speed)

    def fail(*args, **kwargs):
        raise AssertionError("regenerated an up-to-date export")

    monkeypatch.setattr(generator, "generate_video", fail)
    # A level name and the equal config object are the same parameters.
    assert export.export_davis(tmp_path / "synth", **PARAMS, config=generator.MEDIUM) == root


def test_export_with_other_parameters_replaces_the_old_one(tmp_path):
    root = export.export_davis(tmp_path / "synth", **PARAMS)
    export.export_davis(root, **{**PARAMS, "num_val": 1})
    assert davis.read_imageset(root, "2017/val") == ["synth-val-000"]
    assert not (root / "JPEGImages" / "480p" / "synth-val-001").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["synth"]  # no temporary folder left


def test_export_refuses_a_folder_that_is_not_an_export(tmp_path):
    (tmp_path / "mine.txt").write_text("precious")
    with pytest.raises(image_io.DataError, match="not a synthetic export"):
        export.export_davis(tmp_path, **PARAMS)
    assert (tmp_path / "mine.txt").read_text() == "precious"
    with pytest.raises(ValueError, match="image_format"):
        export.export_davis(tmp_path / "new", **PARAMS, image_format="gif")


def test_default_root_is_named_by_the_parameters(tmp_path, monkeypatch):
    small = dict(num_train=0, num_val=1, num_frames=2, height=24, width=24)
    first = export.default_davis_root(**small, data_dir=tmp_path)
    assert first.parent == tmp_path / "davis_synthetic"
    assert export.default_davis_root(**small, data_dir=tmp_path) == first
    other = export.default_davis_root(**{**small, "seed": 1}, data_dir=tmp_path)
    assert other != first
    assert len(davis.load_davis(other, "2017/val")) == 1
    monkeypatch.setenv("VOSJAX_DATA_DIR", str(tmp_path / "env"))
    assert export.cache_root() == pathlib.Path(tmp_path / "env")
    assert export.default_davis_root(**small).parent == tmp_path / "env" / "davis_synthetic"
