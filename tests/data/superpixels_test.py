"""Tests of the superpixel label maps: connectivity enforcement, SLIC and ISEC."""

import math
import pathlib

import cv2
import numpy as np
import pytest
from scipy import ndimage

from vosjax.data.superpixels import connectivity, isec, slic

SHARED = pathlib.Path(__file__).resolve().parents[2].parent / "shared"
DAVIS = SHARED / "data" / "DAVIS2016" / "JPEGImages"


def _read_rgb(path: pathlib.Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        pytest.fail(f"expected a readable JPEG at {path}")
    return np.ascontiguousarray(image[..., ::-1])


@pytest.fixture(scope="module")
def bear_256() -> np.ndarray:
    """DAVIS bear frame 0 resized to 256 x 256, as SHLS trains."""
    image = _read_rgb(DAVIS / "240p" / "bear" / "00000.jpg")
    return cv2.resize(image, (256, 256), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def bear_240p() -> np.ndarray:
    return _read_rgb(DAVIS / "240p" / "bear" / "00000.jpg")


def _check_label_map(labels: np.ndarray) -> int:
    """Asserts int32, labels 0..N-1 all used, each one 4-connected region; returns N."""
    assert labels.dtype == np.int32
    n = int(labels.max()) + 1
    assert labels.min() == 0
    assert np.array_equal(np.unique(labels), np.arange(n))
    for value, box in enumerate(ndimage.find_objects(labels + 1)):
        _, pieces = ndimage.label(labels[box] == value)  # scipy's default: 4-connectivity
        assert pieces == 1, f"label {value} has {pieces} 4-connected pieces"
    return n


def _first_appearance_order(labels: np.ndarray) -> bool:
    _, first = np.unique(labels.ravel(), return_index=True)
    return bool(np.all(np.diff(first) > 0))


# --- connectivity -------------------------------------------------------------------------------


def test_relabel_connected_known_answer():
    labels = np.array([[5, 5, 7, 7], [7, 5, 7, 5], [7, 7, 7, 5]])
    # Three 4-connected pieces: the 5s top left, the 7s, the 5s on the right.
    np.testing.assert_array_equal(
        connectivity.relabel_connected(labels, 0),
        [[0, 0, 1, 1], [1, 0, 1, 2], [1, 1, 1, 2]],
    )
    # The right piece (2 pixels) joins the only piece it touches.
    np.testing.assert_array_equal(
        connectivity.relabel_connected(labels, 3),
        [[0, 0, 1, 1], [1, 0, 1, 1], [1, 1, 1, 1]],
    )
    assert connectivity.num_segments(labels) == 2


def test_relabel_connected_diagonal_contact_splits():
    labels = np.array([[1, 0], [0, 1]])
    np.testing.assert_array_equal(connectivity.relabel_connected(labels, 0), [[0, 1], [2, 3]])


def test_small_region_joins_the_longest_shared_border():
    labels = np.zeros((6, 6), np.int64)
    labels[:, 3:] = 1
    # 3 pixels sharing 2 border edges with label 0 (18 pixels) and 6 with label 1 (12 left).
    labels[2, 3:5] = 2
    labels[3, 3] = 2
    out = connectivity.relabel_connected(labels, 4)
    expected = np.zeros((6, 6), np.int32)
    expected[:, 3:] = 1
    np.testing.assert_array_equal(out, expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_relabel_connected_matches_scipy_components(seed):
    labels = np.random.default_rng(seed).integers(0, 3, (13, 17))
    out = connectivity.relabel_connected(labels, 0)
    n = _check_label_map(out)
    # The same partition as scipy's 4-connected components of every label value.
    reference = np.zeros(labels.shape, np.int64)
    count = 0
    for value in np.unique(labels):
        pieces, k = ndimage.label(labels == value)
        reference[pieces > 0] = pieces[pieces > 0] + count
        count += k
    assert n == count
    pairs = np.unique(np.stack([out.ravel(), reference.ravel()]), axis=1)
    assert pairs.shape[1] == n  # a bijection between the two partitions
    assert _first_appearance_order(out)


def test_relabel_connected_numbers_by_first_appearance_on_a_large_map():
    # Large enough for OpenCV's parallel labelling, which numbers stripe by stripe.
    labels = np.random.default_rng(0).integers(0, 2, (400, 600))
    out = connectivity.relabel_connected(labels, 0)
    expected = sum(ndimage.label(labels == value)[1] for value in (0, 1))
    assert out.max() + 1 == expected
    assert _first_appearance_order(out)
    # Same partition: equal neighbours keep equal labels, different ones stay different.
    np.testing.assert_array_equal(out[:, 1:] == out[:, :-1], labels[:, 1:] == labels[:, :-1])
    np.testing.assert_array_equal(out[1:] == out[:-1], labels[1:] == labels[:-1])


@pytest.mark.parametrize("min_size", [2, 5, 12])
def test_relabel_connected_merges_small_regions(min_size):
    labels = np.random.default_rng(min_size).integers(0, 4, (20, 24))
    pieces = connectivity.relabel_connected(labels, 0)
    out = connectivity.relabel_connected(labels, min_size)
    n = _check_label_map(out)
    assert np.bincount(out.ravel()).min() >= min_size
    assert n < connectivity.num_segments(pieces)
    # Merging only joins whole pieces: every piece lies in one output region.
    pairs = np.unique(np.stack([pieces.ravel(), out.ravel()]), axis=1)
    assert pairs.shape[1] == connectivity.num_segments(pieces)
    assert _first_appearance_order(out)


def test_relabel_connected_whole_image_below_min_size():
    labels = np.array([[0, 1], [2, 3]])
    np.testing.assert_array_equal(connectivity.relabel_connected(labels, 10), np.zeros((2, 2)))


@pytest.mark.parametrize(
    "labels, min_size, name",
    [
        (np.zeros((2, 2, 2), np.int32), 0, "labels"),
        (np.zeros((0, 3), np.int32), 0, "labels"),
        (np.zeros((3, 3), np.float32), 0, "labels"),
        (np.zeros((3, 3), np.int32), -1, "min_size"),
        (np.zeros((3, 3), np.int32), 2.5, "min_size"),
    ],
)
def test_relabel_connected_bad_input(labels, min_size, name):
    with pytest.raises(ValueError, match=name):
        connectivity.relabel_connected(labels, min_size)


# --- SLIC ---------------------------------------------------------------------------------------


def test_slic_count_and_sizes_on_a_natural_image(bear_256):
    labels = slic.slic(bear_256, num_segments=300, compactness=20.0, sigma=1.0)
    n = _check_label_map(labels)
    assert 0.7 * 300 <= n <= 1.3 * 300
    assert _first_appearance_order(labels)
    # Connectivity enforcement merged everything below half the nominal area.
    assert np.bincount(labels.ravel()).min() >= int(0.5 * 256 * 256 / 300)
    # Compact: no superpixel spans more than a few grid steps.
    step = math.sqrt(256 * 256 / 300)
    for box in ndimage.find_objects(labels + 1):
        assert max(s.stop - s.start for s in box) <= 4 * step


def test_slic_follows_a_sharp_edge():
    image = np.zeros((96, 128, 3), np.uint8)
    image[:, :77] = (200, 30, 40)
    image[:, 77:] = (30, 60, 190)
    labels = slic.slic(image, num_segments=48)
    _check_label_map(labels)
    left, right = set(np.unique(labels[:, :77])), set(np.unique(labels[:, 77:]))
    assert not left & right
    assert len(left) >= 10 and len(right) >= 10


def test_slic_flat_image_is_the_regular_grid():
    labels = slic.slic(np.full((60, 80, 3), 128, np.uint8), num_segments=12)
    ny, nx = slic.grid_shape(60, 80, 12)
    assert (ny, nx) == (3, 4)
    # Equidistant ties break alike everywhere, so the cells come out as 20 x 20 blocks.
    expected = np.arange(12).reshape(3, 4).repeat(20, axis=0).repeat(20, axis=1)
    np.testing.assert_array_equal(labels, expected)


def _naive_slic_cluster(lab, num_segments, compactness, max_iter):
    """float64 SLIC with a dense [pixels, centres] distance matrix (test reference)."""
    h, w = lab.shape[:2]
    step = math.sqrt(h * w / num_segments)
    ny, nx = slic.grid_shape(h, w, num_segments)
    cell_row = np.arange(h) * ny // h
    cell_col = np.arange(w) * nx // w
    lab = lab.astype(np.float64)
    # Seeds: cell middles, moved to the lowest gradient in their 3 x 3 window.
    padded = np.pad(lab, ((1, 1), (1, 1), (0, 0)), mode="edge")
    gradient = np.sum(
        (padded[2:, 1:-1] - padded[:-2, 1:-1]) ** 2 + (padded[1:-1, 2:] - padded[1:-1, :-2]) ** 2,
        axis=-1,
    )
    centres = []
    for i in range(ny):
        rows = np.flatnonzero(cell_row == i)
        for j in range(nx):
            cols = np.flatnonzero(cell_col == j)
            y, x = (rows[0] + rows[-1]) // 2, (cols[0] + cols[-1]) // 2
            best = (gradient[y, x], 0, 0)
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    yy, xx = min(max(y + dy, 0), h - 1), min(max(x + dx, 0), w - 1)
                    if gradient[yy, xx] < best[0]:
                        best = (gradient[yy, xx], yy - y, xx - x)
            y, x = y + best[1], x + best[2]
            centres.append([*lab[y, x], y, x])
    centres = np.array(centres)
    yy, xx = np.mgrid[:h, :w]
    pixels = np.concatenate([lab.reshape(-1, 3), yy.reshape(-1, 1), xx.reshape(-1, 1)], axis=1)
    scale = np.array([1, 1, 1, compactness / step, compactness / step])
    pixel_cell = np.stack([cell_row[yy.ravel()], cell_col[xx.ravel()]], axis=1)
    centre_cell = np.stack(np.divmod(np.arange(ny * nx), nx), axis=1)
    allowed = np.all(np.abs(pixel_cell[:, None] - centre_cell[None]) <= 1, axis=-1)
    for _ in range(max_iter):
        dist = np.sum(((pixels[:, None] - centres[None]) * scale) ** 2, axis=-1)
        choice = np.argmin(np.where(allowed, dist, np.inf), axis=1)
        for k in range(len(centres)):
            if np.any(choice == k):
                centres[k] = pixels[choice == k].mean(axis=0)
    return choice.reshape(h, w)


@pytest.mark.parametrize("shape, num_segments, max_iter", [((30, 41), 12, 1), ((37, 29), 9, 4)])
def test_slic_vectorised_clustering_matches_a_dense_reference(shape, num_segments, max_iter):
    rng = np.random.default_rng(0)
    # Smooth random colours: blobs that the clusters can follow.
    image = cv2.resize(rng.integers(0, 256, (6, 5, 3), np.uint8), shape[::-1])
    lab = cv2.cvtColor(image.astype(np.float32) / 255, cv2.COLOR_RGB2Lab)
    got = slic._cluster(lab, num_segments, 20.0, max_iter)
    expected = _naive_slic_cluster(lab, num_segments, 20.0, max_iter)
    # float32 vs float64: only exact near-ties may differ.
    assert np.mean(got == expected) >= 0.995


def test_slic_is_deterministic(bear_256):
    np.testing.assert_array_equal(slic.slic(bear_256[:64, :96]), slic.slic(bear_256[:64, :96]))


@pytest.mark.parametrize(
    "image, kwargs, name",
    [
        (np.zeros((8, 8), np.uint8), {}, "image"),
        (np.zeros((8, 8, 4), np.uint8), {}, "image"),
        (np.zeros((8, 8, 3), np.float32), {}, "image"),
        (np.zeros((8, 8, 3), np.uint8), {"num_segments": 0}, "num_segments"),
        (np.zeros((8, 8, 3), np.uint8), {"compactness": 0.0}, "compactness"),
        (np.zeros((8, 8, 3), np.uint8), {"sigma": -1.0}, "sigma"),
        (np.zeros((8, 8, 3), np.uint8), {"max_iter": 0}, "max_iter"),
    ],
)
def test_slic_bad_input(image, kwargs, name):
    with pytest.raises(ValueError, match=name):
        slic.slic(image, **kwargs)


# --- ISEC ---------------------------------------------------------------------------------------


def test_isec_flat_image_is_one_segment():
    labels = isec.isec(np.full((64, 80, 3), 90, np.uint8))
    np.testing.assert_array_equal(labels, np.zeros((64, 80), np.int32))


def test_isec_adapts_to_content():
    rng = np.random.default_rng(0)
    image = np.full((96, 128, 3), 120, np.uint8)
    # Right half: blocks of random colours, i.e. many edges.
    blocks = rng.integers(0, 256, (12, 8, 3), np.uint8)
    image[:, 64:] = cv2.resize(blocks, (64, 96), interpolation=cv2.INTER_NEAREST)
    labels = isec.isec(image)
    _check_label_map(labels)
    assert len(np.unique(labels[:, :56])) == 1  # the flat half (away from the seam) is one
    assert len(np.unique(labels[:, 72:])) >= 20


def test_isec_more_edges_give_more_superpixels(bear_240p):
    sharp = isec.isec(bear_240p)
    blurred = isec.isec(cv2.GaussianBlur(bear_240p, (0, 0), 4))
    n_sharp, n_blurred = _check_label_map(sharp), _check_label_map(blurred)
    assert n_sharp > 1.4 * n_blurred
    assert np.bincount(sharp.ravel()).min() >= 20  # min_size
    # A checkerboard of 32-pixel squares: at least one superpixel per square.
    yy, xx = np.mgrid[:96, :128]
    board = np.repeat(((yy // 32 + xx // 32) % 2 * 200 + 20).astype(np.uint8)[..., None], 3, 2)
    assert _check_label_map(isec.isec(board)) >= 12


# Superpixel counts of the authors' ISEC (IvisionLab/SHLS isec_py, f_order=11, nit=4, run with
# scikit-image 0.26) on frame 0 of these DAVIS-2016 480p sequences, measured once offline.
_AUTHORS_COUNTS = {"car-shadow": 747, "parkour": 731}


@pytest.mark.parametrize("sequence", sorted(_AUTHORS_COUNTS))
def test_isec_count_near_the_authors_implementation(sequence):
    labels = isec.isec(_read_rgb(DAVIS / "480p" / sequence / "00000.jpg"))
    n = _check_label_map(labels)
    assert abs(n - _AUTHORS_COUNTS[sequence]) <= 0.15 * _AUTHORS_COUNTS[sequence]


def test_thinning_keeps_topology():
    bar = np.zeros((30, 50), np.uint8)
    bar[10:19, 5:45] = 1
    line = isec._thin(bar, 10)
    assert np.all(line.sum(axis=0)[line.any(axis=0)] == 1)  # one pixel thick
    assert line.sum() >= 25  # the end points are kept: still a long line
    assert cv2.connectedComponents(line, connectivity=8)[0] == 2
    # Three iterations peel three pixels from both sides of a 9-pixel-thick bar.
    np.testing.assert_array_equal(isec._thin(bar, 3)[:, 25], [0] * 13 + [1, 1, 1] + [0] * 14)
    ring = np.zeros((40, 40), np.uint8)
    cv2.circle(ring, (20, 20), 12, 1, -1)
    cv2.circle(ring, (20, 20), 5, 0, -1)
    curve = isec._thin(ring, 20)
    assert curve.sum() < 0.3 * ring.sum()
    assert cv2.connectedComponents(curve, connectivity=8)[0] == 2  # one closed curve
    assert cv2.connectedComponents(1 - curve, connectivity=4)[0] == 3  # the hole survives


@pytest.mark.parametrize(
    "image, kwargs, name",
    [
        (np.zeros((8, 8), np.uint8), {}, "image"),
        (np.zeros((8, 8, 3), np.int32), {}, "image"),
        (np.zeros((8, 8, 3), np.uint8), {"filter_order": 10}, "filter_order"),
        (np.zeros((8, 8, 3), np.uint8), {"filter_order": 1}, "filter_order"),
        (np.zeros((8, 8, 3), np.uint8), {"num_iters": 0}, "num_iters"),
        (np.zeros((8, 8, 3), np.uint8), {"min_size": 0}, "min_size"),
    ],
)
def test_isec_bad_input(image, kwargs, name):
    with pytest.raises(ValueError, match=name):
        isec.isec(image, **kwargs)
