"""Tests of the superpixel label maps: SLIC, its connectivity enforcement, ISEC and its Canny.

Golden values (label-map digests, counts, small arrays) come from the code SHLS released:
scikit-image 0.26.0 `slic(..., channel_axis=-1, start_label=0)`, `thin`,
`_enforce_label_connectivity_cython`, and `isec_py/isec.py` (IvisionLab/SHLS @ aa9644e), run on
the synthetic images built here. Each test pins one step of the released code that vosjax copies.
"""

import hashlib

import numpy as np
import pytest

from vosjax.data.superpixels import canny, connectivity, isec, slic


def _synthetic(h: int, w: int, seed: int) -> np.ndarray:
    """float32 [h, w, 3] in [0, 1]: a horizontal ramp, six discs of random colour, noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    image = np.zeros((h, w, 3), np.float32)
    image += (0.2 + 0.3 * xx / w)[..., None]
    for _ in range(6):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(4, h / 3)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.uniform(0, 1, 3)
    image += rng.normal(0, 0.03, image.shape).astype(np.float32)
    return np.clip(image, 0, 1).astype(np.float32)


def _digest(labels: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(labels, dtype="<i4").tobytes()).hexdigest()[:16]


# --- connectivity (scikit-image's SLIC connectivity enforcement) --------------------------------


def _scan_reference(labels: np.ndarray, min_size: int, max_size: int) -> np.ndarray:
    """The raster scan with a breadth-first search at every unlabelled pixel, pixel by pixel."""
    h, w = labels.shape
    out = np.full((h, w), -1)
    new = 0
    for y in range(h):
        for x in range(w):
            if labels[y, x] < 0 or out[y, x] >= 0:
                continue
            queue, adjacent, head = [(y, x)], new, 0
            out[y, x] = new
            while head < len(queue) < max_size:
                cy, cx = queue[head]
                for ny, nx in ((cy, cx + 1), (cy, cx - 1), (cy + 1, cx), (cy - 1, cx)):
                    if not (0 <= ny < h and 0 <= nx < w):
                        continue
                    if labels[ny, nx] == labels[y, x] and out[ny, nx] == -1:
                        out[ny, nx] = new
                        queue.append((ny, nx))
                        if len(queue) >= max_size:
                            break
                    elif out[ny, nx] >= 0 and out[ny, nx] != new:
                        adjacent = out[ny, nx]
                head += 1
            if len(queue) < min_size:
                for p in queue:
                    out[p] = adjacent
            else:
                new += 1
    return out


def test_small_piece_takes_the_last_labelled_neighbour_met():
    # The label-3 pixel meets 1 (east), 1 (west), 0 (south), 1 (north): the last one wins.
    labels = np.array([[0, 0, 1, 1, 1], [2, 0, 1, 3, 1], [2, 0, 0, 0, 1]])
    out = connectivity.enforce_connectivity(labels, 3, 100)
    np.testing.assert_array_equal(out, [[0, 0, 1, 1, 1], [0, 0, 1, 1, 1], [0, 0, 0, 0, 1]])


def test_small_piece_without_labelled_neighbour_joins_the_next_piece():
    np.testing.assert_array_equal(
        connectivity.enforce_connectivity(np.array([[5, 1, 1], [1, 1, 1]]), 2, 100),
        np.zeros((2, 3)),
    )
    np.testing.assert_array_equal(
        connectivity.enforce_connectivity(np.array([[1, 2], [3, 4]]), 2, 100), np.zeros((2, 2))
    )


def test_search_stops_at_max_size_and_the_rest_is_met_later():
    row = connectivity.enforce_connectivity(np.full((1, 10), 4), 0, 4)
    np.testing.assert_array_equal(row, [[0, 0, 0, 0, 1, 1, 1, 1, 2, 2]])
    u_shape = np.array([[1, 0, 0, 0, 1], [1, 0, 0, 0, 1], [1, 1, 1, 1, 1]])
    np.testing.assert_array_equal(
        connectivity.enforce_connectivity(u_shape, 0, 5),
        [[0, 1, 1, 1, 2], [0, 1, 1, 3, 2], [0, 0, 0, 2, 2]],
    )


@pytest.mark.parametrize("seed", range(6))
def test_enforce_connectivity_matches_the_pixel_scan(seed):
    rng = np.random.default_rng(seed)
    cell = 1 + seed % 4
    coarse = rng.integers(-1 if seed % 3 == 0 else 0, 5, (40 // cell + 1, 37 // cell + 1))
    labels = np.kron(coarse, np.ones((cell, cell), int))[:40, :37]
    min_size, max_size = int(rng.integers(0, 12)), int(rng.integers(12, 80))
    out = connectivity.enforce_connectivity(labels, min_size, max_size)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, _scan_reference(labels, min_size, max_size))


@pytest.mark.parametrize(
    "labels, min_size, max_size, name",
    [
        (np.zeros((2, 2, 2), int), 1, 5, "labels"),
        (np.zeros((2, 2), np.float32), 1, 5, "labels"),
        (np.zeros((2, 2), int), -1, 5, "min_size"),
        (np.zeros((2, 2), int), 1, 0, "max_size"),
    ],
)
def test_enforce_connectivity_bad_input(labels, min_size, max_size, name):
    with pytest.raises(ValueError, match=name):
        connectivity.enforce_connectivity(labels, min_size, max_size)


# --- SLIC ----------------------------------------------------------------------------------------


def test_rgb_to_lab_known_values():
    rgb = np.array([[[1, 1, 1], [1, 0, 0], [0, 0, 1], [0.5, 0.5, 0.5]]], np.float32)
    lab = slic.rgb_to_lab(rgb)
    assert lab.dtype == np.float32
    expected = [
        [100.0, -0.0024437904, 0.0046372414],
        [53.240585, 80.09231, 67.20274],
        [32.29567, 79.1856, -107.8573],
        [53.388962, -0.0014603138, 0.0027894974],
    ]
    np.testing.assert_allclose(lab[0], expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "shape, num, starts, steps",
    [
        ((1, 256, 256), 300, [0, 7, 7], [1, 15, 15]),
        ((1, 480, 854), 300, [0, 18, 18], [1, 37, 37]),
        ((1, 4, 1000), 100, [0, 2, 5], [1, 4, 10]),  # a short axis takes its full length
        ((1, 10, 10), 200, [0, 0, 0], [1, 1, 1]),  # fewer pixels than points: all of them
    ],
)
def test_grid_steps_is_scikit_images_regular_grid(shape, num, starts, steps):
    assert slic.grid_steps(shape, num) == (starts, steps)


def test_window_bounds_truncate_like_c():
    lo, hi = slic._windows(np.array([3.7, 20.2, 28.9], np.float32), 2, 30)
    np.testing.assert_array_equal(lo, [0, 16, 24])  # max(c - 4, 0), truncated
    np.testing.assert_array_equal(hi, [8, 25, 30])  # min(c + 5, 30), truncated


def test_assignment_ties_go_to_the_lower_centre_and_nan_centres_claim_nothing():
    h, w = 5, 9
    image = np.zeros((h, w, 3), np.float32)
    centres = np.zeros((3, 6), np.float32)
    centres[0, 1:3] = (2, 2)
    centres[1, 1:3] = (2, 6)  # pixel column 4 is as far from both
    centres[2] = np.nan
    labels = np.full((h, w), -1, np.int64)
    slic._assign(image, centres, (2, 2), np.float32(1 / 4), labels)
    np.testing.assert_array_equal(labels[:, 4], 0)
    np.testing.assert_array_equal(labels[:, :4], 0)
    np.testing.assert_array_equal(labels[:, 5:], 1)


def test_centre_update_sums_in_raster_order_in_float32():
    rng = np.random.default_rng(0)
    image = (rng.random((20, 30, 3)) * 100).astype(np.float32)
    labels = rng.integers(0, 4, (20, 30))
    labels[labels == 3] = 2  # centre 3 has no pixel
    centres = slic._update(image, labels, 4)
    for k in range(3):
        total = np.zeros(3, np.float32)
        for y, x in zip(*np.nonzero(labels == k), strict=True):
            total = total + image[y, x]  # float32, pixel after pixel
        np.testing.assert_array_equal(centres[k, 3:], total / np.float32((labels == k).sum()))
    assert np.isnan(centres[3]).all()


@pytest.mark.parametrize(
    "kwargs, count, digest",
    [
        (
            {"num_segments": 40, "compactness": 20, "sigma": 1, "max_iter": 10},
            28,
            "70a24595e4ba52c6",
        ),
        # One round: the seeds' colour starts at 0, not at the image colour.
        (
            {"num_segments": 40, "compactness": 20, "sigma": 0, "max_iter": 1},
            35,
            "34c50f6434cff202",
        ),
        ({"num_segments": 12, "compactness": 10, "sigma": 2, "max_iter": 3}, 8, "8c50e3e7496f86af"),
    ],
)
def test_slic_matches_scikit_image(kwargs, count, digest):
    labels = slic.slic(_synthetic(48, 64, 0), **kwargs)
    assert labels.dtype == np.int32 and labels.shape == (48, 64)
    assert labels.max() + 1 == count
    assert _digest(labels) == digest


def test_slic_uint8_is_float32_over_255():
    image = np.round(_synthetic(48, 64, 0) * 255).astype(np.uint8)
    labels = slic.slic(image, num_segments=40)
    assert _digest(labels) == "70a24595e4ba52c6"
    np.testing.assert_array_equal(
        labels, slic.slic(image.astype(np.float32) / np.float32(255), num_segments=40)
    )


@pytest.mark.parametrize(
    "image, kwargs, name",
    [
        (np.zeros((8, 8), np.uint8), {}, "image"),
        (np.zeros((8, 8, 3), np.int32), {}, "image"),
        (np.zeros((8, 8, 3), np.uint8), {"num_segments": 0}, "num_segments"),
        (np.zeros((8, 8, 3), np.uint8), {"compactness": 0}, "compactness"),
        (np.zeros((8, 8, 3), np.uint8), {"sigma": -1}, "sigma"),
        (np.zeros((8, 8, 3), np.uint8), {"max_iter": 0}, "max_iter"),
    ],
)
def test_slic_bad_input(image, kwargs, name):
    with pytest.raises(ValueError, match=name):
        slic.slic(image, **kwargs)


# --- ISEC and its Canny --------------------------------------------------------------------------


def test_canny_zero_padding_makes_the_frame_border_an_edge():
    gray = np.full((30, 40), 0.5, np.float32)
    scale = canny.scale(gray, 1.0)
    edges = canny.hysteresis(scale, high=0.1, low=0.01)
    assert not edges[0].any() and not edges[:, 0].any()  # the outermost ring never is
    assert edges[1, 5:35].all() and edges[5:25, 1].all()  # the zero padding's step is
    assert not edges[5:25, 5:35].any()


def test_non_maximum_suppression_interpolates_between_neighbours():
    # Gradient (d_row, d_col) = (1, 0.5) at the centre: the "plus" side mixes m[2, 1] and
    # m[2, 2] with weight 0.5 (0.95 <= 1: kept), although the nearest neighbour along the
    # quantised direction, m[2, 1] = 1.2, is larger.
    magnitude = np.array([[0, 0, 0], [0, 1.0, 0], [0, 1.2, 0.7]], np.float32)
    d_row = np.full((3, 3), 1.0, np.float32)
    d_col = np.full((3, 3), 0.5, np.float32)
    keep = canny.non_maximum_suppression(d_row, d_col, magnitude)
    np.testing.assert_array_equal(keep, [[0, 0, 0], [0, 1, 0], [0, 0, 0]])
    magnitude[2, 2] = 0.9  # now 1.05 > 1
    assert not canny.non_maximum_suppression(d_row, d_col, magnitude)[1, 1]


def test_hysteresis_keeps_weak_runs_that_hold_a_strong_pixel():
    magnitude = np.array([[0, 0, 0, 0, 0, 0], [0, 0.5, 0.2, 0, 0.2, 0], [0, 0, 0, 0.2, 0, 0]])
    scale = canny.Scale(magnitude.astype(np.float32), magnitude > 0)
    edges = canny.hysteresis(scale, high=0.4, low=0.1)
    # 8-connected: (1, 1) - (1, 2) - (2, 3) - (1, 4) is one run holding the strong (1, 1).
    np.testing.assert_array_equal(edges, magnitude > 0)
    edges = canny.hysteresis(scale, high=0.6, low=0.1)
    assert not edges.any()


def test_thin_known_answer_and_outside_is_background():
    mask = np.zeros((9, 11), bool)
    mask[2:7, 1:10] = True
    mask[0:3, 4:6] = True
    once = np.zeros((9, 11), int)
    once[2, 4:6] = 1
    once[3:6, 2:9] = 1
    np.testing.assert_array_equal(isec.thin(mask, 1), once)
    line = np.zeros((9, 11), int)
    line[4, 3:8] = 1
    np.testing.assert_array_equal(isec.thin(mask, 100), line)
    full = np.ones((5, 5), bool)  # touches every side: thinned from all of them
    np.testing.assert_array_equal(isec.thin(full, 100), np.eye(5)[2:3].T @ np.eye(5)[2:3])


def test_area_closing_fills_small_holes_touching_the_border_too():
    mask = np.ones((6, 8), bool)
    mask[0, 0:2] = False  # a 2-pixel hole on the border
    mask[3, 3:6] = False  # a 3-pixel hole inside
    np.testing.assert_array_equal(
        isec.area_closing(mask, 3), mask | (np.arange(8) < 2)[None] & (np.arange(6) == 0)[:, None]
    )
    assert isec.area_closing(mask, 4).all()
    empty = np.zeros((3, 3), bool)  # the whole image as one hole: filled when below too
    assert isec.area_closing(empty, 10).all()
    assert not isec.area_closing(empty, 9).any()


def test_area_opening_counts_8_connected_pieces():
    mask = np.zeros((5, 5), bool)
    mask[[0, 1, 2], [0, 1, 2]] = True  # a diagonal of 3
    mask[4, 4] = True
    np.testing.assert_array_equal(
        isec.area_opening(mask, 3, connectivity=8), np.eye(5, dtype=bool) & (np.arange(5) < 3)
    )
    assert not isec.area_opening(mask, 3, connectivity=4).any()


def test_shell_uses_a_reflected_border():
    mask = np.zeros((5, 6), bool)
    mask[:, :3] = True
    expected = np.zeros((5, 6), bool)
    expected[:, 2] = True  # the border column 0 is not shell: its reflection is foreground
    np.testing.assert_array_equal(isec.shell(mask), expected)


def test_rescale_to_unit():
    values = np.array([[2.0, 4.0], [6.0, 3.0]], np.float32)
    np.testing.assert_array_equal(isec.rescale_to_unit(values), [[0, 0.5], [1, 0.25]])
    np.testing.assert_array_equal(isec.rescale_to_unit(np.full((2, 2), 3.0, np.float32)), 1.0)


def test_fill_contours_takes_the_largest_of_8_neighbours_or_stays_zero():
    labels = np.array(
        [
            [1, 1, 0, 2, 2],
            [1, 0, 0, 0, 2],
            [0, 0, 0, 0, 0],
            [3, 0, 0, 0, 4],
        ],
        np.int32,
    )
    np.testing.assert_array_equal(
        isec.fill_contours(labels),
        [[1, 1, 2, 2, 2], [1, 1, 2, 2, 2], [3, 3, 0, 4, 4], [3, 3, 0, 4, 4]],
    )


def test_isec_flat_image_has_a_border_band_and_an_interior():
    result = isec.segment(np.full((30, 40, 3), 128, np.uint8))
    assert result.num_regions == 2
    assert result.labels[0].tolist() == [1] * 40 and result.labels[15, 20] == 2
    assert (result.labels == 1).sum() == 193 and (result.labels == 2).sum() == 1007


@pytest.mark.parametrize(
    "seed, shape, count, digest",
    [(0, (48, 64), 13, "45d111833a3830e2"), (1, (40, 40), 11, "1c5a60d0bbc5c627")],
)
def test_isec_matches_the_released_code(seed, shape, count, digest):
    image = _synthetic(*shape, seed)
    result = isec.segment(image)
    assert result.labels.dtype == np.int32
    assert result.num_regions == count
    assert _digest(result.labels) == digest
    np.testing.assert_array_equal(isec.isec(image), result.labels - 1)


@pytest.mark.parametrize(
    "image, kwargs, name",
    [
        (np.zeros((8, 8), np.uint8), {}, "image"),
        (np.zeros((8, 8, 3), np.uint8), {"filter_order": 2}, "filter_order"),
        (np.zeros((8, 8, 3), np.uint8), {"num_iters": 0}, "num_iters"),
        (np.zeros((8, 8, 3), np.uint8), {"num_iters": 7}, "num_iters"),
        (np.zeros((8, 8, 3), np.uint8), {"area_threshold": 0}, "area_threshold"),
    ],
)
def test_isec_bad_input(image, kwargs, name):
    with pytest.raises(ValueError, match=name):
        isec.segment(image, **kwargs)
