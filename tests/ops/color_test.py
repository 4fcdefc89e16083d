import cv2
import jax.numpy as jnp
import numpy as np

from vosjax.ops import color


def test_rgb_to_lab_matches_opencv():
    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    expected = cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)
    # OpenCV rounds the sRGB and white-point constants slightly differently.
    np.testing.assert_allclose(color.rgb_to_lab(rgb / 255.0), expected, atol=0.5)


def test_rgb_to_lab_known_colours():
    lab = np.asarray(color.rgb_to_lab(np.array([[0.0, 0, 0], [1, 1, 1], [1, 0, 0]])))
    np.testing.assert_allclose(lab[0], [0, 0, 0], atol=1e-3)
    np.testing.assert_allclose(lab[1], [100, 0, 0], atol=1e-2)
    np.testing.assert_allclose(lab[2], [53.24, 80.09, 67.20], atol=0.05)


def test_normalize_frames_imagenet():
    frames = jnp.full((1, 2, 2, 3), 255, jnp.uint8)
    expected = (1.0 - np.array(color.IMAGENET_MEAN)) / np.array(color.IMAGENET_STD)
    np.testing.assert_allclose(color.normalize_frames(frames)[0, 0, 0], expected, rtol=1e-6)
