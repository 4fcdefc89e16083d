"""The official DAVIS protocol: golden parity on every shared set, and hand-made sequences."""

import json
import pathlib

import numpy as np
import pytest

from vosjax.data import davis, image_io
from vosjax.metrics import boundary, davis_protocol

SETS = ("perfect", "mild", "heavy", "mixed")
GOLDEN_TOLERANCE = 1e-6


def _ground_truth(golden_root: pathlib.Path, collection: str) -> tuple[pathlib.Path, str]:
    if collection == "davis2016-dev":
        return golden_root.parent / "data" / "DAVIS2016", "2016/val"
    return golden_root / "osvos17-dev", "2017/val"


def _assert_matches_golden(results: dict, golden: dict, objects=None) -> None:
    objects = list(golden["per_object"]) if objects is None else objects
    assert list(results["per_object"]) == objects
    for name in objects:
        for measure in ("J-Mean", "F-Mean"):
            assert results["per_object"][name][measure] == pytest.approx(
                golden["per_object"][name][measure], abs=GOLDEN_TOLERANCE
            ), (name, measure)


@pytest.mark.parametrize("collection", ["davis2016-dev", "osvos17-dev"])
@pytest.mark.parametrize("name", SETS)
def test_golden_parity(golden_root, collection, name):
    root, imageset = _ground_truth(golden_root, collection)
    predictions = golden_root / collection / name
    results = davis_protocol.evaluate_folder(root, predictions, imageset)
    golden = json.loads((predictions / "golden.json").read_text())
    _assert_matches_golden(results, golden)
    for measure in ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"):
        assert results[measure] == pytest.approx(golden[measure], abs=GOLDEN_TOLERANCE), measure


def test_in_memory_sequence_matches_golden(golden_root):
    root = golden_root / "osvos17-dev"
    gt_files = davis.annotation_files(root, "judo")
    gt = np.stack([image_io.read_mask(p) for p in gt_files])
    pred = np.stack([image_io.read_mask(root / "heavy" / "judo" / p.name) for p in gt_files])
    scores = davis_protocol.evaluate_sequence(gt, pred, name="judo")
    assert sorted(scores) == [1, 2]
    assert all(j.shape == f.shape == (len(gt_files) - 2,) for j, f in scores.values())
    results = davis_protocol.summarize({f"judo_{k}": v for k, v in scores.items()})
    golden = json.loads((root / "heavy" / "golden.json").read_text())
    _assert_matches_golden(results, golden, objects=["judo_1", "judo_2"])


def _toy_sequence() -> tuple[np.ndarray, np.ndarray]:
    """5 frames 8x8, objects 1 and 2; id 3 appears after frame 0; a void pixel in frame 2."""
    gt = np.zeros((5, 8, 8), np.uint8)
    gt[:, 1:3, 1:3] = 1
    gt[:, 5:7, 5:7] = 2
    gt[1:, 6:8, 0:2] = 3  # not in frame 0: not an object of the protocol
    gt[2, 0, 7] = 255
    pred = gt.copy()
    pred[pred == 3] = 0
    pred[pred == 255] = 0
    pred[0] = 7  # first and last frames are never read
    pred[4] = 9
    pred[2, 0, 7] = 1  # predicted on a void pixel: a false positive (void is not used)
    pred[3][pred[3] == 2] = 0  # object 2 missing: scored as an empty mask
    pred[3, 1:3, 3] = 1  # object 1 grown to 6 pixels
    return gt, pred


def test_toy_sequence_by_hand():
    gt, pred = _toy_sequence()
    scores = davis_protocol.evaluate_sequence(gt, pred)
    assert sorted(scores) == [1, 2]  # K from frame 0 only
    j1, f1 = scores[1]
    j2, f2 = scores[2]
    np.testing.assert_allclose(j1, [1.0, 4 / 5, 4 / 6])
    np.testing.assert_allclose(j2, [1.0, 1.0, 0.0])
    np.testing.assert_allclose(f2, [1.0, 1.0, 0.0])
    # Radius ceil(0.008 * ||(8, 8)||) = 1. Frame 2: the void pixel (0, 7) adds 2 predicted
    # boundary pixels, (0, 6) and (0, 7), far from the square's 8: P = 8/10, R = 1, F = 8/9.
    # Frame 3: one extra column is within 1 pixel of the ground truth's boundary: F = 1.
    np.testing.assert_allclose(f1, [1.0, 8 / 9, 1.0])
    assert f1[1] == boundary.f_measure(gt[2] == 1, pred[2] == 1)


def test_summarize_means_over_objects_not_sequences():
    per_object = {
        "a_1": (np.array([1.0, 1.0, 1.0, 1.0, 1.0]), np.ones(5)),
        "a_2": (np.array([0.0, 0.0, 0.0, 0.0, 0.0]), np.ones(5)),
        "b_1": (np.array([1.0, 0.5, 0.6, 0.2, 0.0]), np.zeros(5)),
    }
    results = davis_protocol.summarize(per_object)
    assert results["J-Mean"] == pytest.approx((1 + 0 + 0.46) / 3)  # a per-sequence mean: 0.48
    assert results["J-Recall"] == pytest.approx((1 + 0 + 0.4) / 3)
    assert results["J-Decay"] == pytest.approx((0 + 0 + 0.65) / 3)
    assert results["F-Mean"] == pytest.approx(2 / 3)
    assert results["J&F-Mean"] == pytest.approx(((1.46 / 3) + (2 / 3)) / 2)
    assert list(results["per_object"]) == ["a_1", "a_2", "b_1"]
    assert results["per_object"]["b_1"] == {"J-Mean": pytest.approx(0.46), "F-Mean": 0.0}
    with pytest.raises(ValueError, match="no object"):
        davis_protocol.summarize({})


def test_prediction_id_above_object_count_raises():
    gt, pred = _toy_sequence()
    pred[2, 7, 7] = 3
    with pytest.raises(image_io.DataError, match=r"toy: predicted frame 2 has object id 3.*2 obj"):
        davis_protocol.evaluate_sequence(gt, pred, name="toy")


def test_shape_mismatch_raises():
    gt, pred = _toy_sequence()
    with pytest.raises(image_io.DataError, match=r"toy: expected .* one shape"):
        davis_protocol.evaluate_sequence(gt, pred[:, :7], name="toy")


def test_count_objects_ignores_void():
    assert davis_protocol.count_objects(np.array([[0, 255], [2, 1]], np.uint8)) == 2
    assert davis_protocol.count_objects(np.array([[0, 255]], np.uint8)) == 0


def test_folder_equals_in_memory(tmp_path):
    gt, pred = _toy_sequence()
    root, results = tmp_path / "davis", tmp_path / "results"
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("toy\n")
    for t in range(len(gt)):
        image_io.write_mask(root / "Annotations" / "480p" / "toy" / f"{t:05d}.png", gt[t])
        if 0 < t < len(gt) - 1:  # first and last predictions are not needed
            image_io.write_mask(results / "toy" / f"{t:05d}.png", pred[t])
    from_folder = davis_protocol.score_folder(root, results, "2017/val", num_workers=1)
    in_memory = davis_protocol.evaluate_sequence(gt, pred)
    assert list(from_folder) == ["toy_1", "toy_2"]
    for k in (1, 2):
        np.testing.assert_array_equal(from_folder[f"toy_{k}"][0], in_memory[k][0])
        np.testing.assert_array_equal(from_folder[f"toy_{k}"][1], in_memory[k][1])


def test_no_object_in_any_first_frame_raises(tmp_path):
    gt, pred = _toy_sequence()
    gt[0] = 0
    root, results = tmp_path / "davis", tmp_path / "results"
    (root / "ImageSets" / "2017").mkdir(parents=True)
    (root / "ImageSets" / "2017" / "val.txt").write_text("toy\n")
    for t in range(len(gt)):
        image_io.write_mask(root / "Annotations" / "480p" / "toy" / f"{t:05d}.png", gt[t])
        image_io.write_mask(results / "toy" / f"{t:05d}.png", np.zeros_like(gt[t]))
    assert davis_protocol.score_folder(root, results, num_workers=1) == {}
    with pytest.raises(image_io.DataError, match="no object to evaluate"):
        davis_protocol.evaluate_folder(root, results, num_workers=1)
