"""Region similarity J on hand-made masks with hand-computed answers."""

import numpy as np
import pytest

from vosjax.metrics import region


def _mask(shape, *pixels):
    mask = np.zeros(shape, np.uint8)
    for y, x in pixels:
        mask[y, x] = 1
    return mask


def test_partial_overlap():
    # gt: 4 pixels, pred: 2 pixels, 1 shared -> 1 / 5.
    gt = _mask((3, 3), (0, 0), (0, 1), (1, 0), (1, 1))
    pred = _mask((3, 3), (1, 1), (2, 2))
    assert float(region.jaccard(gt, pred)) == pytest.approx(0.2)


def test_degenerate_cases():
    empty = np.zeros((4, 5), np.uint8)
    blob = _mask((4, 5), (1, 1), (1, 2))
    assert float(region.jaccard(empty, empty)) == 1.0  # empty union counts as perfect
    assert float(region.jaccard(blob, empty)) == 0.0  # empty prediction only
    assert float(region.jaccard(empty, blob)) == 0.0  # empty ground truth only
    assert float(region.jaccard(blob, blob)) == 1.0


def test_stack_reduces_last_two_axes():
    gt = np.stack([_mask((2, 2), (0, 0)), _mask((2, 2)), _mask((2, 2), (0, 0), (1, 1))])
    pred = np.stack([_mask((2, 2), (0, 0), (0, 1)), _mask((2, 2)), _mask((2, 2), (1, 1))])
    np.testing.assert_allclose(region.jaccard(gt, pred), [0.5, 1.0, 0.5])


def test_non_binary_values_are_foreground():
    assert float(region.jaccard(np.array([[3, 0]]), np.array([[1, 7]]))) == pytest.approx(0.5)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="one shape"):
        region.jaccard(np.zeros((2, 2)), np.zeros((2, 3)))


def test_overlap_counts_by_hand():
    gt = np.array([[1, 1, 2, 0], [255, 3, 2, 0]], np.uint8)  # 255 (void) and 3 (> K) = background
    pred = np.array([[1, 0, 2, 2], [1, 1, 0, 0]], np.uint8)
    intersection, gt_area, pred_area = region.overlap_counts(gt, pred, num_objects=2)
    np.testing.assert_array_equal(intersection, [1, 1])
    np.testing.assert_array_equal(gt_area, [2, 2])
    np.testing.assert_array_equal(pred_area, [3, 2])
    # J1 = 1 / (2 + 3 - 1), J2 = 1 / (2 + 2 - 1).
    np.testing.assert_allclose(region.object_jaccard(gt, pred, 2), [1 / 4, 1 / 3])


def test_object_jaccard_matches_binary_jaccard():
    rng = np.random.default_rng(0)
    gt = rng.integers(0, 5, (30, 40)).astype(np.uint8)
    gt[rng.random(gt.shape) < 0.05] = 255
    pred = rng.integers(0, 4, (30, 40)).astype(np.uint8)
    # Object 4 never appears in pred, object 3 is absent from gt after this.
    gt[gt == 3] = 0
    expected = [float(region.jaccard(gt == k, pred == k)) for k in range(1, 5)]
    np.testing.assert_allclose(region.object_jaccard(gt, pred, 4), expected, rtol=0, atol=0)
