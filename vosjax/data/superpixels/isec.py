"""ISEC superpixels (Iterative over-Segmentation via Edge Clustering), pixel-exact with SHLS.

Mendonça and Oliveira, "ISEC: Iterative over-segmentation via edge clustering", Image and Vision
Computing 80 (2018). SHLS computes its DAVIS test superpixels with the variant in its code base,
`isec_py/isec.py` `isec(f_order=11, nit=4).segment(frame / 255)`. The number of superpixels is not
asked for: it follows the content (few on flat regions, many where edges are dense). This module
computes the released label maps pixel for pixel with numpy, scipy and OpenCV (scikit-image, which
the released code calls, is not a dependency of vosjax; every step below is the scikit-image or
scipy step it replaces, with the same dtype and the same border handling).

Algorithm, on the grey image g (float32 R G B / 255 times (0.2125, 0.7154, 0.0721)):
  contours = 0
  for t = 0 .. num_iters - 1 (coarse to fine):
    1. Canny edges of scale t (`canny`: sigma = 1 + t, zero padding) with thresholds
       high = exp(0.02 t) / 10 and low = high / 10.
    2. Edge density: the number of edge pixels in an s x s box (s = max(3, filter_order - 2 t),
       reflected border), divided by its maximum (scikit-image's rescale_intensity to [0, 1]).
    3. Thin the non-zero density (Guo-Hall, (s - 1) // 2 iterations, on the map padded by s
       reflected pixels), keep the thinned pixels whose density exceeds 0.05 t, and fill the
       4-connected holes smaller than 10 + 5 t pixels (area closing; a background region that
       touches the frame border counts as a hole too).
    4. Add the shell of the result (pixels without a full 3 x 3 neighbourhood, reflected
       border) to `contours`.
  Clean-up: fill holes of `contours` below `area_threshold` pixels, thin them ((filter_order -
  1) // 2 iterations), keep the shell, drop 8-connected contour pieces below `area_threshold`
  pixels (area opening). The superpixels are the 4-connected regions between contours, numbered
  in raster order from 1; a contour pixel then takes the largest label among its 8 neighbours
  (reflected border) and stays 0 when they are all contour pixels. `num_regions` counts the
  regions before that filling.
"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np
from scipy import ndimage

from vosjax.data.superpixels import canny
from vosjax.data.superpixels import slic as slic_lib

# Luma weights of scikit-image's rgb2gray.
_GRAY = (0.2125, 0.7154, 0.0721)
# Bit of each neighbour in the 8-neighbour code, at its (row, col) offset + 1 (scikit-image's
# thinning mask). Guo-Hall's x1..x8 go counter-clockwise from the east: x1 = E, x2 = NE, x3 = N,
# x4 = NW, x5 = W, x6 = SW, x7 = S, x8 = SE; x_i has bit i - 1.
_NEIGHBOUR_BITS = np.array([[8, 4, 2], [16, 0, 1], [32, 64, 128]], np.float32)


def _guo_hall_tables() -> tuple[np.ndarray, np.ndarray]:
    """Deletion look-up tables (code -> 1 if the pixel is removed) of the two sub-iterations.

    Guo and Hall (1989), algorithm A1: a foreground pixel p is removed when
      C(p) = 1 (it joins exactly one 8-connected foreground run around it: removing it does not
        change the topology),
      2 <= min(N1(p), N2(p)) <= 3 (not an end point, not interior), and
      (x2 or x3 or not x8) and x1 is false in the first sub-iteration (it peels the north and
      east sides), (x6 or x7 or not x4) and x5 is false in the second (the south and west sides).
    """
    code = np.arange(256)
    x = [None] + [(code >> i) & 1 for i in range(8)] + [code & 1]  # x[1..8], x[9] = x1
    crossings = sum((1 - x[2 * i - 1]) & (x[2 * i] | x[2 * i + 1]) for i in range(1, 5))
    n1 = sum(x[2 * k - 1] | x[2 * k] for k in range(1, 5))
    n2 = sum(x[2 * k] | x[2 * k + 1] for k in range(1, 5))
    n = np.minimum(n1, n2)
    common = (crossings == 1) & (n >= 2) & (n <= 3)
    first = common & (((x[2] | x[3] | (1 - x[8])) & x[1]) == 0)
    second = common & (((x[6] | x[7] | (1 - x[4])) & x[5]) == 0)
    return first.astype(np.uint8), second.astype(np.uint8)


_THIN_TABLES = _guo_hall_tables()


def thin(mask: np.ndarray, iterations: int) -> np.ndarray:
    """Guo-Hall thinning (scikit-image's `thin`): at most `iterations` full iterations, the
    outside of the image counts as background.

    Args:
      mask: bool [H, W].
      iterations: number of full iterations (two sub-iterations each), >= 1; stops earlier
        when an iteration removes nothing.

    Returns:
      bool [H, W].
    """
    skel = mask.astype(np.uint8)
    for _ in range(iterations):
        removed = 0
        for table in _THIN_TABLES:
            code = cv2.filter2D(skel, cv2.CV_8U, _NEIGHBOUR_BITS, borderType=cv2.BORDER_CONSTANT)
            remove = cv2.LUT(code, table) & skel
            count = cv2.countNonZero(remove)
            if count:
                skel ^= remove
                removed += count
        if not removed:
            break
    return skel.astype(bool)


def _small_components(mask: np.ndarray, connectivity: int, min_area: int) -> np.ndarray:
    """bool [H, W]: pixels of the `connectivity`-connected components of `mask` with fewer than
    `min_area` pixels. A component that is the whole image is no exception: scikit-image's
    max-tree filters set a root below the threshold to 0 too."""
    count, ids, stats, _ = cv2.connectedComponentsWithStats(
        mask.astype(np.uint8), connectivity=connectivity, ltype=cv2.CV_32S
    )
    area = stats[:, cv2.CC_STAT_AREA]
    small = area < min_area
    small[0] = False  # OpenCV's label 0 is the background
    return small[ids]


def area_closing(mask: np.ndarray, area_threshold: int, connectivity: int = 4) -> np.ndarray:
    """Binary area closing (scikit-image's on a two-level image): background regions below
    `area_threshold` pixels, including those touching the border (and the whole image, if it
    is all background and smaller), become foreground."""
    return mask | _small_components(~mask, connectivity, area_threshold)


def area_opening(mask: np.ndarray, area_threshold: int, connectivity: int = 8) -> np.ndarray:
    """Binary area opening: foreground regions below `area_threshold` pixels are removed."""
    return mask & ~_small_components(mask, connectivity, area_threshold)


def _box_sum(values: np.ndarray, size: int) -> np.ndarray:
    """Sum over a size x size box with a reflected border (scipy's convolve with a box of ones,
    mode 'reflect'); exact for the small integer values it is used on."""
    return cv2.boxFilter(values, -1, (size, size), normalize=False, borderType=cv2.BORDER_REFLECT)


def shell(mask: np.ndarray) -> np.ndarray:
    """bool [H, W]: foreground pixels whose 3 x 3 neighbourhood (reflected border) is not all
    foreground (the released `shell_kernel`'s shell; its kernel is the rest)."""
    full = _box_sum(mask.astype(np.float32), 3) == 9.0
    return mask & ~full


def thin_values(values: np.ndarray, size: int) -> np.ndarray:
    """`values` [H, W] float32 times the thinned map of `values > 0`, thinned for (size - 1) // 2
    iterations on the map padded by `size` reflected pixels (the released `thin_edges`)."""
    padded = np.pad(values > 0, size, mode="reflect")
    kept = thin(padded, (size - 1) // 2).astype(np.float32)[size:-size, size:-size]
    return values * kept


def rescale_to_unit(values: np.ndarray) -> np.ndarray:
    """float32 (v - min) / (max - min) (scikit-image's rescale_intensity to (0, 1)); a constant
    map is clipped to [0, 1] instead."""
    low, high = float(values.min()), float(values.max())
    if low == high:
        return np.clip(values, 0.0, 1.0).astype(values.dtype)
    dtype = values.dtype.type
    return ((values - dtype(low)) / dtype(high - low)).astype(values.dtype)


def fill_contours(labels: np.ndarray) -> np.ndarray:
    """Label-0 pixels take the largest label among their 8 neighbours (reflected border); the
    others keep theirs (the released `remove_borders`)."""
    padded = np.pad(labels, 1, mode="reflect")
    h, w = labels.shape
    largest = np.zeros_like(labels)
    for dy in range(3):
        for dx in range(3):
            if dy != 1 or dx != 1:
                np.maximum(largest, padded[dy : dy + h, dx : dx + w], out=largest)
    return np.where(labels == 0, largest, labels)


@dataclasses.dataclass(frozen=True)
class Segmentation:
    """What the released `isec.segment` returns."""

    labels: np.ndarray  # int32 [H, W], 1..num_regions; 0 where a contour pixel found no label
    num_regions: int  # regions found between the contours (before the contour filling)


def _check_int(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name}: expected an int >= {low}, got {value!r}")


def segment(
    image: np.ndarray,
    *,
    filter_order: int = 11,
    num_iters: int = 4,
    area_threshold: int = 20,
) -> Segmentation:
    """ISEC as the released `isec(f_order, nit, at).segment`, with its 1-based labels.

    Args:
      image: [H, W, 3] RGB, uint8 (converted to float32 / 255, as the released loaders do) or
        float32 / float64 in [0, 1].
      filter_order: the side of the first (coarsest) edge-density box, >= 3; later iterations
        use filter_order - 2 t (at least 3).
      num_iters: the number of coarse-to-fine iterations (SHLS: 4), at most 6 (the released
        Canny computes 6 scales).
      area_threshold: the hole and contour-piece size of the clean-up (SHLS: 20).

    Returns:
      `Segmentation` (labels 1-based, 0 = contour pixel left without a label).

    Raises:
      ValueError: a bad `image` (shape, dtype) or a bad parameter, named in the message.
    """
    slic_lib.check_image(image)
    _check_int("filter_order", filter_order, 3)
    _check_int("num_iters", num_iters, 1)
    _check_int("area_threshold", area_threshold, 1)
    if num_iters > 6:
        raise ValueError(f"num_iters: expected at most 6 (the Canny scales), got {num_iters}")
    rgb = slic_lib.to_float(image)
    gray = np.asarray(rgb @ np.array(_GRAY, dtype=rgb.dtype), dtype=np.float32)

    contours = np.zeros(gray.shape, bool)
    for t in range(num_iters):
        high = math.exp(0.02 * t) / 10
        edges = canny.hysteresis(canny.scale(gray, 1.0 + t), high=high, low=0.1 * high)
        size = max(3, filter_order - 2 * t)
        density = rescale_to_unit(_box_sum(edges.astype(np.float32), size))
        density = thin_values(density, size)
        band = density > np.float32(0.05 * t)
        band = area_closing(band, 10 + 5 * t, connectivity=4)
        contours |= shell(band)

    contours = area_closing(contours, area_threshold, connectivity=4)
    contours = thin_values(contours.astype(np.float32), filter_order) > 0
    contours = shell(contours)
    contours = area_opening(contours, area_threshold, connectivity=8)
    regions, num = ndimage.label(~contours)  # 4-connected, numbered in raster order
    return Segmentation(fill_contours(regions.astype(np.int32)), int(num))


def isec(
    image: np.ndarray,
    *,
    filter_order: int = 11,
    num_iters: int = 4,
    area_threshold: int = 20,
) -> np.ndarray:
    """ISEC superpixels of an RGB image, 0-based: the released labels minus one.

    Args: as `segment`.

    Returns:
      int32 [H, W] labels 0..N-1; -1 for the (rare) contour pixels whose 8 neighbours are all
      contour pixels (label 0 in the released map), which callers treat as "no superpixel".
    """
    result = segment(
        image, filter_order=filter_order, num_iters=num_iters, area_threshold=area_threshold
    )
    return result.labels - 1
