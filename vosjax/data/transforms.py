"""Typed augmentations of video clips.

Every transform is a small frozen dataclass called as `transform(clip, rng)` with a clip
[T, H, W, 3] (uint8 in 0..255, or float) and a `numpy.random.Generator`. Random parameters are
drawn once and applied to every frame of the clip (so the clip stays a coherent video), unless
`per_frame=True`, in which case each frame draws its own. Transforms return an array of the
input's dtype (uint8 results are rounded and clipped), except:
- `Normalize`, which returns float32;
- `RandomAffine`, which returns `{"clip": ..., "params": {"affine": [T, 2, 3]}}` so that a loss
  can relate the two views (see its docstring for the coordinate convention).

`Compose` chains transforms. Geometry follows OpenCV: a pixel (x, y) = (column, row) has its
centre at integer coordinates.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np

Transform = Callable[[np.ndarray, np.random.Generator], Any]


def check_clip(clip: np.ndarray, name: str) -> None:
    if clip.ndim != 4 or clip.shape[-1] != 3:
        raise ValueError(f"{name}: expected a clip [T, H, W, 3], got shape {clip.shape}")


def _as_dtype(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if dtype == np.uint8:
        return np.clip(np.rint(values), 0, 255).astype(np.uint8)
    return values.astype(dtype)


def _max_value(clip: np.ndarray) -> float:
    """255 for uint8 clips, 1 for float clips (assumed in [0, 1])."""
    return 255.0 if clip.dtype == np.uint8 else 1.0


def resize_frame(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of [H, W, C]; area averaging when shrinking (an anti-aliased resize)."""
    if frame.shape[:2] == (height, width):
        return frame
    shrink = height < frame.shape[0] and width < frame.shape[1]
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    return cv2.resize(frame, (width, height), interpolation=interpolation)


def short_side_size(
    size: tuple[int, int], short_side: int | None, multiple: int = 1, *, min_side: int = 1
) -> tuple[int, int]:
    """(H', W') of a frame of `size` resized so that its short side is `short_side` (None:
    unchanged), both sides rounded, then floored to multiples of `multiple`.

    Raises:
      ValueError: the resized short side is below `min_side` or `multiple` pixels.
    """
    h, w = size
    if short_side is not None:
        scale = short_side / min(h, w)
        h, w = round(h * scale), round(w * scale)
    least = max(min_side, multiple)
    if min(h, w) < least:
        raise ValueError(
            f"frame {tuple(size)} resized to {(h, w)}: expected at least {least} pixels a side"
        )
    return h // multiple * multiple, w // multiple * multiple


def _per_frame_draws(per_frame: bool, num_frames: int) -> int:
    return num_frames if per_frame else 1


def as_pair(size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    height, width = size
    return int(height), int(width)


@dataclasses.dataclass(frozen=True)
class Compose:
    """Applies transforms in order; each receives the previous one's clip.

    Attributes:
      transforms: the transforms. A dict-returning one (`RandomAffine`) may only come last.
    """

    transforms: tuple[Transform, ...]

    def __call__(self, clip: np.ndarray, rng: np.random.Generator) -> Any:
        for transform in self.transforms:
            clip = transform(clip, rng)
        return clip


@dataclasses.dataclass(frozen=True)
class RandomResizedCrop:
    """Crops a random area and aspect ratio and resizes it (torchvision semantics).

    Up to 10 tries draw an area fraction uniformly from `scale` and a log-uniform aspect ratio
    (width / height) from `ratio`; the first box that fits is used. Otherwise the largest
    centred box with the ratio clamped into `ratio` is used.

    Attributes:
      size: output (height, width), or one int for a square.
      scale: (min, max) area of the crop, fraction of the frame's area.
      ratio: (min, max) aspect ratio width / height.
      per_frame: draw a crop for each frame instead of one for the clip.
    """

    size: int | tuple[int, int]
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    per_frame: bool = False

    def sample_box(self, height: int, width: int, rng: np.random.Generator) -> tuple[int, ...]:
        """A crop box (top, left, box_height, box_width) inside a height x width frame."""
        area = height * width
        log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))
        for _ in range(10):
            target_area = area * rng.uniform(self.scale[0], self.scale[1])
            aspect = math.exp(rng.uniform(log_ratio[0], log_ratio[1]))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                return top, left, h, w
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w, h = width, int(round(width / self.ratio[0]))
        elif in_ratio > self.ratio[1]:
            h, w = height, int(round(height * self.ratio[1]))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        check_clip(clip, "RandomResizedCrop")
        out_h, out_w = as_pair(self.size)
        height, width = clip.shape[1:3]
        boxes = [
            self.sample_box(height, width, rng)
            for _ in range(_per_frame_draws(self.per_frame, len(clip)))
        ]
        frames = []
        for t, frame in enumerate(clip):
            top, left, h, w = boxes[t if self.per_frame else 0]
            frames.append(resize_frame(frame[top : top + h, left : left + w], out_h, out_w))
        return np.stack(frames)


@dataclasses.dataclass(frozen=True)
class ShortSideResize:
    """Resizes so that the short side is a random length in [min_size, max_size].

    Attributes:
      min_size: smallest short side, pixels.
      max_size: largest short side, pixels (inclusive); equal to `min_size` for a fixed size.
    """

    min_size: int
    max_size: int

    def __call__(self, clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        check_clip(clip, "ShortSideResize")
        if not 0 < self.min_size <= self.max_size:
            raise ValueError(
                f"ShortSideResize: expected 0 < min_size <= max_size, got "
                f"({self.min_size}, {self.max_size})"
            )
        short = int(rng.integers(self.min_size, self.max_size + 1))
        height, width = clip.shape[1:3]
        factor = short / min(height, width)
        new_h = short if height <= width else int(round(height * factor))
        new_w = short if width < height else int(round(width * factor))
        return np.stack([resize_frame(frame, new_h, new_w) for frame in clip])


@dataclasses.dataclass(frozen=True)
class RandomCrop:
    """Crops a random box of a fixed size.

    A frame smaller than the crop is first zero-padded (bottom / right) to the crop's size.

    Attributes:
      size: (height, width) or one int for a square.
      per_frame: draw a position for each frame.
    """

    size: int | tuple[int, int]
    per_frame: bool = False

    def __call__(self, clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        check_clip(clip, "RandomCrop")
        h, w = as_pair(self.size)
        pad_h, pad_w = max(0, h - clip.shape[1]), max(0, w - clip.shape[2])
        if pad_h or pad_w:
            clip = np.pad(clip, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
        height, width = clip.shape[1:3]
        draws = _per_frame_draws(self.per_frame, len(clip))
        tops = rng.integers(0, height - h + 1, size=draws)
        lefts = rng.integers(0, width - w + 1, size=draws)
        if not self.per_frame:
            return clip[:, tops[0] : tops[0] + h, lefts[0] : lefts[0] + w].copy()
        return np.stack(
            [f[y : y + h, x : x + w] for f, y, x in zip(clip, tops, lefts, strict=True)]
        )


@dataclasses.dataclass(frozen=True)
class HorizontalFlip:
    """Mirrors left-right with probability `p`.

    Attributes:
      p: flip probability.
      per_frame: decide for each frame.
    """

    p: float = 0.5
    per_frame: bool = False

    def __call__(self, clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        check_clip(clip, "HorizontalFlip")
        flips = rng.random(_per_frame_draws(self.per_frame, len(clip))) < self.p
        flips = np.broadcast_to(flips, (len(clip),))
        return np.where(flips[:, None, None, None], clip[:, :, ::-1], clip)


def _luma(clip: np.ndarray) -> np.ndarray:
    """ITU-R 601-2 luma of [..., 3] as float32 [..., 1] (what PIL's 'L' conversion uses)."""
    weights = np.asarray([0.299, 0.587, 0.114], np.float32)
    return (clip.astype(np.float32) @ weights)[..., None]


def _shift_hue(frame: np.ndarray, shift: float, max_value: float) -> np.ndarray:
    """Rotates the hue of a float32 frame by `shift` turns (fraction of 360 degrees)."""
    hsv = cv2.cvtColor(np.ascontiguousarray(frame / max_value, np.float32), cv2.COLOR_RGB2HSV)
    hsv[..., 0] = np.mod(hsv[..., 0] + 360.0 * shift, 360.0)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * max_value


@dataclasses.dataclass(frozen=True)
class ColourJitter:
    """Random brightness, contrast, saturation and hue, in random order (torchvision semantics).

    With probability `p` the clip is jittered: factors are uniform in [max(0, 1 - s), 1 + s] for
    brightness, contrast and saturation, the hue shift uniform in [-hue, hue] turns (hue <=
    0.5), and the four adjustments are applied in a random order. Contrast blends each frame
    with its mean luma; saturation with its luma image. A zero strength skips that adjustment.

    Attributes:
      brightness: strength of the brightness factor.
      contrast: strength of the contrast factor.
      saturation: strength of the saturation factor.
      hue: largest hue shift, turns.
      p: probability of jittering at all.
      per_frame: draw the parameters for each frame.
    """

    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    p: float = 0.8
    per_frame: bool = False

    def _params(self, rng: np.random.Generator) -> tuple[bool, list[int], np.ndarray]:
        apply = bool(rng.random() < self.p)
        order = rng.permutation(4).tolist()
        strengths = (self.brightness, self.contrast, self.saturation)
        values = [rng.uniform(max(0.0, 1.0 - s), 1.0 + s) for s in strengths]
        values.append(rng.uniform(-self.hue, self.hue))
        return apply, order, np.asarray(values)

    def _jitter(self, frames: np.ndarray, order: list[int], values: np.ndarray) -> np.ndarray:
        max_value = 255.0 if frames.dtype == np.uint8 else 1.0
        x = frames.astype(np.float32)
        for op in order:
            if op == 0 and self.brightness:
                x = np.clip(x * values[0], 0, max_value)
            elif op == 1 and self.contrast:
                mean = _luma(x).mean(axis=(1, 2, 3), keepdims=True)
                x = np.clip(values[1] * x + (1 - values[1]) * mean, 0, max_value)
            elif op == 2 and self.saturation:
                x = np.clip(values[2] * x + (1 - values[2]) * _luma(x), 0, max_value)
            elif op == 3 and self.hue:
                x = np.stack([_shift_hue(f, values[3], max_value) for f in x])
        return _as_dtype(x, frames.dtype)

    def __call__(self, clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        check_clip(clip, "ColourJitter")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"ColourJitter.hue: expected 0 <= hue <= 0.5, got {self.hue}")
        if not self.per_frame:
            apply, order, values = self._params(rng)
            return self._jitter(clip, order, values) if apply else clip
        out = []
        for frame in clip:
            apply, order, values = self._params(rng)
            out.append(self._jitter(frame[None], order, values)[0] if apply else frame)
        return np.stack(out)


@dataclasses.dataclass(frozen=True)
class Grayscale:
    """Replaces RGB by its luma (0.299 R + 0.587 G + 0.114 B) in all 3 channels, with prob. p.

    Attributes:
      p: probability.
      per_frame: decide for each frame.
    """

    p: float = 0.2
    per_frame: bool = False

    def __call__(self, clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        check_clip(clip, "Grayscale")
        apply = rng.random(_per_frame_draws(self.per_frame, len(clip))) < self.p
        if not apply.any():
            return clip
        gray = _as_dtype(np.repeat(_luma(clip), 3, axis=-1), clip.dtype)
        apply = np.broadcast_to(apply, (len(clip),))
        return np.where(apply[:, None, None, None], gray, clip)


@dataclasses.dataclass(frozen=True)
class GaussianBlur:
    """Gaussian blur with a random sigma, with probability `p`.

    The kernel spans +-3 sigma; borders are reflected (OpenCV's BORDER_REFLECT_101), so a
    constant image stays constant.

    Attributes:
      sigma: (min, max) standard deviation, pixels.
      p: probability.
      per_frame: draw sigma (and whether to blur) for each frame.
    """

    sigma: tuple[float, float] = (0.1, 2.0)
    p: float = 0.5
    per_frame: bool = False

    def __call__(self, clip: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        check_clip(clip, "GaussianBlur")
        draws = _per_frame_draws(self.per_frame, len(clip))
        apply = rng.random(draws) < self.p
        sigmas = rng.uniform(self.sigma[0], self.sigma[1], size=draws)
        out = []
        for t, frame in enumerate(clip):
            i = t if self.per_frame else 0
            if not apply[i]:
                out.append(frame)
                continue
            radius = max(1, int(math.ceil(3 * sigmas[i])))
            blurred = cv2.GaussianBlur(
                frame, (2 * radius + 1, 2 * radius + 1), sigmaX=float(sigmas[i])
            )
            out.append(blurred)
        return np.stack(out)


@dataclasses.dataclass(frozen=True)
class Normalize:
    """(clip / 255 - mean) / std as float32 (uint8 input; float input is taken as in [0, 1]).

    Attributes:
      mean: per-channel mean in [0, 1] units (default: ImageNet's).
      std: per-channel standard deviation in [0, 1] units.
    """

    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    def __call__(self, clip: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
        del rng  # deterministic
        check_clip(clip, "Normalize")
        x = clip.astype(np.float32) / np.float32(_max_value(clip))
        mean = np.asarray(self.mean, np.float32)
        std = np.asarray(self.std, np.float32)
        return (x - mean) / std


@dataclasses.dataclass(frozen=True)
class RandomAffine:
    """Random scale, rotation, translation and flip about the frame centre; returns the matrix.

    The output has `size` (default: the input's size). Its parameters are returned as a 2x3
    matrix A per frame mapping OUTPUT pixel coordinates to INPUT pixel coordinates:
    `[x_in, y_in] = A @ [x_out, y_out, 1]` with (x, y) = (column, row), pixel centres at
    integers. Two views of a frame with matrices A1, A2 are related by composing A1 with the
    inverse of A2; a loss can use this to compare features at corresponding positions.

    Attributes:
      scale: (min, max) zoom factor (> 1 magnifies).
      rotation: (min, max) rotation, degrees (counter-clockwise on screen).
      translation: (max_x, max_y) shift as a fraction of the input's width / height.
      flip: probability of a horizontal flip (applied before rotation).
      size: output (height, width) or one int; None keeps the input's size.
      interpolation: 'bilinear' or 'nearest'.
      per_frame: draw the parameters for each frame.
    """

    scale: tuple[float, float] = (0.8, 1.2)
    rotation: tuple[float, float] = (-15.0, 15.0)
    translation: tuple[float, float] = (0.1, 0.1)
    flip: float = 0.5
    size: int | tuple[int, int] | None = None
    interpolation: str = "bilinear"
    per_frame: bool = False

    def sample_matrix(
        self, in_size: tuple[int, int], out_size: tuple[int, int], rng: np.random.Generator
    ) -> np.ndarray:
        """A float64 [2, 3] output -> input matrix for one draw of the parameters."""
        in_h, in_w = in_size
        out_h, out_w = out_size
        zoom = rng.uniform(*self.scale)
        angle = math.radians(rng.uniform(*self.rotation))
        shift_x = rng.uniform(-1, 1) * self.translation[0] * in_w
        shift_y = rng.uniform(-1, 1) * self.translation[1] * in_h
        mirror = -1.0 if rng.random() < self.flip else 1.0
        # Output offset from the output centre -> input offset from the input centre: undo the
        # zoom, then the rotation (rows point down, so a counter-clockwise turn on screen is a
        # clockwise rotation in (x, y)), then the flip of x.
        cos, sin = math.cos(angle), math.sin(angle)
        linear = np.diag([mirror, 1.0]) @ np.asarray([[cos, -sin], [sin, cos]]) / zoom
        out_centre = np.asarray([(out_w - 1) / 2, (out_h - 1) / 2])
        in_centre = np.asarray([(in_w - 1) / 2 + shift_x, (in_h - 1) / 2 + shift_y])
        offset = in_centre - linear @ out_centre
        return np.concatenate([linear, offset[:, None]], axis=1)

    def __call__(self, clip: np.ndarray, rng: np.random.Generator) -> dict[str, Any]:
        check_clip(clip, "RandomAffine")
        if self.interpolation not in ("bilinear", "nearest"):
            raise ValueError(
                f"RandomAffine.interpolation: expected 'bilinear' or 'nearest', got "
                f"{self.interpolation!r}"
            )
        in_size = clip.shape[1:3]
        out_h, out_w = in_size if self.size is None else as_pair(self.size)
        draws = _per_frame_draws(self.per_frame, len(clip))
        matrices = [self.sample_matrix(in_size, (out_h, out_w), rng) for _ in range(draws)]
        flags = cv2.WARP_INVERSE_MAP | (
            cv2.INTER_LINEAR if self.interpolation == "bilinear" else cv2.INTER_NEAREST
        )
        frames = [
            cv2.warpAffine(
                frame,
                matrices[t if self.per_frame else 0],
                (out_w, out_h),
                flags=flags,
                borderMode=cv2.BORDER_CONSTANT,
                borderValue=0,
            )
            for t, frame in enumerate(clip)
        ]
        affine = np.stack([matrices[t if self.per_frame else 0] for t in range(len(clip))])
        return {"clip": np.stack(frames), "params": {"affine": affine.astype(np.float32)}}
