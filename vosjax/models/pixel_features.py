"""The raw-pixel baseline: CIE Lab patches at a fixed stride, the features of no learning."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from vosjax.ops import color

PATCH_MODES = ("patch", "mean")


def feature_grid(image_size: tuple[int, int], stride: int) -> tuple[int, int]:
    """The (h, w) feature grid of a frame: one cell per whole `stride` x `stride` patch."""
    height, width = image_size
    if height < stride or width < stride:
        raise ValueError(f"frame {image_size} is smaller than the feature stride {stride}")
    return height // stride, width // stride


@functools.partial(jax.jit, static_argnames=("stride", "mode"))
def lab_patch_features(frame: jnp.ndarray, *, stride: int = 8, mode: str = "patch") -> jnp.ndarray:
    """Lab features of every `stride` x `stride` patch.

    The frame is resized (bilinear) to whole patches first, so that the grid covers the entire
    frame and upsampled predictions stay aligned with it.

    Args:
      frame: uint8 [H, W, 3] RGB.
      stride: patch size in pixels.
      mode: 'patch' flattens each patch into a stride*stride*3 vector; 'mean' averages it (3-d).

    Returns:
      float32 [h, w, C] with h = H // stride, w = W // stride; C = 3 * stride**2 or 3. Values are
      centred (L - 50, a, b) / 100 so that cosine similarity compares colours, not brightness.
    """
    if mode not in PATCH_MODES:
        raise ValueError(f"features.mode={mode!r}; expected one of {PATCH_MODES}")
    h, w = feature_grid(frame.shape[:2], stride)
    rgb = frame.astype(jnp.float32) / 255.0
    rgb = jax.image.resize(rgb, (h * stride, w * stride, 3), "bilinear", antialias=False)
    lab = color.rgb_to_lab(jnp.clip(rgb, 0.0, 1.0))
    lab = (lab - jnp.array([50.0, 0.0, 0.0])) / 100.0
    patches = lab.reshape(h, stride, w, stride, 3).transpose(0, 2, 1, 3, 4)
    if mode == "mean":
        return patches.mean(axis=(2, 3))
    return patches.reshape(h, w, stride * stride * 3)


class LabPixelFeatures:
    """Feature extractor callable: frame uint8 [H, W, 3] -> features [h, w, C]."""

    def __init__(self, stride: int = 8, mode: str = "patch"):
        if mode not in PATCH_MODES:
            raise ValueError(f"features.mode={mode!r}; expected one of {PATCH_MODES}")
        self.stride = stride
        self.mode = mode

    def grid(self, image_size: tuple[int, int]) -> tuple[int, int]:
        return feature_grid(image_size, self.stride)

    def __call__(self, frame: np.ndarray) -> jnp.ndarray:
        return lab_patch_features(jnp.asarray(frame), stride=self.stride, mode=self.mode)
