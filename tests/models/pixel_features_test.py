import numpy as np
import pytest

from vosjax.models import pixel_features
from vosjax.ops import color


def test_grid_and_dims():
    frame = np.zeros((480, 854, 3), np.uint8)
    assert pixel_features.LabPixelFeatures(8, "patch")(frame).shape == (60, 106, 192)
    assert pixel_features.LabPixelFeatures(8, "mean")(frame).shape == (60, 106, 3)
    assert pixel_features.LabPixelFeatures(16, "patch").grid((480, 854)) == (30, 53)


def test_patch_layout_and_mean():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (16, 24, 3), dtype=np.uint8)  # whole patches: no resize.
    patch = np.asarray(pixel_features.LabPixelFeatures(8, "patch")(frame))
    mean = np.asarray(pixel_features.LabPixelFeatures(8, "mean")(frame))
    lab = (np.asarray(color.rgb_to_lab(frame / 255.0)) - [50.0, 0, 0]) / 100.0
    # Cell (1, 2) holds rows 8..15, columns 16..23, flattened row-major with channels last.
    np.testing.assert_allclose(patch[1, 2], lab[8:16, 16:24].reshape(-1), atol=1e-5)
    np.testing.assert_allclose(mean[1, 2], lab[8:16, 16:24].mean(axis=(0, 1)), atol=1e-5)


def test_bad_mode_names_the_field():
    with pytest.raises(ValueError, match="features.mode"):
        pixel_features.LabPixelFeatures(8, "median")
