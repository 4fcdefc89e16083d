"""Procedural textures for synthetic objects and backgrounds.

Every texture is a float32 image [H, W, 3] with values in 0..255, drawn from a numpy Generator so
that the same generator state gives the same texture. Colours are integer-valued, so a `flat`
texture resampled anywhere renders to exactly its colour.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

KINDS = ("noise", "stripes", "checker", "gradient", "flat")

# Amplitude (0..255 units, at contrast 1) of the fine noise laid over every non-flat texture, so
# that no large region is perfectly uniform (uniform regions have no correspondence to learn).
_DETAIL_AMPLITUDE = 50.0


def random_colour(rng: np.random.Generator) -> np.ndarray:
    """A random integer-valued colour, float32 [3], away from black and white."""
    return np.round(rng.uniform(20.0, 235.0, size=3)).astype(np.float32)


def contrasting_colour(rng: np.random.Generator, base: np.ndarray, contrast: float) -> np.ndarray:
    """A colour at distance ~`contrast` * 200 from `base` in a random direction, float32 [3]."""
    direction = rng.normal(size=3)
    direction /= max(float(np.linalg.norm(direction)), 1e-6)
    colour = np.clip(base + contrast * 200.0 * direction, 0.0, 255.0)
    return np.round(colour).astype(np.float32)


def fractal_noise(
    rng: np.random.Generator, height: int, width: int, cell: float, octaves: int = 4
) -> np.ndarray:
    """Smooth value noise summed over octaves.

    Args:
      rng: random generator.
      height: output height.
      width: output width.
      cell: size in pixels of the coarsest octave's cells; each octave halves it.
      octaves: number of octaves.

    Returns:
      float32 [height, width] with values in [0, 1].
    """
    total = np.zeros((height, width), np.float32)
    for octave in range(octaves):
        size = max(cell / 2**octave, 1.5)
        grid_h = max(2, math.ceil(height / size) + 1)
        grid_w = max(2, math.ceil(width / size) + 1)
        grid = rng.random((grid_h, grid_w), dtype=np.float32)
        total += 0.5**octave * cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    low, high = float(total.min()), float(total.max())
    return (total - low) / max(high - low, 1e-6)


def _projection(height: int, width: int, angle: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates projected on a direction and on its normal, each float32 [H, W]."""
    ys = np.arange(height, dtype=np.float32)[:, None]
    xs = np.arange(width, dtype=np.float32)[None, :]
    cos, sin = math.cos(angle), math.sin(angle)
    return xs * cos + ys * sin, ys * cos - xs * sin


def _sharpen(wave: np.ndarray, sharpness: float) -> np.ndarray:
    """Maps a wave in [-1, 1] to [0, 1]; large sharpness turns sine waves into square waves."""
    return np.clip(wave * sharpness, -1.0, 1.0) * 0.5 + 0.5


def _pattern(
    rng: np.random.Generator, kind: str, height: int, width: int, scale: float
) -> np.ndarray:
    """A scalar pattern float32 [H, W] in [0, 1] with features of about `scale` pixels."""
    if kind == "noise":
        # Fractal noise clusters around its middle value; stretch it to use both colours.
        noise = fractal_noise(rng, height, width, cell=scale * rng.uniform(0.4, 1.0))
        return np.clip((noise - 0.5) * 2.0 + 0.5, 0.0, 1.0)
    angle = rng.uniform(0.0, math.pi)
    period = scale * rng.uniform(0.25, 0.7)
    phase = rng.uniform(0.0, 2 * math.pi)
    sharpness = rng.uniform(1.0, 6.0)
    along, across = _projection(height, width, angle)
    if kind == "stripes":
        return _sharpen(np.sin(along * (2 * math.pi / period) + phase), sharpness)
    if kind == "checker":
        wave = np.sin(along * (2 * math.pi / period) + phase) * np.sin(
            across * (2 * math.pi / period)
        )
        return _sharpen(wave, sharpness)
    if kind == "gradient":
        ramp = along - along.min()
        return ramp / max(float(ramp.max()), 1e-6)
    raise ValueError(f"texture kind {kind!r}: expected one of {KINDS}")


def make_texture(
    rng: np.random.Generator,
    kind: str,
    height: int,
    width: int,
    *,
    scale: float,
    contrast: float,
) -> np.ndarray:
    """A procedural colour texture.

    Args:
      rng: random generator (consumed).
      kind: one of `KINDS`.
      height: texture height in pixels.
      width: texture width in pixels.
      scale: characteristic size of the pattern in pixels (e.g. the object radius).
      contrast: 0..1, colour distance between the pattern's colours and strength of the detail
        noise; 0 gives a flat colour.

    Returns:
      float32 [height, width, 3], values in 0..255.

    Raises:
      ValueError: unknown kind.
    """
    if kind not in KINDS:
        raise ValueError(f"texture kind {kind!r}: expected one of {KINDS}")
    base = random_colour(rng)
    if kind == "flat":
        return np.broadcast_to(base, (height, width, 3)).copy()
    other = contrasting_colour(rng, base, contrast)
    pattern = _pattern(rng, kind, height, width, scale)
    if kind == "gradient":
        # Three colour stops: base -> other -> third.
        third = contrasting_colour(rng, other, contrast)
        low = np.minimum(pattern * 2.0, 1.0)[..., None]
        high = np.maximum(pattern * 2.0 - 1.0, 0.0)[..., None]
        texture = base + low * (other - base) + high * (third - other)
    else:
        texture = base + pattern[..., None] * (other - base)
    detail = fractal_noise(rng, height, width, cell=max(scale * 0.12, 2.0), octaves=2)
    texture += (detail[..., None] - 0.5) * (_DETAIL_AMPLITUDE * contrast)
    return np.clip(texture, 0.0, 255.0).astype(np.float32)
