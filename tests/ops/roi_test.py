"""Box crops as PyTorch computes them: nearest / bilinear resizes, centred padding, RoIAlign."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from vosjax.ops import roi


def _torch_bilinear_1d(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] weights of torch's bilinear resize, align_corners=False."""
    scale = n_in / n_out
    m = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = max((i + 0.5) * scale - 0.5, 0.0)
        lo = min(int(math.floor(src)), n_in - 1)
        hi = min(lo + 1, n_in - 1)
        frac = src - lo
        m[i, lo] += 1 - frac
        m[i, hi] += frac
    return m


@pytest.mark.parametrize(("size_in", "size_out"), [((5, 7), (12, 9)), ((31, 26), (10, 13))])
def test_resize_bilinear_is_torch_align_corners_false(size_in, size_out):
    x = np.random.default_rng(0).normal(size=(*size_in, 3)).astype(np.float32)
    ry, rx = (
        _torch_bilinear_1d(size_in[0], size_out[0]),
        _torch_bilinear_1d(size_in[1], size_out[1]),
    )
    expected = np.einsum("ph,hwc,qw->pqc", ry, x, rx)
    np.testing.assert_allclose(roi.resize_bilinear(jnp.asarray(x), size_out), expected, atol=1e-5)


def test_nearest_is_torch_legacy_floor():
    # torch 'nearest': src = floor(dst * in / out), so 5 -> 2 takes rows 0 and 2 (not 1 and 3).
    np.testing.assert_array_equal(roi.nearest_indices(5, 2), [0, 2])
    np.testing.assert_array_equal(roi.nearest_indices(50, 13), np.floor(np.arange(13) * 50 / 13))
    np.testing.assert_array_equal(roi.nearest_indices(3, 7), [0, 0, 0, 1, 1, 2, 2])
    labels = jnp.arange(20).reshape(4, 5)
    out = roi.resize_nearest(labels, (2, 2), channels_last=False)
    np.testing.assert_array_equal(out, [[0, 2], [10, 12]])


def test_pad_divide_by_centres_the_padding_smaller_half_first():
    assert roi.pad_amounts((31, 26), 4) == (1, 1, 0, 1)  # (left, right, top, bottom)
    assert roi.pad_amounts((29, 24), 4) == (0, 0, 1, 2)
    x = jnp.ones((2, 29, 26, 3))
    padded, pad = roi.pad_divide_by(x, 4)
    assert padded.shape == (2, 32, 28, 3) and pad == (1, 1, 1, 2)
    assert float(padded[:, 0].sum()) == 0 and float(padded[:, :, 0].sum()) == 0
    np.testing.assert_array_equal(roi.pad_remove(padded, pad), x)


def _torchvision_roi_align(x, box, out_size, scale):
    """A direct port of torchvision's CPU RoIAlign (aligned=False, sampling_ratio=-1)."""
    h, w, c = x.shape
    x1, y1, x2, y2 = (v * scale for v in box)
    roi_w, roi_h = max(x2 - x1, 1.0), max(y2 - y1, 1.0)
    ph, pw = out_size
    bin_h, bin_w = roi_h / ph, roi_w / pw
    gh, gw = math.ceil(roi_h / ph), math.ceil(roi_w / pw)
    out = np.zeros((ph, pw, c))
    for i in range(ph):
        for j in range(pw):
            acc = np.zeros(c)
            for iy in range(gh):
                y = y1 + i * bin_h + (iy + 0.5) * bin_h / gh
                for ix in range(gw):
                    xx = x1 + j * bin_w + (ix + 0.5) * bin_w / gw
                    if y < -1.0 or y > h or xx < -1.0 or xx > w:
                        continue
                    yy, xv = max(y, 0.0), max(xx, 0.0)
                    yl, xl = int(yy), int(xv)
                    if yl >= h - 1:
                        yl = yh = h - 1
                        yy = float(yl)
                    else:
                        yh = yl + 1
                    if xl >= w - 1:
                        xl = xh = w - 1
                        xv = float(xl)
                    else:
                        xh = xl + 1
                    ly, lx = yy - yl, xv - xl
                    acc += (
                        (1 - ly) * (1 - lx) * x[yl, xl]
                        + (1 - ly) * lx * x[yl, xh]
                        + ly * (1 - lx) * x[yh, xl]
                        + ly * lx * x[yh, xh]
                    )
            out[i, j] = acc / max(gh * gw, 1)
    return out


@pytest.mark.parametrize(
    ("box", "out_size"),
    [((10, 0, 36, 31), (8, 7)), ((28, 4, 52, 36), (8, 6)), ((0, 0, 80, 48), (12, 20)),
     ((3, 5, 4, 6), (2, 3)), ((60, 30, 80, 48), (5, 5))],
)  # fmt: skip
def test_roi_align_matches_torchvision_loops(box, out_size):
    x = np.random.default_rng(1).normal(size=(12, 20, 4)).astype(np.float32)
    out = roi.roi_align(jnp.asarray(x), box, out_size, spatial_scale=0.25)
    expected = _torchvision_roi_align(x.astype(np.float64), box, out_size, 0.25)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_roi_align_of_the_whole_map_is_half_a_cell_off_the_grid():
    # aligned=False: cells sample at (i + 0.5) in map units, i.e. between cells i and i + 1.
    ramp = jnp.broadcast_to(jnp.arange(6.0)[None, :, None], (4, 6, 1))
    out = roi.roi_align(ramp, (0, 0, 24, 16), (4, 6), spatial_scale=0.25)
    np.testing.assert_allclose(out[0, :, 0], [0.5, 1.5, 2.5, 3.5, 4.5, 5.0])
