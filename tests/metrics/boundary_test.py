"""Boundary F: structuring element, boundary map, hand-computed F, crops equal whole frames."""

import numpy as np
import pytest

from vosjax.metrics import boundary

SQUARE_6X6 = np.zeros((6, 6), np.uint8)
SQUARE_6X6[1:3, 1:3] = 1


def test_disk_matches_skimage_definition():
    np.testing.assert_array_equal(boundary.disk(0), [[1]])
    np.testing.assert_array_equal(boundary.disk(1), [[0, 1, 0], [1, 1, 1], [0, 1, 0]])
    np.testing.assert_array_equal(
        boundary.disk(2),
        [
            [0, 0, 1, 0, 0],
            [0, 1, 1, 1, 0],
            [1, 1, 1, 1, 1],
            [0, 1, 1, 1, 0],
            [0, 0, 1, 0, 0],
        ],
    )
    # Gauss circle problem: 197 integer points with i^2 + j^2 <= 64 (OEIS A000328).
    assert boundary.disk(8).shape == (17, 17)
    assert int(boundary.disk(8).sum()) == 197
    assert boundary.disk(8).dtype == np.uint8


def test_boundary_radius():
    assert boundary.boundary_radius(480, 854) == 8  # DAVIS 480p
    assert boundary.boundary_radius(480, 910) == 9  # bike-packing
    assert boundary.boundary_radius(480, 1152) == 10  # shooting
    assert boundary.boundary_radius(240, 427) == 4
    assert boundary.boundary_radius(480, 854, bound_th=3) == 3  # >= 1: pixels


def test_seg2bmap_interior_square():
    mask = np.zeros((4, 4), np.uint8)
    mask[1:3, 1:3] = 1
    expected = [[1, 1, 1, 0], [1, 0, 1, 0], [1, 1, 1, 0], [0, 0, 0, 0]]
    np.testing.assert_array_equal(boundary.seg2bmap(mask), expected)


def test_seg2bmap_last_row_and_column_rules():
    # The square touches the bottom and right edges: only E on the last row, only S on the
    # last column, and never the bottom-right pixel.
    mask = np.zeros((3, 3), np.uint8)
    mask[1:, 1:] = 1
    expected = [[1, 1, 1], [1, 0, 0], [1, 0, 0]]
    np.testing.assert_array_equal(boundary.seg2bmap(mask), expected)


def test_seg2bmap_full_and_empty_masks_have_no_boundary():
    assert not boundary.seg2bmap(np.ones((5, 7))).any()
    assert not boundary.seg2bmap(np.zeros((5, 7))).any()


def test_f_measure_shifted_square_by_hand():
    # Radius 1 (plus-shaped disk): 5 of the 8 boundary pixels match on each side.
    shifted = np.roll(SQUARE_6X6, 2, axis=1)
    assert boundary.f_measure(SQUARE_6X6, shifted, bound_th=1) == pytest.approx(0.625)
    # Radius 2 reaches every pixel of the other boundary.
    assert boundary.f_measure(SQUARE_6X6, shifted, bound_th=2) == pytest.approx(1.0)


def test_f_measure_precision_differs_from_recall():
    # Prediction: one pixel -> 4 boundary pixels, all within 1 of the square's boundary (P = 1);
    # 7 of the square's 8 boundary pixels are within 1 of them (R = 7/8). F = 14/15.
    pred = np.zeros((6, 6), np.uint8)
    pred[1, 1] = 1
    assert boundary.f_measure(SQUARE_6X6, pred, bound_th=1) == pytest.approx(14 / 15)


def test_f_measure_degenerate_cases():
    empty = np.zeros((6, 6), np.uint8)
    assert boundary.f_measure(empty, empty) == 1.0  # no boundary on either side
    assert boundary.f_measure(SQUARE_6X6, empty) == 0.0  # empty prediction only: P=1, R=0
    assert boundary.f_measure(empty, SQUARE_6X6) == 0.0  # empty ground truth only: P=0, R=1
    assert boundary.f_measure(SQUARE_6X6, SQUARE_6X6) == 1.0
    # The toolkit's quirk: a mask filling the frame has no boundary, so it "matches" nothing.
    assert boundary.f_measure(np.ones((6, 6)), empty) == 1.0


def test_f_from_counts():
    assert boundary.f_from_counts(0, 5, 0, 0) == 0.0
    assert boundary.f_from_counts(5, 0, 0, 0) == 0.0
    assert boundary.f_from_counts(0, 0, 0, 0) == 1.0
    assert boundary.f_from_counts(4, 8, 4, 7) == pytest.approx(14 / 15)
    assert boundary.f_from_counts(4, 8, 0, 0) == 0.0  # P + R = 0


def _naive_f(gt: np.ndarray, pred: np.ndarray, radius: int) -> float:
    """The toolkit's definition written with loops, for small arrays."""

    def bmap(seg):
        h, w = seg.shape
        out = np.zeros((h, w), bool)
        for y in range(h):
            for x in range(w):
                if y == h - 1 and x == w - 1:
                    continue
                if y == h - 1:
                    out[y, x] = seg[y, x] != seg[y, x + 1]
                elif x == w - 1:
                    out[y, x] = seg[y, x] != seg[y + 1, x]
                else:
                    out[y, x] = (
                        seg[y, x] != seg[y, x + 1]
                        or seg[y, x] != seg[y + 1, x]
                        or seg[y, x] != seg[y + 1, x + 1]
                    )
        return out

    def matched(a, b):  # pixels of a with a pixel of b within the disk
        pts = np.argwhere(b)
        count = 0
        for y, x in np.argwhere(a):
            if pts.size and (((pts - (y, x)) ** 2).sum(axis=1) <= radius**2).any():
                count += 1
        return count

    gb, pb = bmap(gt.astype(bool)), bmap(pred.astype(bool))
    return boundary.f_from_counts(int(pb.sum()), int(gb.sum()), matched(pb, gb), matched(gb, pb))


def _blobs(rng, shape, num_objects):
    """Ellipses with ragged edges, some inside the frame, some across its edges and corners."""
    ids = np.zeros(shape, np.uint8)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for k in range(1, num_objects + 1):
        cy, cx = rng.integers(-2, shape[0] + 2), rng.integers(-2, shape[1] + 2)
        ry, rx = rng.integers(2, shape[0] // 3), rng.integers(2, shape[1] // 3)
        distance = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2
        ids[distance <= 1 + 0.3 * rng.random(shape)] = k
    return ids


@pytest.mark.parametrize("seed", range(4))
def test_f_measure_matches_naive_definition(seed):
    rng = np.random.default_rng(seed)
    gt, pred = _blobs(rng, (17, 23), 1), _blobs(rng, (17, 23), 1)
    for radius in (1, 2, 3):
        assert boundary.f_measure(gt, pred, bound_th=radius) == pytest.approx(
            _naive_f(gt, pred, radius), abs=1e-12
        )


@pytest.mark.parametrize("seed", range(8))
def test_crop_boundary_maps_equal_whole_frame(seed):
    rng = np.random.default_rng(seed)
    gt, pred = _blobs(rng, (40, 50), 3), _blobs(rng, (40, 50), 3)
    for k in range(1, 4):
        window = boundary.object_window(gt, pred, k)
        for ids in (gt, pred):
            whole = boundary.seg2bmap(ids == k)
            np.testing.assert_array_equal(boundary.seg2bmap(ids[window] == k), whole[window])
            whole[window] = False
            assert not whole.any()  # no boundary pixel outside the window


@pytest.mark.parametrize("seed", range(8))
def test_object_f_on_crops_equals_whole_frame(seed):
    rng = np.random.default_rng(100 + seed)
    shape = (60, 90)
    gt, pred = _blobs(rng, shape, 4), _blobs(rng, shape, 4)
    gt[rng.random(shape) < 0.002] = 255  # void and unknown ids are background
    for radius in (1, 3):
        expected = [boundary.f_measure(gt == k, pred == k, radius) for k in range(1, 5)]
        np.testing.assert_array_equal(boundary.object_f(gt, pred, 4, radius), expected)


def test_object_f_absent_object_and_window():
    gt = np.zeros((8, 8), np.uint8)
    gt[7, 7] = 1  # bottom-right pixel: its own boundary is empty, its left and top neighbours not
    pred = np.zeros((8, 8), np.uint8)
    assert boundary.object_window(gt, pred, 2) is None
    assert boundary.object_window(gt, pred, 1) == (slice(6, 8), slice(6, 8))
    f = boundary.object_f(gt, pred, 2, radius=1)
    np.testing.assert_array_equal(f, [boundary.f_measure(gt == 1, pred == 1, 1), 1.0])
    assert f[0] == 0.0


def test_boundary_f_stack():
    stack_gt = np.stack([SQUARE_6X6, SQUARE_6X6, np.zeros((6, 6), np.uint8)])
    stack_pred = np.stack([SQUARE_6X6, np.roll(SQUARE_6X6, 2, axis=1), np.zeros((6, 6))])
    np.testing.assert_allclose(boundary.boundary_f(stack_gt, stack_pred, bound_th=1), [1, 0.625, 1])
