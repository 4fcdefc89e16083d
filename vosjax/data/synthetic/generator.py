"""Procedural videos with exact multi-object masks: the default dataset of vosjax.

A video is a `scene.Scene` (sampled once from the seed) rendered frame by frame:
- 1..K objects, each a star-convex shape r(phi) = 1 + sum_k a_k cos(k phi) + b_k sin(k phi) in
  its own canonical coordinates, filled with a procedural texture. Over time it translates
  (constant velocity plus a smooth wiggle, reflected at walls), rotates, scales and deforms (a
  smooth sinusoidal warp of its canonical coordinates).
- Objects are drawn back to front over a textured background larger than the frame, which the
  camera pans and zooms over. Objects move in frame coordinates; the camera moves the background.
- A global brightness / contrast drift and pixel noise are applied last.

Exactness: every frame pixel is mapped to the object's canonical coordinates by one inverse
transform; the texture is sampled there and the coverage is computed there, so the mask labels
exactly the pixels where the object is drawn (with `edge_softness` > 0 the edge is blended over
about that many pixels and the mask is the same coverage thresholded at 0.5). A front object
overwrites the mask of the objects behind it.

Determinism: everything is drawn from `numpy.random.SeedSequence(seed)`; the same seed gives
byte-identical frames and masks (same platform and library versions). Every quantity depends on
the frame index only, not on the video length: the first T' frames of a longer video equal the
video of length T'.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np

from vosjax.data.synthetic import scene as scene_lib
from vosjax.data.synthetic import textures

_HARMONICS = 5
# Centres are kept this far (fraction of min(H, W)) outside the frame beyond the point where the
# object is fully out, so that an object that leaves stays out for a while before it comes back.
_EXIT_MARGIN = 0.1
# Camera pan amplitude, fraction of min(H, W).
_PAN_AMPLITUDE = 0.1
_MAX_ATTEMPTS = 30


def _check_range(name: str, value: tuple[float, float], low: float, high: float) -> None:
    if len(value) != 2 or not low <= value[0] <= value[1] <= high:
        raise ValueError(
            f"SyntheticConfig.{name}: expected (min, max) with {low} <= min <= max <= {high}, "
            f"got {value}"
        )


@dataclasses.dataclass(frozen=True)
class SyntheticConfig:
    """Difficulty knobs of the synthetic videos.

    Lengths are fractions of min(height, width), so a config means the same at any resolution.

    Attributes:
      num_objects: (min, max) number of objects per video.
      object_radius: (min, max) base radius of an object.
      shape_irregularity: sum of the radial harmonics' amplitudes (0: discs; < 1).
      speed: (min, max) object speed per frame.
      wiggle: amplitude of the smooth deviation from straight-line motion.
      rotation_speed: max rotation per frame, radians.
      scale_change: log-amplitude of each object's scale oscillation.
      deformation: amplitude of the non-rigid warp, in units of the object radius (< 0.35).
      allow_exit: objects may leave the frame and come back; otherwise they stay inside (fully,
        where they fit).
      camera_pan: max background pan speed per frame.
      camera_zoom: log-amplitude of the camera zoom oscillation.
      lighting_drift: amplitude of the global brightness (fraction of 255) and log-contrast drift.
      noise_sigma: standard deviation of the pixel noise, in 0..255 units.
      texture_contrast: 0..1, colour contrast inside each texture.
      object_textures: texture kinds drawn for objects (see `textures.KINDS`).
      background_textures: texture kinds drawn for the background.
      edge_softness: anti-aliasing width of object edges in pixels; 0 gives hard edges, where a
        pixel shows an object's texture iff the mask says so.
      min_visible_area: minimum visible area of every object in frame 0, fraction of the frame.
    """

    num_objects: tuple[int, int] = (1, 5)
    object_radius: tuple[float, float] = (0.1, 0.22)
    shape_irregularity: float = 0.35
    speed: tuple[float, float] = (0.003, 0.015)
    wiggle: float = 0.03
    rotation_speed: float = 0.05
    scale_change: float = 0.15
    deformation: float = 0.08
    allow_exit: bool = True
    camera_pan: float = 0.005
    camera_zoom: float = 0.05
    lighting_drift: float = 0.1
    noise_sigma: float = 3.0
    texture_contrast: float = 0.7
    object_textures: tuple[str, ...] = ("noise", "stripes", "checker", "gradient")
    background_textures: tuple[str, ...] = ("noise", "stripes", "checker", "gradient")
    edge_softness: float = 1.0
    min_visible_area: float = 0.003

    def __post_init__(self) -> None:
        _check_range("num_objects", self.num_objects, 1, 254)
        if not all(isinstance(n, int) for n in self.num_objects):
            raise ValueError(f"SyntheticConfig.num_objects: expected ints, got {self.num_objects}")
        _check_range("object_radius", self.object_radius, 1e-3, 1.0)
        _check_range("speed", self.speed, 0.0, 1.0)
        bounded = {
            "shape_irregularity": (self.shape_irregularity, 0.9),
            "deformation": (self.deformation, 0.35),
            "texture_contrast": (self.texture_contrast, 1.0),
            "min_visible_area": (self.min_visible_area, 0.1),
        }
        for name, (value, high) in bounded.items():
            if not 0.0 <= value <= high:
                raise ValueError(
                    f"SyntheticConfig.{name}: expected 0 <= value <= {high}, got {value}"
                )
        for name in ("wiggle", "rotation_speed", "scale_change", "camera_pan", "camera_zoom",
                     "lighting_drift", "noise_sigma", "edge_softness"):  # fmt: skip
            if getattr(self, name) < 0:
                raise ValueError(
                    f"SyntheticConfig.{name}: expected >= 0, got {getattr(self, name)}"
                )
        for name in ("object_textures", "background_textures"):
            kinds = getattr(self, name)
            if not kinds or any(kind not in textures.KINDS for kind in kinds):
                raise ValueError(
                    f"SyntheticConfig.{name}: expected a non-empty tuple of {textures.KINDS}, "
                    f"got {kinds}"
                )


EASY = SyntheticConfig(
    num_objects=(1, 2),
    speed=(0.002, 0.01),
    shape_irregularity=0.25,
    wiggle=0.01,
    rotation_speed=0.02,
    scale_change=0.05,
    deformation=0.03,
    allow_exit=False,
    camera_pan=0.002,
    camera_zoom=0.02,
    lighting_drift=0.03,
    noise_sigma=1.0,
    texture_contrast=0.9,
)
MEDIUM = SyntheticConfig()
HARD = SyntheticConfig(
    num_objects=(2, 5),
    object_radius=(0.06, 0.25),
    shape_irregularity=0.5,
    speed=(0.01, 0.04),
    wiggle=0.05,
    rotation_speed=0.1,
    scale_change=0.3,
    deformation=0.15,
    camera_pan=0.01,
    camera_zoom=0.1,
    lighting_drift=0.25,
    noise_sigma=8.0,
    texture_contrast=0.4,
)
LEVELS = {"easy": EASY, "medium": MEDIUM, "hard": HARD}


def level_config(level: str) -> SyntheticConfig:
    """The config of a named difficulty level ('easy', 'medium', 'hard').

    Raises:
      ValueError: unknown level.
    """
    if level not in LEVELS:
        raise ValueError(f"synthetic level {level!r}: expected one of {sorted(LEVELS)}")
    return LEVELS[level]


@dataclasses.dataclass(frozen=True, eq=False)
class SyntheticVideo:
    """A rendered video.

    Attributes:
      frames: uint8 [T, H, W, 3].
      masks: uint8 [T, H, W]; 0 background, 1..K object ids.
      num_objects: K.
      centers: float32 [T, K, 2], (y, x) centre of object id k + 1 in frame pixels.
      depth_order: object ids from back to front.
    """

    frames: np.ndarray
    masks: np.ndarray
    num_objects: int
    centers: np.ndarray
    depth_order: tuple[int, ...]


def _sample_object(
    rng: np.random.Generator, height: int, width: int, config: SyntheticConfig
) -> scene_lib.SceneObject:
    """An object's shape and motion (no texture yet), placed inside the frame at t = 0."""
    size = min(height, width)
    radius = rng.uniform(*config.object_radius) * size
    magnitudes = rng.uniform(0.0, 1.0, _HARMONICS) / np.arange(1, _HARMONICS + 1)
    magnitudes *= config.shape_irregularity * rng.uniform(0.5, 1.0) / magnitudes.sum()
    phases = rng.uniform(0.0, 2 * math.pi, _HARMONICS)
    harmonics = np.stack([magnitudes * np.cos(phases), magnitudes * np.sin(phases)], axis=-1)
    log_scale = scene_lib.Wave(
        rng.uniform(0.0, config.scale_change), rng.uniform(0.05, 0.2), rng.uniform(0, 2 * math.pi)
    )
    warp_amplitude = rng.uniform(0.5, 1.0) * config.deformation
    warp_vectors = rng.normal(size=(2, 2))
    # Wave numbers of about 1.5 / unit: the warp bends the shape without folding it.
    warp_vectors *= 1.5 / np.maximum(np.linalg.norm(warp_vectors, axis=1, keepdims=True), 1e-6)
    warp_waves = tuple(
        scene_lib.Wave(1.0, rng.uniform(0.1, 0.3), rng.uniform(0, 2 * math.pi)) for _ in "yx"
    )
    extent = (
        radius
        * math.exp(config.scale_change)
        * (1.0 + magnitudes.sum() + math.sqrt(2) * warp_amplitude)
    )
    frame = np.array([height, width], np.float64)
    if config.allow_exit:
        low = -np.full(2, extent + _EXIT_MARGIN * size)
        high = frame - 1 - low
    else:
        low = np.minimum(extent, 0.4 * frame)
        high = frame - 1 - low
    start = rng.uniform(np.maximum(low, 0.1 * frame), np.minimum(high, 0.9 * frame - 1))
    direction = rng.uniform(0.0, 2 * math.pi)
    velocity = (
        rng.uniform(*config.speed) * size * np.array([math.sin(direction), math.cos(direction)])
    )
    wiggle = tuple(
        scene_lib.Wave(
            config.wiggle * size * rng.uniform(), rng.uniform(0.1, 0.3), rng.uniform(0, 2 * math.pi)
        )
        for _ in "yx"
    )
    return scene_lib.SceneObject(
        object_id=0,
        radius=radius,
        harmonics=harmonics,
        start=start,
        velocity=velocity,
        wiggle=wiggle,
        low=low,
        high=high,
        angle=rng.uniform(0.0, 2 * math.pi),
        spin=rng.uniform(-1.0, 1.0) * config.rotation_speed,
        log_scale=log_scale,
        warp_amplitude=warp_amplitude,
        warp_vectors=warp_vectors,
        warp_waves=warp_waves,
        texture=None,
        texels_per_unit=radius * math.exp(log_scale.amplitude),
    )


def _with_texture(
    rng: np.random.Generator,
    obj: scene_lib.SceneObject,
    config: SyntheticConfig,
    edge_softness: float,
) -> scene_lib.SceneObject:
    # The texture covers every canonical point the object (and its soft edge) can show.
    half = (obj.reach + 0.1) * obj.texels_per_unit + edge_softness + 2
    size = 2 * math.ceil(half) + 1
    kind = config.object_textures[rng.integers(len(config.object_textures))]
    texture = textures.make_texture(
        rng, kind, size, size, scale=obj.radius, contrast=config.texture_contrast
    )
    return dataclasses.replace(obj, texture=texture)


def sample_scene(
    seed: int, *, height: int, width: int, config: SyntheticConfig = MEDIUM
) -> scene_lib.Scene:
    """Draws a scene in which every object shows at least the minimum area in frame 0.

    Raises:
      ValueError: seed < 0, or height / width < 8.
    """
    if not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed: expected an int >= 0, got {seed!r}")
    if height < 8 or width < 8:
        raise ValueError(f"height, width: expected >= 8 pixels, got {height} x {width}")
    scene_seed, noise_seed = np.random.SeedSequence(int(seed)).spawn(2)
    rng = np.random.default_rng(scene_seed)
    size = min(height, width)
    edge = config.edge_softness

    pan_amplitude = _PAN_AMPLITUDE * size if config.camera_pan > 0 else 0.0
    pan_freq = config.camera_pan * size / pan_amplitude if pan_amplitude else 0.0
    pan = tuple(
        scene_lib.Wave(pan_amplitude, pan_freq * rng.uniform(0.5, 1.0), rng.uniform(0, 2 * math.pi))
        for _ in "yx"
    )
    log_zoom = scene_lib.Wave(
        config.camera_zoom, rng.uniform(0.02, 0.1), rng.uniform(0, 2 * math.pi)
    )
    reach = math.exp(config.camera_zoom)
    bg_h = math.ceil(2 * pan_amplitude + height * reach) + 4
    bg_w = math.ceil(2 * pan_amplitude + width * reach) + 4
    kind = config.background_textures[rng.integers(len(config.background_textures))]
    background = textures.make_texture(
        rng, kind, bg_h, bg_w, scale=0.3 * size, contrast=config.texture_contrast
    )
    drift = config.lighting_drift
    log_gain = scene_lib.Wave(
        drift * rng.uniform(0.5, 1.0), rng.uniform(0.02, 0.08), rng.uniform(0, 6.3)
    )
    bias = scene_lib.Wave(
        255 * drift * rng.uniform(0.25, 0.5), rng.uniform(0.02, 0.08), rng.uniform(0, 6.3)
    )

    def scene_of(objects: Sequence[scene_lib.SceneObject]) -> scene_lib.Scene:
        return scene_lib.Scene(
            height=height,
            width=width,
            objects=tuple(objects),
            background=background,
            pan=pan,
            log_zoom=log_zoom,
            log_gain=log_gain,
            bias=bias,
            noise_sigma=config.noise_sigma,
            edge_softness=edge,
            noise_seed=noise_seed,
        )

    min_pixels = max(1, round(config.min_visible_area * height * width))
    for _ in range(_MAX_ATTEMPTS):
        count = int(rng.integers(config.num_objects[0], config.num_objects[1] + 1))
        objects = [_sample_object(rng, height, width, config) for _ in range(count)]
        ids = rng.permutation(count) + 1
        objects = [
            dataclasses.replace(o, object_id=int(i)) for o, i in zip(objects, ids, strict=True)
        ]
        areas = np.bincount(
            scene_lib.render_mask(scene_of(objects), 0).ravel(), minlength=count + 1
        )
        if areas[1:].min() >= min_pixels:
            break
    else:
        # Crowded or tiny frames: keep the objects that are visible enough (at least one).
        kept = [o for o in objects if areas[o.object_id] >= min_pixels]
        if not kept:
            kept = [max(objects, key=lambda o: areas[o.object_id])]
        order = sorted(o.object_id for o in kept)
        objects = [dataclasses.replace(o, object_id=order.index(o.object_id) + 1) for o in kept]
    objects = [_with_texture(rng, o, config, edge) for o in objects]
    return scene_of(objects)


def render_scene(scene: scene_lib.Scene, num_frames: int) -> SyntheticVideo:
    """Renders frames 0 .. num_frames - 1 of a scene.

    Raises:
      ValueError: num_frames < 1.
    """
    if num_frames < 1:
        raise ValueError(f"num_frames: expected >= 1, got {num_frames}")
    frames = np.empty((num_frames, scene.height, scene.width, 3), np.uint8)
    masks = np.empty((num_frames, scene.height, scene.width), np.uint8)
    noise_rng = np.random.default_rng(scene.noise_seed)
    for t in range(num_frames):
        frames[t], masks[t] = scene_lib.render_frame(scene, t, noise_rng)
    by_id = sorted(scene.objects, key=lambda o: o.object_id)
    times = np.arange(num_frames)
    centers = np.stack([o.center(times) for o in by_id], axis=1).astype(np.float32)
    return SyntheticVideo(
        frames=frames,
        masks=masks,
        num_objects=len(scene.objects),
        centers=centers,
        depth_order=tuple(o.object_id for o in scene.objects),
    )


def generate_video(
    seed: int,
    *,
    num_frames: int,
    height: int,
    width: int,
    config: SyntheticConfig = MEDIUM,
) -> SyntheticVideo:
    """A synthetic video with exact masks.

    Args:
      seed: any int >= 0; the same seed (and arguments) gives byte-identical output.
      num_frames: T >= 1.
      height: H >= 8.
      width: W >= 8.
      config: difficulty knobs (`EASY`, `MEDIUM`, `HARD` or your own).

    Returns:
      frames uint8 [T, H, W, 3], masks uint8 [T, H, W] (0 background, 1..K), K, object centres.

    Raises:
      ValueError: a bad argument, named in the message.
    """
    scene = sample_scene(seed, height=height, width=width, config=config)
    return render_scene(scene, num_frames)


def split_seed(seed: int, split: str, index: int) -> int:
    """The seed of video `index` of a dataset split, decorrelated from every other video's.

    Args:
      seed: the dataset's seed.
      split: 'train' or 'validation' (any string; it is hashed by its bytes).
      index: video index in the split.

    Returns:
      an int in [0, 2**32).
    """
    split_code = int.from_bytes(split.encode(), "little")
    return int(np.random.SeedSequence([seed, split_code, index]).generate_state(1)[0])
