"""Tests of mask -> grid labels and grid labels -> mask."""

import cv2
import numpy as np
import pytest
from PIL import Image

from vosjax.ops import label_resize


def test_nearest_known_answer():
    # 4 x 6 -> 2 x 3: output (i, j) reads input (floor((i + .5) * 2), floor((j + .5) * 2)).
    mask = np.array(
        [
            [0, 0, 1, 1, 2, 2],
            [0, 3, 1, 1, 2, 0],
            [1, 1, 0, 0, 3, 3],
            [1, 1, 0, 2, 3, 3],
        ],
        np.uint8,
    )
    labels = label_resize.mask_to_labels(mask, 4, (2, 3), "nearest")
    np.testing.assert_array_equal(np.argmax(labels, -1), [[3, 1, 0], [1, 2, 3]])
    np.testing.assert_array_equal(np.max(labels, -1), np.ones((2, 3)))  # hard one-hot


def test_nearest_equals_pil():
    rng = np.random.default_rng(0)
    for (h_in, w_in), (h, w) in [((480, 854), (60, 107)), ((37, 53), (5, 7)), ((5, 7), (9, 11))]:
        mask = rng.integers(0, 5, size=(h_in, w_in)).astype(np.uint8)
        pil = np.asarray(Image.fromarray(mask).resize((w, h), Image.NEAREST))
        labels = label_resize.mask_to_labels(mask, 5, (h, w), "nearest")
        np.testing.assert_array_equal(np.argmax(labels, -1), pil)


def test_bilinear_known_answer():
    # One row of 4 pixels -> 3 cells: source x = (j + .5) * 4/3 - .5 = 1/6, 3/2, 17/6.
    mask = np.array([[0, 1, 1, 0]], np.uint8)
    labels = np.asarray(label_resize.mask_to_labels(mask, 2, (1, 3), "bilinear"))
    want_object = np.array([1 / 6, 1.0, 1 / 6])
    np.testing.assert_allclose(labels[0, :, 1], want_object, atol=1e-6)
    np.testing.assert_allclose(labels[0, :, 0], 1 - want_object, atol=1e-6)


def test_bilinear_equals_opencv_per_channel():
    rng = np.random.default_rng(1)
    mask = rng.integers(0, 3, size=(48, 85)).astype(np.uint8)
    labels = np.asarray(label_resize.mask_to_labels(mask, 3, (6, 11), "bilinear"))
    for k in range(3):
        want = cv2.resize((mask == k).astype(np.float32), (11, 6), interpolation=cv2.INTER_LINEAR)
        np.testing.assert_allclose(labels[..., k], want, atol=1e-6)
    np.testing.assert_allclose(labels.sum(-1), 1.0, atol=1e-6)


def test_void_is_background_and_bad_ids_are_rejected():
    mask = np.array([[255, 1], [0, 1]], np.uint8)
    labels = label_resize.mask_to_labels(mask, 2, (2, 2), "nearest")
    np.testing.assert_array_equal(np.argmax(labels, -1), [[0, 1], [0, 1]])
    with pytest.raises(ValueError, match="object id 3"):
        label_resize.mask_to_labels(np.array([[3]], np.uint8), 2, (1, 1), "nearest")
    with pytest.raises(ValueError, match="first_mask"):
        label_resize.mask_to_labels(mask, 2, (1, 1), "bicubic")


def test_labels_to_mask_known_answer():
    # Two cells -> four pixels: x = (j + .5)/2 - .5 = -.25 (clamped to 0), .25, .75, 1.25 (1).
    labels = np.zeros((1, 2, 3), np.float32)
    labels[0, 0] = (0.2, 0.7, 0.1)
    labels[0, 1] = (0.2, 0.1, 0.7)
    # Object 1 at the pixels: .7, .55, .25, .1 -> ids 1, 1, 2, 2.
    np.testing.assert_array_equal(label_resize.labels_to_mask(labels, (1, 4)), [[1, 1, 2, 2]])
    up = np.asarray(label_resize.resize_labels(labels, (1, 4)))
    np.testing.assert_allclose(up[0, :, 1], [0.7, 0.55, 0.25, 0.1], atol=1e-6)


def test_labels_to_mask_equals_opencv_upsampling():
    rng = np.random.default_rng(2)
    labels = rng.random((6, 11, 4)).astype(np.float32)
    want = np.argmax(cv2.resize(labels, (85, 48), interpolation=cv2.INTER_LINEAR), -1)
    got = label_resize.labels_to_mask(labels, (48, 85))
    assert got.dtype == np.uint8 and got.shape == (48, 85)
    assert (got == want).mean() > 0.999  # only float near-ties may differ


def test_norm_mask_changes_the_argmax_as_dino():
    # Background 0.6 / 0.9, object 0.4 / 0.1: plain argmax is all background; min-max per
    # channel makes background (0, 1) and object (1, 0).
    labels = np.array([[[0.6, 0.4], [0.9, 0.1]]], np.float32)
    np.testing.assert_array_equal(label_resize.labels_to_mask(labels, (1, 2)), [[0, 0]])
    np.testing.assert_array_equal(
        label_resize.labels_to_mask(labels, (1, 2), normalize=True), [[1, 0]]
    )
    # A channel that is zero everywhere stays zero.
    zero = np.zeros((1, 2, 3), np.float32)
    zero[..., 0] = (0.5, 1.0)
    np.testing.assert_array_equal(label_resize.norm_mask(zero)[..., 2], [[0.0, 0.0]])


def test_bilinear_is_opencv_inter_linear():
    # CRW's reader: cv2.resize of the float32 one-hot; OpenCV's rounded weights differ from the
    # exact bilinear by up to 1e-5 for some channel counts, so vosjax calls OpenCV itself.
    rng = np.random.default_rng(3)
    mask = rng.integers(0, 5, size=(97, 131)).astype(np.uint8)
    for k in (2, 3, 5):
        ids = np.minimum(mask, k - 1)
        want = cv2.resize(
            np.eye(k, dtype=np.float32)[ids], (17, 12), interpolation=cv2.INTER_LINEAR
        )
        got = label_resize.mask_to_labels(ids, k, (12, 17), "bilinear")
        np.testing.assert_array_equal(np.asarray(got), want.reshape(12, 17, k))


def test_bilinear_align_corners_known_answer():
    # INO: F.interpolate(one_hot, (1, 3), bilinear, align_corners=True) of a 1 x 5 mask samples
    # columns 0, 2, 4 exactly (and rows: a single output row reads input row 0).
    mask = np.array([[1, 0, 1, 0, 0], [0, 0, 0, 0, 0]], np.uint8)
    got = np.asarray(label_resize.mask_to_labels(mask, 2, (1, 3), "bilinear_align_corners"))
    np.testing.assert_allclose(got[0, :, 1], [1.0, 1.0, 0.0])
    # 1 x 4 -> 1 x 3: samples at 0, 1.5, 3.
    mask = np.array([[1, 0, 1, 1]], np.uint8)
    got = np.asarray(label_resize.mask_to_labels(mask, 2, (1, 3), "bilinear_align_corners"))
    np.testing.assert_allclose(got[0, :, 1], [1.0, 0.5, 1.0])
    weights = label_resize.align_corners_weights(854, 106)
    np.testing.assert_allclose(weights.sum(1), 1.0, atol=1e-6)
    assert weights[-1, -1] == 1.0 and weights[0, 0] == 1.0


@pytest.mark.parametrize(
    "size,short_side,multiple,fit,want",
    [
        ((480, 854), 480, 64, "resize", (480, 832)),  # DINO
        ((854, 480), 480, 64, "resize", (832, 480)),  # DINO, portrait
        ((480, 854), 480, 8, "resize", (480, 848)),  # INO
        ((720, 1280), 480, 8, "resize", (480, 848)),  # 853.3 floored, not rounded
        ((1080, 1920), None, 8, "resize", (1080, 1920)),  # INO, YouTube-VOS (no scale)
        ((483, 857), None, 8, "resize", (480, 856)),
        ((480, 854), None, 8, "pad", (480, 856)),  # CRW: ceil(W / 8) cells
        ((480, 480), 480, 64, "resize", (480, 448)),  # DINO read_frame: landscape branch
    ],
)
def test_reader_size(size, short_side, multiple, fit, want):
    assert label_resize.reader_size(size, short_side, multiple, fit) == want


def test_reader_size_errors_and_read_frame():
    with pytest.raises(ValueError, match="fit"):
        label_resize.reader_size((4, 4), None, 8, "crop")
    with pytest.raises(ValueError, match="native size"):
        label_resize.reader_size((4, 4), 480, 8, "pad")
    rng = np.random.default_rng(4)
    frame = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    padded = label_resize.read_frame(frame, (8, 8), "pad")
    np.testing.assert_array_equal(padded[:5, :7], frame)
    np.testing.assert_array_equal(padded[7, 7], frame[4, 6])  # edge replication
    np.testing.assert_array_equal(padded[2, 7], frame[2, 6])
    resized = label_resize.read_frame(frame, (4, 9), "resize")
    np.testing.assert_array_equal(resized, cv2.resize(frame, (9, 4)))  # uint8, as cv2's
    assert label_resize.read_frame(frame, (5, 7), "resize") is frame


def test_labels_to_mask_at_the_reader_size_then_pil_nearest():
    # DINO / INO: argmax at the reader's size (x8 of the grid), then PIL NEAREST to the frame.
    rng = np.random.default_rng(5)
    labels = rng.random((6, 13, 3)).astype(np.float32)
    for frame_size in [(48, 107), (53, 101), (48, 104)]:
        got = label_resize.labels_to_mask(labels, frame_size, True, reader_size=(48, 104))
        grid_ids = label_resize.labels_to_mask(labels, (48, 104), True)
        want = np.asarray(Image.fromarray(grid_ids).resize(frame_size[::-1], Image.NEAREST))
        np.testing.assert_array_equal(got, want)
    direct = label_resize.labels_to_mask(labels, (48, 107), True)
    assert (direct != label_resize.labels_to_mask(labels, (48, 107), True, (48, 104))).any()
