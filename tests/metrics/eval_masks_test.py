"""The `python -m vosjax.eval_masks` command on a temporary copy of two golden sequences."""

import json
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from vosjax import eval_masks
from vosjax.data import image_io

SEQUENCES = ("judo", "shooting")  # 2 + 3 objects, 480x854 and 480x1152
REPO = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture()
def layout(tmp_path, golden_root):
    """(DAVIS root, results folder, golden.json) with the ground truth and the 'heavy' set."""
    source = golden_root / "osvos17-dev"
    root, results = tmp_path / "davis", tmp_path / "results"
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("\n".join(SEQUENCES) + "\n")
    for name in SEQUENCES:
        shutil.copytree(
            source / "Annotations" / "480p" / name, root / "Annotations" / "480p" / name
        )
        shutil.copytree(source / "heavy" / name, results / name)
    golden = json.loads((source / "heavy" / "golden.json").read_text())
    return root, results, golden


def _golden_objects(golden, sequences=SEQUENCES):
    return {
        name: scores
        for name, scores in golden["per_object"].items()
        if name.rsplit("_", 1)[0] in sequences
    }


def test_cli_recomputes_and_writes_official_files(layout):
    root, results, golden = layout
    stale = "J&F-Mean,J-Mean,J-Recall,J-Decay,F-Mean,F-Recall,F-Decay\n1,1,1,0,1,1,0\n"
    (results / "global_results-val.csv").write_text(stale)
    (results / "per-sequence_results-val.csv").write_text("Sequence,J-Mean,F-Mean\nx_1,1,1\n")
    process = subprocess.run(
        [sys.executable, "-m", "vosjax.eval_masks", f"--davis_root={root}", f"--results={results}"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert process.returncode == 0, process.stderr
    expected = _golden_objects(golden)
    written = json.loads((results / "results.json").read_text())
    assert list(written["per_object"]) == list(expected) == [
        "judo_1", "judo_2", "shooting_1", "shooting_2", "shooting_3"
    ]  # fmt: skip
    for name, scores in expected.items():
        for measure, value in scores.items():
            assert written["per_object"][name][measure] == pytest.approx(value, abs=1e-6)
    j_mean = np.mean([s["J-Mean"] for s in expected.values()])
    f_mean = np.mean([s["F-Mean"] for s in expected.values()])
    assert written["J-Mean"] == pytest.approx(j_mean, abs=1e-6)
    assert written["J&F-Mean"] == pytest.approx((j_mean + f_mean) / 2, abs=1e-6)
    rows = (results / "per-sequence_results-val.csv").read_text().splitlines()
    assert rows[0] == "Sequence,J-Mean,F-Mean"
    assert rows[1:] == [f"{n},{s['J-Mean']:.3f},{s['F-Mean']:.3f}" for n, s in expected.items()]
    global_rows = (results / "global_results-val.csv").read_text().splitlines()
    values = global_rows[1].split(",")
    assert values[0] == f"{(j_mean + f_mean) / 2:.3f}" and values[1] == f"{j_mean:.3f}"
    assert f"{j_mean:.3f}" in process.stdout and "shooting_3" in process.stdout


def test_cli_reports_bad_input_without_traceback(layout):
    root, results, _ = layout
    shutil.rmtree(results / "shooting")
    process = subprocess.run(
        [sys.executable, "-m", "vosjax.eval_masks", f"--davis_root={root}", f"--results={results}"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert process.returncode == 1
    assert f"{results / 'shooting'}: prediction folder" in process.stderr
    assert "Traceback" not in process.stderr
    assert not (results / "results.json").exists()


def test_sequences_subset_and_first_last_frames_not_needed(layout):
    root, results, golden = layout
    frames = sorted((results / "judo").iterdir())
    frames[0].unlink()
    frames[-1].unlink()
    output, paths = eval_masks.run(root, results, sequences=["judo"], num_workers=1)
    assert list(output["per_object"]) == ["judo_1", "judo_2"]
    expected = _golden_objects(golden, ("judo",))
    for name, scores in expected.items():
        assert output["per_object"][name]["F-Mean"] == pytest.approx(scores["F-Mean"], abs=1e-6)
    assert [p.parent for p in paths] == [results] * 3


def test_output_dir_leaves_results_untouched(layout, tmp_path):
    root, results, golden = layout
    before = sorted(p.name for p in results.iterdir())
    output, paths = eval_masks.run(root, results, num_workers=1, output_dir=tmp_path / "scores")
    assert sorted(p.name for p in results.iterdir()) == before
    assert sorted(p.name for p in paths) == [
        "global_results-val.csv",
        "per-sequence_results-val.csv",
        "results.json",
    ]
    assert all(p.parent == tmp_path / "scores" for p in paths)
    for name, scores in _golden_objects(golden).items():
        assert output["per_object"][name]["J-Mean"] == pytest.approx(scores["J-Mean"], abs=1e-6)
    written = json.loads((tmp_path / "scores" / "results.json").read_text())
    assert written["per_object"]["judo_1"] == output["per_object"]["judo_1"]


def _run(root, results):
    return eval_masks.run(root, results, num_workers=1)


def test_missing_prediction_file(layout):
    root, results, _ = layout
    (results / "judo" / "00010.png").unlink()
    with pytest.raises(image_io.DataError, match=r"judo/00010\.png: prediction not found"):
        _run(root, results)


def test_prediction_size_differs(layout):
    root, results, _ = layout
    path = results / "judo" / "00005.png"
    small = Image.open(path).resize((427, 240), Image.NEAREST)
    small.save(path)
    with pytest.raises(image_io.DataError, match=r"judo/00005\.png: prediction size \(240, 427\)"):
        _run(root, results)


def test_prediction_id_above_object_count(layout):
    root, results, _ = layout
    path = results / "judo" / "00007.png"
    mask = image_io.read_mask(path).copy()
    mask[0, 0] = 3
    image_io.write_mask(path, mask)
    with pytest.raises(image_io.DataError, match=r"judo/00007\.png: object id 3 .* 2 objects"):
        _run(root, results)


def test_unreadable_prediction(layout):
    root, results, _ = layout
    (results / "shooting" / "00003.png").write_bytes(b"not a png")
    with pytest.raises(image_io.DataError, match=r"shooting/00003\.png: unreadable"):
        _run(root, results)


def test_missing_prediction_folder_and_unknown_sequence(layout):
    root, results, _ = layout
    shutil.rmtree(results / "judo")
    with pytest.raises(image_io.DataError, match=r"results/judo: prediction folder .* not found"):
        _run(root, results)
    with pytest.raises(image_io.DataError, match=r"\['dog'\] are not in imageset"):
        eval_masks.run(root, results, sequences=["dog"])
