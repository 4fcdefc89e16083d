"""The Canny edge detector of SHLS's ISEC (`isec_py/my_canny.py`), pixel-exact.

The released ISEC builds its own multi-scale Canny on scikit-image's: the scales are computed
once (Gaussian smoothing, Sobel gradients, non-maximum suppression) and every ISEC iteration
thresholds one of them. What it does, which a port must copy:
- Gaussian smoothing with sigma = 1 + scale, zero padding (`mode='constant'`: the frame border
  is an edge), truncated at 4 sigma (scipy.ndimage.gaussian_filter in float32);
- scipy's 3 x 3 Sobel (mode 'reflect') and the L2 magnitude `hypot(d/drow, d/dcol)`;
- non-maximum suppression that interpolates the magnitude between the two neighbours on each
  side of the gradient direction (scikit-image's, not the 4-direction quantisation of OpenCV),
  and never keeps the outermost pixel ring nor a zero magnitude;
- hysteresis: 8-connected runs of maxima >= low that hold a maximum >= high. The thresholds
  are compared in float32 (numpy 2 casts the Python float to the array's dtype).
"""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

GAUSSIAN_TRUNCATE = 4.0
# (weight numerator, weight denominator, first neighbour, second neighbour) of the four
# direction sectors, in the order in which scikit-image writes them: a pixel on the boundary of
# two sectors (|d/drow| == |d/dcol|, or a zero component) takes the verdict of the later one.
# On the "plus" side the magnitude compared is w * m[p + b] + (1 - w) * m[p + a]; on the
# "minus" side the same at p - a, p - b. `rows_major` (|d/drow| >= |d/dcol|) and `same_sign`
# (the two derivatives have the same sign, counting 0 as either) select the sector's pixels.
_SECTORS = (
    # (rows_major, same_sign, a, b)
    (True, True, (1, 0), (1, 1)),
    (False, True, (0, 1), (1, 1)),
    (False, False, (0, 1), (-1, 1)),
    (True, False, (-1, 0), (-1, 1)),
)


def _shifted(values: np.ndarray, offset: tuple[int, int]) -> np.ndarray:
    """values[r + dr, c + dc] at every interior pixel (r, c) (the outer ring is dropped)."""
    h, w = values.shape
    dr, dc = offset
    return values[1 + dr : h - 1 + dr, 1 + dc : w - 1 + dc]


def non_maximum_suppression(
    d_row: np.ndarray, d_col: np.ndarray, magnitude: np.ndarray
) -> np.ndarray:
    """bool [H, W]: pixels whose magnitude is a maximum across the edge (interpolated).

    Candidates are the interior pixels with magnitude > 0; sectors are judged in order and a
    pixel in two of them keeps the later verdict, as in scikit-image.
    """
    keep = np.zeros(magnitude.shape, bool)
    if min(magnitude.shape) < 3:
        return keep
    inner = (slice(1, -1), slice(1, -1))
    m = magnitude[inner]
    r, c = d_row[inner], d_col[inner]
    a_row, a_col = np.abs(r), np.abs(c)
    same = ((r >= 0) & (c >= 0)) | ((r <= 0) & (c <= 0))
    opposite = ((r <= 0) & (c >= 0)) | ((r >= 0) & (c <= 0))
    candidate = m > 0
    out = keep[inner]
    for rows_major, same_sign, a, b in _SECTORS:
        sector = candidate & (same if same_sign else opposite)
        sector &= (a_row >= a_col) if rows_major else (a_row <= a_col)
        num, den = (a_col, a_row) if rows_major else (a_row, a_col)
        weight = num[sector] / den[sector]
        rest = 1 - weight
        plus = _shifted(magnitude, b)[sector] * weight + _shifted(magnitude, a)[sector] * rest
        neg_a, neg_b = (-a[0], -a[1]), (-b[0], -b[1])
        minus = (
            _shifted(magnitude, neg_b)[sector] * weight + _shifted(magnitude, neg_a)[sector] * rest
        )
        here = m[sector]
        out[sector] = (plus <= here) & (minus <= here)
    return keep


@dataclasses.dataclass(frozen=True)
class Scale:
    """One smoothing scale: the gradient magnitude and its non-maximum-suppressed pixels."""

    magnitude: np.ndarray  # float32 [H, W]
    maxima: np.ndarray  # bool [H, W]


def scale(gray: np.ndarray, sigma: float) -> Scale:
    """Smooth (zero padding), Sobel, magnitude and non-maximum suppression of a float32 image."""
    smooth = ndimage.gaussian_filter(
        gray, sigma, mode="constant", cval=0.0, truncate=GAUSSIAN_TRUNCATE
    )
    d_col = ndimage.sobel(smooth, axis=1)
    d_row = ndimage.sobel(smooth, axis=0)
    magnitude = np.hypot(d_row, d_col)
    return Scale(magnitude, non_maximum_suppression(d_row, d_col, magnitude))


def hysteresis(s: Scale, high: float, low: float) -> np.ndarray:
    """bool [H, W]: 8-connected runs of maxima with magnitude >= low holding one >= high."""
    dtype = s.magnitude.dtype.type
    weak = s.maxima & (s.magnitude >= dtype(low))
    runs, count = ndimage.label(weak, np.ones((3, 3), bool))
    if count == 0:
        return weak
    strong = s.maxima & (s.magnitude >= dtype(high))
    good = np.zeros(count + 1, bool)
    good[runs[strong]] = True
    good[0] = False
    return good[runs]
