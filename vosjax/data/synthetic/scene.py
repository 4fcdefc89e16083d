"""A sampled synthetic scene and how to render any of its frames.

See `generator` for how scenes are drawn. Coordinates are (y, x) in frame pixels (pixel centres at
integers), time t is the frame index.
"""

from __future__ import annotations

import dataclasses
import math

import cv2
import numpy as np

# Standard deviation of the sum of two independent uniform bytes (the pixel noise source).
_TWO_BYTES_STD = math.sqrt((256**2 - 1) / 6)


@dataclasses.dataclass(frozen=True)
class Wave:
    """amplitude * sin(freq * t + phase), vectorised over t."""

    amplitude: float = 0.0
    freq: float = 0.0
    phase: float = 0.0

    def __call__(self, t: np.ndarray | float) -> np.ndarray:
        return self.amplitude * np.sin(self.freq * np.asarray(t, np.float64) + self.phase)


def _fold(x: np.ndarray, low: float, high: float) -> np.ndarray:
    """Reflects x into [low, high] (a path bouncing between two walls)."""
    span = high - low
    if span <= 0:
        return np.full_like(x, low)
    y = np.mod(x - low, 2 * span)
    return low + span - np.abs(y - span)


@dataclasses.dataclass(frozen=True, eq=False)
class SceneObject:
    """One object: shape, texture and motion. Coordinates are (y, x) pixels, time in frames.

    Attributes:
      object_id: the id in the masks (1..K).
      radius: base radius in pixels.
      harmonics: float64 [N, 2], (a_k, b_k) of the radial function for k = 1..N.
      start: [2] unfolded centre at t = 0.
      velocity: [2] pixels per frame.
      wiggle: two waves (y, x) added to the straight path.
      low: [2] lowest centre (the walls the path reflects at).
      high: [2] highest centre.
      angle: rotation at t = 0, radians.
      spin: radians per frame.
      log_scale: wave of the log scale.
      warp_amplitude: non-rigid warp amplitude in canonical units.
      warp_vectors: float64 [2, 2]; row i is the wave vector of the warp of canonical axis i.
      warp_waves: two waves giving the warp's temporal phase (their amplitude is unused).
      texture: float32 [S, S, 3] in canonical coordinates, or None before it is drawn.
      texels_per_unit: texture pixels per canonical unit; the texture centre is canonical 0.
    """

    object_id: int
    radius: float
    harmonics: np.ndarray
    start: np.ndarray
    velocity: np.ndarray
    wiggle: tuple[Wave, Wave]
    low: np.ndarray
    high: np.ndarray
    angle: float
    spin: float
    log_scale: Wave
    warp_amplitude: float
    warp_vectors: np.ndarray
    warp_waves: tuple[Wave, Wave]
    texture: np.ndarray | None
    texels_per_unit: float

    @property
    def reach(self) -> float:
        """Bound of |canonical coordinates| where the object can be drawn (before scaling)."""
        return 1.0 + float(np.abs(self.harmonics).sum()) + math.sqrt(2) * self.warp_amplitude

    def center(self, t: np.ndarray | float) -> np.ndarray:
        """Centre (y, x) at time(s) t: float64 [..., 2]."""
        t = np.asarray(t, np.float64)[..., None]
        wiggle = np.stack([w(t[..., 0]) - w(0.0) for w in self.wiggle], axis=-1)
        path = self.start + self.velocity * t + wiggle
        return np.stack([_fold(path[..., i], self.low[i], self.high[i]) for i in range(2)], -1)

    def scale(self, t: np.ndarray | float) -> np.ndarray:
        return np.exp(self.log_scale(t))


@dataclasses.dataclass(frozen=True, eq=False)
class Scene:
    """Everything needed to render any frame of a video.

    Attributes:
      height: frame height.
      width: frame width.
      objects: back to front.
      background: float32 [Hb, Wb, 3], larger than the frame.
      pan: two waves (y, x), camera offset in background pixels.
      log_zoom: wave of the log zoom (> 0: zoomed in).
      log_gain: wave of the log contrast.
      bias: wave of the brightness offset, 0..255 units.
      noise_sigma: pixel noise standard deviation.
      edge_softness: anti-aliasing width in pixels.
      noise_seed: seed sequence of the per-frame noise.
    """

    height: int
    width: int
    objects: tuple[SceneObject, ...]
    background: np.ndarray
    pan: tuple[Wave, Wave]
    log_zoom: Wave
    log_gain: Wave
    bias: Wave
    noise_sigma: float
    edge_softness: float
    noise_seed: np.random.SeedSequence


def object_layer(
    obj: SceneObject, t: float, height: int, width: int, edge_softness: float, with_texture: bool
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray | None] | None:
    """Coverage (and texture) of one object at frame t, inside its bounding window.

    Args:
      obj: the object.
      t: frame index.
      height: frame height.
      width: frame width.
      edge_softness: anti-aliasing width in pixels (0: coverage is 0 or 1).
      with_texture: also sample the texture (needs obj.texture).

    Returns:
      None if the object is outside the frame, else (window, alpha, colour): window = (rows,
      columns) slices of the frame; alpha float32 [h, w] in [0, 1], the mask is alpha >= 0.5;
      colour float32 [h, w, 3] or None.
    """
    cy, cx = obj.center(t)
    scale = float(obj.scale(t))
    pixels_per_unit = obj.radius * scale
    half = obj.reach * pixels_per_unit + edge_softness + 1
    y0, y1 = max(0, math.floor(cy - half)), min(height, math.ceil(cy + half) + 1)
    x0, x1 = max(0, math.floor(cx - half)), min(width, math.ceil(cx + half) + 1)
    if y0 >= y1 or x0 >= x1:
        return None
    dy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(cy)
    dx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(cx)
    angle = obj.angle + obj.spin * t
    cos, sin = (
        np.float32(math.cos(angle) / pixels_per_unit),
        np.float32(math.sin(angle) / pixels_per_unit),
    )
    # Inverse rotation and scale: frame offset -> canonical coordinates.
    uy = cos * dy - sin * dx
    ux = sin * dy + cos * dx
    if obj.warp_amplitude > 0:
        (ky_y, ky_x), (kx_y, kx_x) = obj.warp_vectors.astype(np.float32)
        wy, wx = (np.float32(w.freq * t + w.phase) for w in obj.warp_waves)
        amplitude = np.float32(obj.warp_amplitude)
        uy, ux = (
            uy + amplitude * np.sin(ky_y * uy + ky_x * ux + wy),
            ux + amplitude * np.sin(kx_y * uy + kx_x * ux + wx),
        )
    rho = np.sqrt(uy * uy + ux * ux)
    safe = np.maximum(rho, np.float32(1e-20))
    cos1, sin1 = ux / safe, uy / safe
    radial = np.ones_like(rho)
    cos_k, sin_k = cos1, sin1
    for a, b in obj.harmonics.astype(np.float32):
        radial += a * cos_k + b * sin_k
        cos_k, sin_k = cos_k * cos1 - sin_k * sin1, sin_k * cos1 + cos_k * sin1
    distance = (radial - rho) * np.float32(pixels_per_unit)  # > 0 inside, in pixels
    if edge_softness > 0:
        alpha = np.clip(np.float32(0.5) + distance / np.float32(edge_softness), 0.0, 1.0)
    else:
        alpha = (distance >= 0).astype(np.float32)
    colour = None
    if with_texture:
        centre = np.float32((obj.texture.shape[0] - 1) / 2)
        tpu = np.float32(obj.texels_per_unit)
        colour = cv2.remap(
            obj.texture, ux * tpu + centre, uy * tpu + centre, cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REFLECT_101,
        )  # fmt: skip
    return (slice(y0, y1), slice(x0, x1)), alpha, colour


def render_mask(scene: Scene, t: float) -> np.ndarray:
    """The mask of frame t, uint8 [H, W], without rendering the frame."""
    mask = np.zeros((scene.height, scene.width), np.uint8)
    for obj in scene.objects:
        layer = object_layer(obj, t, scene.height, scene.width, scene.edge_softness, False)
        if layer is not None:
            window, alpha, _ = layer
            mask[window][alpha >= 0.5] = obj.object_id
    return mask


def _background(scene: Scene, t: float) -> np.ndarray:
    """The camera's view of the background at frame t, float32 [H, W, 3]."""
    zoom = math.exp(float(scene.log_zoom(t)))
    bg_h, bg_w = scene.background.shape[:2]
    pan_y, pan_x = (float(w(t)) for w in scene.pan)
    # Frame pixel p -> background (p - frame centre) / zoom + background centre + pan.
    matrix = np.array(
        [
            [1 / zoom, 0, (bg_w - 1) / 2 + pan_x - (scene.width - 1) / 2 / zoom],
            [0, 1 / zoom, (bg_h - 1) / 2 + pan_y - (scene.height - 1) / 2 / zoom],
        ]
    )
    return cv2.warpAffine(
        scene.background, matrix, (scene.width, scene.height),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REFLECT_101,
    )  # fmt: skip


def render_frame(
    scene: Scene, t: int, noise_rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Renders frame t.

    Args:
      scene: the scene.
      t: frame index.
      noise_rng: source of the pixel noise; None renders without noise.

    Returns:
      frame uint8 [H, W, 3] and mask uint8 [H, W].
    """
    canvas = _background(scene, t)
    mask = np.zeros((scene.height, scene.width), np.uint8)
    for obj in scene.objects:
        layer = object_layer(obj, t, scene.height, scene.width, scene.edge_softness, True)
        if layer is None:
            continue
        window, alpha, colour = layer
        a = alpha[..., None]
        # Written as a blend of both terms so that alpha 0 / 1 give the exact colours.
        canvas[window] = canvas[window] * (1 - a) + colour * a
        mask[window][alpha >= 0.5] = obj.object_id
    gain = math.exp(float(scene.log_gain(t)))
    bias = float(scene.bias(t))
    if gain != 1.0 or bias != 0.0:
        canvas = (canvas - 128.0) * np.float32(gain) + np.float32(128.0 + bias)
    if noise_rng is not None and scene.noise_sigma > 0:
        # Two uniform bytes summed: a near-Gaussian noise, several times faster to draw.
        noise = noise_rng.integers(0, 256, size=(2, *canvas.shape), dtype=np.uint8)
        spread = np.float32(scene.noise_sigma / _TWO_BYTES_STD)
        canvas += (noise[0].astype(np.float32) + noise[1] - np.float32(255.0)) * spread
    frame = np.rint(np.clip(canvas, 0.0, 255.0, out=canvas)).astype(np.uint8)
    return frame, mask
