"""SLIC superpixels (Achanta et al., TPAMI 2012): the SHLS training superpixels, pixel-exact.

SHLS's released training loaders call scikit-image's
`slic(img, n_segments=300, compactness=20, sigma=1, multichannel=True, convert2lab=True) + 1`
on the float32 RGB image in [0, 1]. This module computes the same label map, pixel for pixel,
with numpy and scipy (scikit-image is not a dependency of vosjax): every float operation below
is the one scikit-image 0.26 performs, in the same dtype and the same order, so that ties and
roundings fall the same way. `slic` returns scikit-image's `start_label=0` labels, i.e. the
released labels minus one.

Steps (the names in brackets are the scikit-image steps they reproduce):
1. [img_as_float, rescale] uint8 images become float32 / 255 (the loaders' conversion); the image
   is then shifted and scaled to min 0, max 1.
2. [rgb2lab] sRGB -> XYZ -> CIELAB (D65, 2 degree observer) in the image's dtype.
3. [gaussian] separable Gaussian of the Lab image over rows and columns, mode 'reflect',
   truncated at 4 sigma (scipy.ndimage.gaussian_filter, float32 intermediate).
4. [regular_grid] seeds on a regular grid with about `num_segments` points, step S; the number
   of seeds K can differ from `num_segments` (289 for 300 on 256 x 256). The seeds' colour
   starts at 0 (not the image colour), so the first assignment is pulled towards dark pixels.
5. [_slic_cython] `max_iter` rounds of: every centre k, in increasing k, claims the pixels of
   its window (+-2 S' around it, S' the grid step for K seeds, clipped to the image) whose
   distance d = (dy^2 + dx^2) / S^2 + |lab / m - c|^2 is strictly smaller than their best so far
   (ties stay with the lower k); then every centre moves to the mean (y, x, colour) of its
   pixels, summed in raster order in the image dtype. A centre left with no pixel becomes NaN
   and never claims a pixel again.
6. [_enforce_label_connectivity_cython] `connectivity.enforce_connectivity` with
   min_size = int(0.5 H W / K), max_size = int(3 H W / K).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from vosjax.data.superpixels import connectivity

# sRGB (D65) -> CIE XYZ, and the D65 / 2 degree reference white (scikit-image's constants).
_XYZ_FROM_RGB = np.array(
    [
        [0.412453, 0.357580, 0.180423],
        [0.212671, 0.715160, 0.072169],
        [0.019334, 0.119193, 0.950227],
    ]
)
_D65_WHITE = (0.95047, 1.0, 1.08883)
# scikit-image's slic defaults that the released loaders keep.
MIN_SIZE_FACTOR = 0.5
MAX_SIZE_FACTOR = 3.0
GAUSSIAN_TRUNCATE = 4.0


def check_image(image: np.ndarray) -> None:
    """Raises ValueError unless `image` is [H, W, 3] RGB: uint8, or float in [0, 1]."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image: expected a numpy array, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image: expected shape [H, W, 3] (RGB), got {image.shape}")
    if image.dtype != np.uint8 and image.dtype not in (np.float32, np.float64):
        raise ValueError(f"image: expected dtype uint8, float32 or float64, got {image.dtype}")


def to_float(image: np.ndarray) -> np.ndarray:
    """uint8 -> float32 / 255 (as the released loaders convert frames); float stays as it is."""
    if image.dtype == np.uint8:
        return image.astype(np.float32) / np.float32(255)
    return image


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65, 2 degree observer) of float RGB [..., 3] in [0, 1], in rgb's dtype.

    scikit-image's rgb2lab arithmetic: the sRGB gamma (power 2.4 above 0.04045, linear below),
    a matrix product with the XYZ matrix (the caller keeps scikit-image's array shape so that
    the product runs the same BLAS path), the white-point division and the cube root above
    0.008856 (linear below).
    """
    dtype = rgb.dtype
    linear = rgb.copy()
    high = linear > 0.04045
    linear[high] = np.power((linear[high] + 0.055) / 1.055, 2.4)
    linear[~high] /= 12.92
    xyz = linear @ _XYZ_FROM_RGB.T.astype(dtype)
    xyz = xyz / np.asarray(_D65_WHITE, dtype=dtype)
    high = xyz > 0.008856
    xyz[high] = np.cbrt(xyz[high])
    xyz[~high] = 7.787 * xyz[~high] + 16.0 / 116.0
    fx, fy, fz = xyz[..., 0], xyz[..., 1], xyz[..., 2]
    return np.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def grid_steps(shape: tuple[int, ...], num_points: int) -> tuple[list[int], list[int]]:
    """(starts, steps) per axis of scikit-image's `regular_grid(shape, num_points)`.

    The step is (prod(shape) / num_points)^(1 / ndim) on every axis, except that axes shorter
    than it (checked from the shortest) take their full length and the remaining axes share the
    rest; starts are step // 2 (before rounding), steps the rounded step. An array with at most
    `num_points` elements gets every position (start 0, step 1).
    """
    dims = np.asarray(shape)
    ndim = len(shape)
    size = float(np.prod(dims))
    if size <= num_points:
        return [0] * ndim, [1] * ndim
    order = np.argsort(dims)
    sorted_dims = dims[order]
    steps = np.full(ndim, (size / num_points) ** (1.0 / ndim))
    if (sorted_dims < steps).any():
        for axis in range(ndim):
            steps[axis] = sorted_dims[axis]
            rest = float(np.prod(sorted_dims[axis + 1 :]))
            steps[axis + 1 :] = (rest / num_points) ** (1.0 / (ndim - axis - 1))
            if (sorted_dims >= steps).all():
                break
    starts = np.empty(ndim, int)
    rounded = np.empty(ndim, int)
    starts[order] = (steps // 2).astype(int)
    rounded[order] = np.round(steps).astype(int)
    return [int(s) for s in starts], [int(s) for s in rounded]


def _windows(centre: np.ndarray, step: int, length: int) -> tuple[np.ndarray, np.ndarray]:
    """[lo, hi) of every centre's window on one axis, with the C arithmetic of scikit-image:
    lo = (Py_ssize_t) max(c - 2 step, 0), hi = (Py_ssize_t) min(c + 2 step + 1, length), in the
    centre's dtype (truncation toward zero)."""
    dtype = centre.dtype
    lo = np.maximum(centre - dtype.type(2 * step), 0).astype(np.int64)
    hi = np.minimum(centre + dtype.type(2 * step) + dtype.type(1), length).astype(np.int64)
    return lo, hi


def _assign(
    image: np.ndarray,
    centres: np.ndarray,
    steps: tuple[int, int],
    spatial_weight: np.floating,
    labels: np.ndarray,
) -> None:
    """One assignment round: centre k claims the pixels of its window that it is strictly
    closer to than every centre before it (ties stay with the lower k). `labels` [H, W] keeps
    its value where no window reaches (scikit-image never resets it).

    The distance is scikit-image's float expression, in the image dtype and in its order:
    ((dz + dy^2) + dx^2) * weight (dz = 0 in 2-D, so 0 + dy^2 is exact) plus the colour term
    ((0 + t0^2) + t1^2) + t2^2.
    """
    h, w = labels.shape
    dtype = image.dtype
    distance = np.full((h, w), np.inf, dtype)
    live = np.flatnonzero(~np.isnan(centres).any(axis=1))
    cy, cx = centres[live, 1], centres[live, 2]
    y0, y1 = _windows(cy, steps[0], h)
    x0, x1 = _windows(cx, steps[1], w)
    dy2 = cy[:, None] - np.arange(h, dtype=dtype)  # [K, H]: rows' offsets from every centre
    dy2 *= dy2
    dx2 = cx[:, None] - np.arange(w, dtype=dtype)
    dx2 *= dx2
    planes = [np.ascontiguousarray(image[..., c]) for c in range(3)]
    for i, k in enumerate(live):
        rows, cols = slice(y0[i], y1[i]), slice(x0[i], x1[i])
        dist = dy2[i, rows][:, None] + dx2[i, cols][None, :]
        dist *= spatial_weight
        colour = planes[0][rows, cols] - centres[k, 3]
        colour *= colour
        for c in (1, 2):
            t = planes[c][rows, cols] - centres[k, 3 + c]
            t *= t
            colour += t
        dist += colour
        best = distance[rows, cols]
        closer = dist < best
        np.copyto(best, dist, where=closer)
        np.copyto(labels[rows, cols], k, where=closer)


def _update(image: np.ndarray, labels: np.ndarray, num: int) -> np.ndarray:
    """Centres [num, 6] (z, y, x, colour): means of their pixels, summed in raster order in the
    image dtype (np.add.at adds sequentially); 0 / 0 = NaN for a centre without pixels."""
    h, w = labels.shape
    dtype = image.dtype
    flat = labels.ravel()
    keep = flat >= 0
    flat = flat[keep]
    sums = np.zeros((num, 6), dtype)
    rows, cols = np.divmod(np.arange(h * w)[keep], w)
    np.add.at(sums[:, 1], flat, rows.astype(dtype))
    np.add.at(sums[:, 2], flat, cols.astype(dtype))
    pixels = image.reshape(-1, 3)[keep]
    for c in range(3):
        np.add.at(sums[:, 3 + c], flat, pixels[:, c])
    count = np.bincount(flat, minlength=num).astype(dtype)
    with np.errstate(invalid="ignore", divide="ignore"):
        return sums / count[:, None]


def slic(
    image: np.ndarray,
    *,
    num_segments: int = 300,
    compactness: float = 20.0,
    sigma: float = 1.0,
    max_iter: int = 10,
) -> np.ndarray:
    """SLIC superpixels of an RGB image, as scikit-image 0.26 computes them.

    Args:
      image: [H, W, 3] RGB, uint8 (converted to float32 / 255) or float32 / float64 in [0, 1]
        (the released loaders pass float32 frames after resizing).
      num_segments: the wanted number of superpixels (the seed grid has about this many).
      compactness: m, the weight of the spatial distance against the Lab colour distance.
      sigma: Gaussian smoothing (pixels) of the Lab image before clustering; 0 for none.
      max_iter: the number of assignment / update rounds.

    Returns:
      int32 [H, W] labels 0..N-1 (scikit-image's start_label=0; the released code adds 1),
      numbered by first appearance in raster order.

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

    rgb = to_float(image).copy()
    low, high = rgb.min(), rgb.max()
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError("image: expected finite values")
    rgb -= low
    if high != low:
        rgb /= high - low
    dtype = rgb.dtype
    h, w = rgb.shape[:2]
    # scikit-image works on [depth=1, H, W, C]; the same shape keeps the same BLAS path.
    lab = rgb_to_lab(rgb[None])
    sigma_zyx = np.array([sigma, sigma, sigma], dtype=dtype)
    if (sigma_zyx > 0).any():
        lab = ndimage.gaussian_filter(
            lab,
            [0.0, *sigma_zyx[1:], 0.0],
            mode="reflect",
            truncate=GAUSSIAN_TRUNCATE,
        )
    lab = np.ascontiguousarray(lab * (1.0 / compactness), dtype=dtype)[0]

    starts, steps = grid_steps((1, h, w), int(num_segments))
    seed_y, seed_x = np.meshgrid(
        np.arange(starts[1], h, steps[1]), np.arange(starts[2], w, steps[2]), indexing="ij"
    )
    num = seed_y.size
    centres = np.zeros((num, 6), dtype)
    centres[:, 1], centres[:, 2] = seed_y.ravel(), seed_x.ravel()
    # The distance scale S is the grid step for `num_segments`; the search windows use the grid
    # step for the K seeds actually placed (scikit-image recomputes it from K).
    step = np.float32(max(float(s) for s in steps))
    spatial_weight = dtype.type(1.0 / float(step * step))
    window_steps = grid_steps((1, h, w), num)[1][1:]

    labels = np.full((h, w), -1, np.int64)
    for it in range(max_iter):
        _assign(lab, centres, window_steps, spatial_weight, labels)
        if it + 1 < max_iter:
            centres = _update(lab, labels, num)

    size = h * w / num
    return connectivity.enforce_connectivity(
        labels, int(MIN_SIZE_FACTOR * size), int(MAX_SIZE_FACTOR * size)
    )
