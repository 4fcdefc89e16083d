"""SLIC superpixels (Achanta et al., TPAMI 2012), vectorised with numpy and OpenCV.

The SHLS training superpixels: `slic(image, num_segments=300, compactness=20, sigma=1)` on
256 x 256 RGB frames, with the meaning of scikit-image's `slic` arguments.

Algorithm:
1. Smooth the RGB image (Gaussian, `sigma`) and convert it to CIELAB (D65; L in [0, 100]).
2. Lay a regular ny x nx grid of cells over the image with about `num_segments` cells of side
   S = sqrt(H W / num_segments) (ny = round(H / S), nx = round(W / S)); one centre per cell, at
   its middle, then moved to the lowest Lab gradient position in its 3 x 3 neighbourhood.
3. Repeat `max_iter` times: assign every pixel to the nearest centre among the 9 centres of its
   own cell and the 8 cells around it, with d^2 = d_lab^2 + (d_xy / S)^2 m^2 (m = compactness);
   then move every centre to the mean (L, a, b, y, x) of its pixels. While a centre stays in its
   cell, the 3 x 3 cells around a pixel hold every centre whose 2S x 2S search window (the
   paper's) covers the pixel, and a few a little farther (up to 1.5 S per axis).
4. Enforce connectivity: split labels into 4-connected regions and merge regions smaller than
   half the nominal segment area H W / num_segments into a neighbour (scikit-image's default
   `min_size_factor=0.5`).

Vectorisation: the pixels are gathered once into a [cells, 7, P] array (P = the largest cell
area; smaller cells are padded with zero columns) of augmented features [f, 1, |f|^2], with
f = (L, a, b, y m/S, x m/S) and y, x measured from the cell's corner. With candidate rows
[-2c, |c|^2, 1], the squared distances of every pixel to its 9 candidate centres are one batched
matrix product [cells, 9, 7] x [cells, 7, P]; the argmin packs the candidate index into the low
mantissa bits so that a plain minimum finds it; the centre update is a second product (one-hot
assignments [cells, 9, P] times features [cells, P, 6]) scattered onto the 3 x 3 cells.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from vosjax.data.superpixels import connectivity

# The 3 x 3 neighbourhood of a grid cell, as (dy, dx) offsets.
_OFFSETS = tuple((dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
# scikit-image's min_size_factor: regions below this fraction of H W / num_segments are merged.
_MIN_SIZE_FACTOR = 0.5
# The squared distance of a missing candidate (outside the grid); finite, so that the matrix
# product never computes 0 * inf.
_FAR = 1e30


def check_image(image: np.ndarray) -> None:
    """Raises ValueError unless `image` is a uint8 [H, W, 3] RGB image."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image: expected a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image: expected shape [H, W, 3] (RGB), got {image.shape}")
    if image.dtype != np.uint8:
        raise ValueError(f"image: expected dtype uint8, got {image.dtype}")


def _cell_slots(length: int, cells: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Splits range(length) into `cells` runs whose sizes differ by at most one.

    Returns:
      start [cells] (first index of each run), index [cells, size] (the positions of each run,
      padded by repeating its last one), valid [cells, size], size (the longest run).
    """
    start = -(-np.arange(cells + 1) * length // cells)  # ceil(i * length / cells)
    size = int(np.max(np.diff(start)))
    index = start[:-1, None] + np.arange(size)[None, :]
    valid = index < start[1:, None]
    return start[:-1], np.minimum(index, start[1:, None] - 1), valid, size


def _lowest_gradient(lab: np.ndarray, y: np.ndarray, x: np.ndarray) -> tuple[np.ndarray, ...]:
    """Moves seeds (y, x) to the lowest |Lab gradient|^2 position in their 3 x 3 window.

    The gradient is |I(y+1, x) - I(y-1, x)|^2 + |I(y, x+1) - I(y, x-1)|^2 (Achanta et al.),
    evaluated at the 9 candidate positions only, with the border replicated.
    """
    h, w = lab.shape[:2]
    dy = np.array([o[0] for o in _OFFSETS])
    dx = np.array([o[1] for o in _OFFSETS])
    ys = np.clip(y[:, None] + dy, 0, h - 1)  # [K, 9]
    xs = np.clip(x[:, None] + dx, 0, w - 1)

    def at(oy: int, ox: int) -> np.ndarray:
        return lab[np.clip(ys + oy, 0, h - 1), np.clip(xs + ox, 0, w - 1)]

    grad = np.sum((at(1, 0) - at(-1, 0)) ** 2 + (at(0, 1) - at(0, -1)) ** 2, axis=-1)
    # Ties (flat regions) keep the seed where it is: its offset (0, 0) is looked at first.
    order = np.array([4, 0, 1, 2, 3, 5, 6, 7, 8])
    best = order[np.argmin(grad[:, order], axis=1)]
    rows = np.arange(len(y))
    return ys[rows, best], xs[rows, best]


def grid_shape(height: int, width: int, num_segments: int) -> tuple[int, int]:
    """The (rows, cols) of the SLIC grid: cells of side about sqrt(H W / num_segments)."""
    step = math.sqrt(height * width / num_segments)
    return min(height, max(1, round(height / step))), min(width, max(1, round(width / step)))


def _cluster(lab: np.ndarray, num_segments: int, compactness: float, max_iter: int) -> np.ndarray:
    """SLIC's k-means on a float32 [H, W, 3] Lab image.

    Returns:
      int [H, W]: the grid cell (row * nx + col) of every pixel's centre, before connectivity
      enforcement.
    """
    h, w = lab.shape[:2]
    step = math.sqrt(h * w / num_segments)
    ny, nx = grid_shape(h, w, num_segments)
    row_start, row_index, row_valid, sy = _cell_slots(h, ny)
    col_start, col_index, col_valid, sx = _cell_slots(w, nx)
    cells, slots = ny * nx, sy * sx
    spatial = np.float32(compactness / step)

    # Pixel features per cell slot, [cells, 7, P]: rows (f, 1, |f|^2), f = (L, a, b, y m/S,
    # x m/S) with y, x measured from the cell's corner (small numbers keep the float32 expansion
    # |f - c|^2 = |f|^2 - 2 f.c + |c|^2 accurate). Padding slots are all zeros: they then add
    # nothing to the centre update, and their (meaningless) labels are never read.
    rel_y = np.broadcast_to(
        (row_index - row_start[:, None])[:, None, :, None], (ny, nx, sy, sx)
    ).reshape(cells, slots)
    rel_x = np.broadcast_to(
        (col_index - col_start[:, None])[None, :, None, :], (ny, nx, sy, sx)
    ).reshape(cells, slots)
    flat = (row_index[:, None, :, None] * w + col_index[None, :, None, :]).reshape(cells, slots)
    valid = (row_valid[:, None, :, None] & col_valid[None, :, None, :]).reshape(cells, slots)
    feats = np.empty((cells, 7, slots), np.float32)
    for channel in range(3):
        feats[:, channel] = lab[..., channel].ravel()[flat]
    feats[:, 3] = rel_y * spatial
    feats[:, 4] = rel_x * spatial
    feats[:, 5] = 1.0
    feats[:, :6] *= valid[:, None, :]
    feats[:, 6] = np.einsum("ckp,ckp->cp", feats[:, :5], feats[:, :5])
    feats_sum = feats[:, :6].transpose(0, 2, 1)  # [cells, P, 6] for the update: (f, count)

    # Centres (absolute L, a, b, y, x in feature units) on a (ny + 2) x (nx + 2) grid whose
    # border ring stays empty: a candidate there is _FAR away.
    seed_y = (row_start + np.r_[row_start[1:], h] - 1) // 2
    seed_x = (col_start + np.r_[col_start[1:], w] - 1) // 2
    seed_y, seed_x = np.meshgrid(seed_y, seed_x, indexing="ij")
    seed_y, seed_x = _lowest_gradient(lab, seed_y.ravel(), seed_x.ravel())
    centres = np.zeros((ny + 2, nx + 2, 5))
    present = np.zeros((ny + 2, nx + 2), bool)
    present[1:-1, 1:-1] = True
    inner = centres[1:-1, 1:-1]
    inner[..., :3] = lab[seed_y, seed_x].reshape(ny, nx, 3)
    inner[..., 3] = (seed_y * spatial).reshape(ny, nx)
    inner[..., 4] = (seed_x * spatial).reshape(ny, nx)
    corner = np.zeros((ny, nx, 5))
    corner[..., 3] = (row_start * spatial)[:, None]
    corner[..., 4] = (col_start * spatial)[None, :]

    def around(grid: np.ndarray) -> np.ndarray:
        """[ny + 2, nx + 2, ...] -> [ny, nx, 9, ...]: the 3 x 3 cells around every cell."""
        return np.stack(
            [grid[1 + dy : ny + 1 + dy, 1 + dx : nx + 1 + dx] for dy, dx in _OFFSETS], axis=2
        )

    ok = around(present)
    index = np.arange(9, dtype=np.int32)[None, :, None]
    buffer = np.empty((cells, 9, slots), np.float32)
    for _ in range(max_iter):
        # Candidate rows [-2c, |c|^2, 1] (c relative to the cell's corner), [cells, 9, 7].
        cand = around(centres) - corner[:, :, None, :]
        weights = np.zeros((ny, nx, 9, 7), np.float32)
        weights[..., :5] = -2 * cand
        weights[..., 5] = np.sum(cand * cand, axis=-1)
        weights[..., 6] = 1.0
        weights[~ok] = (0, 0, 0, 0, 0, _FAR, 0)
        # |f - c|^2 [cells, 9, P]. One preallocated buffer serves as distances, keys and one-hot
        # assignments in turn: fresh multi-megabyte arrays every iteration cost page faults.
        dist = np.matmul(weights.reshape(cells, 9, 7), feats, out=buffer)
        # argmin over the 9 candidates, fast: write the candidate index into the 4 low mantissa
        # bits and take the minimum. The int32 order of the bits of floats >= 0 is their order;
        # a rounding-negative distance (a near-exact hit) still sorts below every positive one.
        # Ties within 2^-19 relatively go to the lower index.
        keys = dist.view(np.int32)
        np.bitwise_and(keys, ~15, out=keys)
        np.bitwise_or(keys, index, out=keys)
        choice = np.bitwise_and(keys.min(axis=1), 15)  # [cells, P]
        onehot = np.equal(choice[:, None, :], index, out=buffer, casting="unsafe")
        sums = np.matmul(onehot, feats_sum).astype(np.float64)  # [cells, 9, 6]
        sums[..., :5] += sums[..., 5:] * corner.reshape(cells, 1, 5)
        sums = sums.reshape(ny, nx, 9, 6)
        total = np.zeros((ny + 2, nx + 2, 6))
        for k, (dy, dx) in enumerate(_OFFSETS):
            total[1 + dy : ny + 1 + dy, 1 + dx : nx + 1 + dx] += sums[:, :, k]
        count = total[..., 5:]
        np.divide(total[..., :5], count, out=centres, where=count > 0)

    cell_id = np.pad(np.arange(cells).reshape(ny, nx), 1)
    cell_labels = np.take_along_axis(around(cell_id).reshape(cells, 9), choice, axis=1)
    cell_labels = cell_labels.reshape(ny, nx, sy, sx)
    row_cell = np.repeat(np.arange(ny), np.diff(np.r_[row_start, h]))
    col_cell = np.repeat(np.arange(nx), np.diff(np.r_[col_start, w]))
    return cell_labels[
        row_cell[:, None],
        col_cell[None, :],
        (np.arange(h) - row_start[row_cell])[:, None],
        (np.arange(w) - col_start[col_cell])[None, :],
    ]


def slic(
    image: np.ndarray,
    *,
    num_segments: int = 300,
    compactness: float = 20.0,
    sigma: float = 1.0,
    max_iter: int = 10,
) -> np.ndarray:
    """SLIC superpixels of an RGB image.

    Args:
      image: uint8 [H, W, 3] RGB.
      num_segments: the wanted number of superpixels (the grid has about this many cells;
        connectivity enforcement can lower the final count a little).
      compactness: m, the weight of the spatial distance against the Lab colour distance.
      sigma: standard deviation (pixels) of the Gaussian smoothing before clustering; 0 for none.
      max_iter: the number of assignment / update iterations.

    Returns:
      int32 [H, W] labels 0..N-1, each label one 4-connected region, numbered by first
      appearance in raster order.

    Raises:
      ValueError: a bad `image` (shape, dtype) or a bad parameter, named in the message.
    """
    check_image(image)
    if isinstance(num_segments, bool) or not isinstance(num_segments, (int, np.integer)):
        raise ValueError(f"num_segments: expected an int >= 1, got {num_segments!r}")
    if num_segments < 1:
        raise ValueError(f"num_segments: expected an int >= 1, got {num_segments}")
    if not compactness > 0:
        raise ValueError(f"compactness: expected a number > 0, got {compactness}")
    if not sigma >= 0:
        raise ValueError(f"sigma: expected a number >= 0, got {sigma}")
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 1:
        raise ValueError(f"max_iter: expected an int >= 1, got {max_iter!r}")

    h, w = image.shape[:2]
    rgb = image.astype(np.float32) * np.float32(1 / 255)
    if sigma > 0:
        rgb = cv2.GaussianBlur(
            rgb, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT
        )
    labels = _cluster(cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab), num_segments, compactness, max_iter)
    min_size = int(_MIN_SIZE_FACTOR * h * w / num_segments)
    return connectivity.relabel_connected(labels, min_size)
