"""Colour-space conversions in jnp."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

# sRGB (D65) -> CIE XYZ, then normalised by the D65 white point.
_RGB_TO_XYZ = np.array(
    [
        [0.412453, 0.357580, 0.180423],
        [0.212671, 0.715160, 0.072169],
        [0.019334, 0.119193, 0.950227],
    ]
)
_D65_WHITE = np.array([0.950456, 1.0, 1.088754])
# ImageNet statistics in [0, 1] units, applied to uint8 frames by `normalize_frames`.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The std of DINO's video-segmentation reader (`color_normalize`, 0.228 for red), copied into
# INO's inference reader: the released codes evaluate with it, train with IMAGENET_STD.
DINO_EVAL_STD = (0.228, 0.224, 0.225)


def normalize_frames(
    frames: jnp.ndarray,
    mean: tuple[float, float, float] = IMAGENET_MEAN,
    std: tuple[float, float, float] = IMAGENET_STD,
) -> jnp.ndarray:
    """uint8 (or 0..255 float) frames [..., 3] -> (x / 255 - mean) / std, float32 (ImageNet's
    statistics by default: the input of every pretrained-style backbone here)."""
    x = jnp.asarray(frames).astype(jnp.float32) / 255.0
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def rgb_to_lab(rgb: jnp.ndarray) -> jnp.ndarray:
    """Converts sRGB to CIE L*a*b* (D65).

    Args:
      rgb: [..., 3] values in [0, 1].

    Returns:
      [..., 3] (L in [0, 100], a and b roughly in [-128, 127]).
    """
    rgb = jnp.asarray(rgb, jnp.float32)
    linear = jnp.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = (linear @ _RGB_TO_XYZ.T) / _D65_WHITE
    delta = 6.0 / 29.0
    f = jnp.where(xyz > delta**3, jnp.cbrt(xyz), xyz / (3 * delta**2) + 4.0 / 29.0)
    lightness = 116.0 * f[..., 1] - 16.0
    a = 500.0 * (f[..., 0] - f[..., 1])
    b = 200.0 * (f[..., 1] - f[..., 2])
    return jnp.stack([lightness, a, b], axis=-1)
