"""Pseudo-sequences from still images with a foreground mask (SHLS, BMVC'23).

SHLS trains on MSRA10K: one still image with its saliency mask becomes a short "video":
1. The image is fitted to size x size; the connected components of its foreground are the first
   objects (largest first; tiny ones and those beyond `max_objects` stay unlabelled, i.e.
   background).
2. Objects cut out of other images (their whole foreground) are pasted on top: 1..(room left)
   of them, each rescaled so its longer side is `paste_scale` of the frame, perspective-jittered,
   and placed (fully inside the frame) where it hides at most `max_occlusion` of every object
   already there in frame 0. In frame t >= 1 each pasted object is displaced from its frame-0
   place by a random offset of up to t * `motion` of the frame (the "growing area"), clipped to
   keep it inside the frame. Later objects are in front; occluded pixels leave the occluded
   object's mask.
3. Frame 0 is this composite. Frame t >= 1 is its own composite warped by its own random affine
   (rotation, scale, shear, translation about the centre, relative to frame 0; image bilinear,
   labels nearest, the same matrix) and colour-jittered (image only). Pixels warped in from
   outside the frame are black background.

Labels are 1..K in every frame, object k being the same physical object throughout; an object
warped out of a frame is absent there. Only the occlusion in frame 0 is bounded; motion and
warps may hide more in later frames. The SHLS reference draws 0..(room) pasted objects and
insists on one object overall; here an image with room always gets at least one pasted object
(when a donor has a usable foreground). Affine ranges follow the imgaug "aug_heavy" of the
STM-style training codes (rotation +-30 deg, shear +-15 deg, scale 0.8..1.2, translation
+-15 px of 256), applied always rather than each with probability 0.5.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import cv2
import numpy as np

from vosjax.data import still_images, transforms

# Candidate placements are tried this many times (the object shrinks after each failure).
_PLACEMENT_TRIES = 3
_SHRINK = 0.7
# A pasted pixel is the object's where its warped coverage reaches this.
_ALPHA_THRESHOLD = 0.5
RESIZE_MODES = ("crop", "stretch")


def _check_pair(name: str, value: tuple[float, float], low: float, high: float) -> None:
    if len(value) != 2 or not low <= value[0] <= value[1] <= high:
        raise ValueError(
            f"PseudoSequenceMaker.{name}: expected (min, max) with {low} <= min <= max <= "
            f"{high}, got {value}"
        )


def _check_image(image: np.ndarray, mask: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    image, mask = np.asarray(image), np.asarray(mask)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"{what} image: expected uint8 [H, W, 3], got {image.dtype} {list(image.shape)}"
        )
    if mask.shape != image.shape[:2]:
        raise ValueError(
            f"{what} mask: expected shape {list(image.shape[:2])} (the image's), got "
            f"{list(mask.shape)}"
        )
    return image, mask > 0


@dataclasses.dataclass
class _Pasted:
    """A cut-out object: colours uint8 [h, w, 3], coverage bool [h, w], top-left per frame."""

    colours: np.ndarray
    coverage: np.ndarray
    positions: list[tuple[int, int]]


@dataclasses.dataclass(frozen=True)
class PseudoSequenceMaker:
    """Makes a pseudo-sequence from an image, its foreground and donor images (see above).

    Attributes:
      size: S; frames are S x S.
      seq_len: T, number of frames.
      max_objects: most foreground objects in total (components + pasted), 1..254.
      min_object_fraction: components smaller than this fraction of the frame are not objects.
      paste_scale: (min, max) longer side of a pasted object, fraction of S.
      perspective: largest corner displacement of a pasted object, fraction of its size (< 0.25).
      max_occlusion: largest fraction of an object's frame-0 area that later pastes may hide.
      motion: largest displacement of a pasted object per frame, fraction of S; the bound grows
        linearly with the frame index.
      rotation: (min, max) rotation of frames 1.., degrees.
      scale: (min, max) zoom of frames 1...
      shear: (min, max) shear of frames 1.., degrees.
      translation: largest shift of frames 1.., fraction of S, in x and in y.
      color_jitter: (brightness, contrast, saturation, hue) strengths of the colour jitter of
        frames 1.. (`transforms.ColourJitter` semantics, drawn per frame); all zeros disables it.
      resize: 'crop': resize the short side to S, then crop a random S x S box; 'stretch':
        resize to S x S directly (the aspect ratio changes, the whole image stays).
    """

    size: int = 256
    seq_len: int = 3
    max_objects: int = 3
    min_object_fraction: float = 0.005
    paste_scale: tuple[float, float] = (0.1, 0.6)
    perspective: float = 0.1
    max_occlusion: float = 0.5
    motion: float = 0.05
    rotation: tuple[float, float] = (-30.0, 30.0)
    scale: tuple[float, float] = (0.8, 1.2)
    shear: tuple[float, float] = (-15.0, 15.0)
    translation: float = 0.06
    color_jitter: tuple[float, float, float, float] = (0.2, 0.2, 0.2, 0.01)
    resize: str = "crop"

    def __post_init__(self) -> None:
        if self.size < 8:
            raise ValueError(f"PseudoSequenceMaker.size: expected >= 8, got {self.size}")
        if self.seq_len < 1:
            raise ValueError(f"PseudoSequenceMaker.seq_len: expected >= 1, got {self.seq_len}")
        if not 1 <= self.max_objects <= 254:
            raise ValueError(
                f"PseudoSequenceMaker.max_objects: expected 1..254, got {self.max_objects}"
            )
        _check_pair("paste_scale", self.paste_scale, 1e-3, 1.0)
        _check_pair("rotation", self.rotation, -180.0, 180.0)
        _check_pair("scale", self.scale, 1e-2, 100.0)
        _check_pair("shear", self.shear, -60.0, 60.0)
        bounded = {
            "min_object_fraction": (self.min_object_fraction, 1.0),
            "perspective": (self.perspective, 0.24),
            "max_occlusion": (self.max_occlusion, 1.0),
            "motion": (self.motion, 1.0),
            "translation": (self.translation, 1.0),
        }
        for name, (value, high) in bounded.items():
            if not 0.0 <= value <= high:
                raise ValueError(
                    f"PseudoSequenceMaker.{name}: expected 0 <= value <= {high}, got {value}"
                )
        jitter = self.color_jitter
        if len(jitter) != 4 or min(jitter) < 0 or jitter[3] > 0.5:
            raise ValueError(
                "PseudoSequenceMaker.color_jitter: expected (brightness, contrast, saturation, "
                f"hue) >= 0 with hue <= 0.5, got {jitter}"
            )
        if self.resize not in RESIZE_MODES:
            raise ValueError(
                f"PseudoSequenceMaker.resize: expected one of {RESIZE_MODES}, got {self.resize!r}"
            )

    def __call__(
        self,
        image: np.ndarray,
        mask: np.ndarray,
        others: Sequence[tuple[np.ndarray, np.ndarray]],
        rng: np.random.Generator,
    ) -> dict[str, Any]:
        """Makes one pseudo-sequence.

        Args:
          image: uint8 [H, W, 3], the main image.
          mask: [H, W] foreground (bool, or any dtype: > 0 is foreground).
          others: donor (image, mask) pairs, used in order (those without foreground or
            without a place are passed over); read lazily, so a lazy sequence reads only the
            donors used.
          rng: all randomness.

        Returns:
          {'frames': uint8 [T, S, S, 3], 'masks': uint8 [T, S, S] (0 background, 1..K),
          'num_objects': int32 K}, K the objects of frame 0.

        Raises:
          ValueError: an image or mask of the wrong shape or dtype.
        """
        s = self.size
        image, fg = _check_image(image, mask, "main")
        base, fg = self._fit(image, fg, rng)
        main_labels = self._components(fg)
        num_main = int(main_labels.max())
        labels = main_labels.copy()  # frame 0's labels, updated as objects are pasted
        areas = [0] + [int(a) for a in np.bincount(main_labels.ravel())[1:]]
        pasted: list[_Pasted] = []
        room = self.max_objects - num_main
        if room > 0 and len(others) > 0:
            wanted = int(rng.integers(1, room + 1))
            for i in range(len(others)):
                if len(pasted) == wanted:
                    break
                donor_image, donor_mask = _check_image(*others[i], f"donor {i}")
                obj = self._place(donor_image, donor_mask, labels, areas, rng)
                if obj is None:
                    continue
                k = len(areas)
                y, x = obj.positions[0]
                h, w = obj.coverage.shape
                labels[y : y + h, x : x + w][obj.coverage] = k
                areas.append(int(obj.coverage.sum()))
                pasted.append(obj)
        for obj in pasted:
            self._move(obj, rng)

        frames = np.empty((self.seq_len, s, s, 3), np.uint8)
        masks = np.empty((self.seq_len, s, s), np.uint8)
        for t in range(self.seq_len):
            frame, label = base.copy(), main_labels.copy()
            for k, obj in enumerate(pasted, start=num_main + 1):
                y, x = obj.positions[t]
                h, w = obj.coverage.shape
                frame[y : y + h, x : x + w][obj.coverage] = obj.colours[obj.coverage]
                label[y : y + h, x : x + w][obj.coverage] = k
            if t > 0:
                frame, label = self._warp(frame, label, rng)
            frames[t], masks[t] = frame, label

        # Objects hidden entirely in frame 0 (possible only with max_occlusion = 1) are dropped.
        present = np.flatnonzero(np.bincount(masks[0].ravel(), minlength=len(areas)))
        relabel = np.zeros(256, np.uint8)
        present = present[present > 0]
        relabel[present] = np.arange(1, len(present) + 1)
        masks = relabel[masks]
        if self.seq_len > 1 and any(self.color_jitter):
            frames[1:] = transforms.ColourJitter(*self.color_jitter, p=1.0, per_frame=True)(
                frames[1:], rng
            )
        return {"frames": frames, "masks": masks, "num_objects": np.int32(len(present))}

    def _fit(
        self, image: np.ndarray, fg: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Image and foreground at S x S ('crop' or 'stretch'); the mask is area-resampled."""
        s = self.size
        height, width = image.shape[:2]
        if self.resize == "stretch":
            new_h = new_w = s
        else:
            factor = s / min(height, width)
            new_h = max(s, int(round(height * factor)))
            new_w = max(s, int(round(width * factor)))
        image = transforms.resize_frame(image, new_h, new_w)
        cover = transforms.resize_frame(fg.astype(np.float32), new_h, new_w)
        top = int(rng.integers(0, new_h - s + 1))
        left = int(rng.integers(0, new_w - s + 1))
        image = np.ascontiguousarray(image[top : top + s, left : left + s])
        fg = cover[top : top + s, left : left + s] >= _ALPHA_THRESHOLD
        return image, fg

    def _components(self, fg: np.ndarray) -> np.ndarray:
        """uint8 [S, S] labels 1..K0 of the largest components (8-connected), 0 elsewhere."""
        count, components, stats, _ = cv2.connectedComponentsWithStats(
            fg.astype(np.uint8), connectivity=8
        )
        sizes = stats[1:count, cv2.CC_STAT_AREA]
        min_pixels = self.min_object_fraction * fg.size
        order = [i + 1 for i in np.argsort(-sizes, kind="stable") if sizes[i] >= min_pixels]
        relabel = np.zeros(count, np.uint8)
        for k, component in enumerate(order[: self.max_objects], start=1):
            relabel[component] = k
        return relabel[components]

    def _cut_out(
        self, image: np.ndarray, fg: np.ndarray, longer_side: float, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The donor's foreground rescaled and perspective-warped: (colours, coverage) or None."""
        rows, cols = np.flatnonzero(fg.any(axis=1)), np.flatnonzero(fg.any(axis=0))
        if rows.size == 0:
            return None
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        factor = longer_side / max(y1 - y0, x1 - x0)
        new_h = max(1, int(round((y1 - y0) * factor)))
        new_w = max(1, int(round((x1 - x0) * factor)))
        alpha = fg[y0:y1, x0:x1].astype(np.float32)
        # Premultiplied colours: resampling then never mixes in the donor's background.
        premultiplied = image[y0:y1, x0:x1].astype(np.float32) * alpha[..., None]
        alpha = transforms.resize_frame(alpha, new_h, new_w)
        premultiplied = transforms.resize_frame(premultiplied, new_h, new_w)
        # Corners at pixel edges (x, y); each moves by up to `perspective` of the object size.
        src = np.asarray([[0, 0], [new_w, 0], [new_w, new_h], [0, new_h]], np.float32)
        jitter = rng.uniform(-self.perspective, self.perspective, (4, 2)) * [new_w, new_h]
        dst = src + jitter.astype(np.float32)
        dst -= dst.min(axis=0)
        out_w, out_h = (int(math.ceil(v)) for v in dst.max(axis=0))
        if max(out_w, out_h) > self.size:  # only with paste_scale near 1: shrink to fit
            dst *= self.size / max(out_w, out_h)
            out_w, out_h = (min(self.size, int(math.ceil(v))) for v in dst.max(axis=0))
        matrix = cv2.getPerspectiveTransform(src - 0.5, dst - 0.5)

        def warp(values: np.ndarray) -> np.ndarray:
            return cv2.warpPerspective(
                values, matrix, (out_w, out_h), flags=cv2.INTER_LINEAR, borderValue=0
            )

        alpha, premultiplied = warp(alpha), warp(premultiplied)
        coverage = alpha >= _ALPHA_THRESHOLD
        if not coverage.any():
            return None
        colours = premultiplied / np.maximum(alpha, 1e-6)[..., None]
        colours = np.where(coverage[..., None], np.clip(np.rint(colours), 0, 255), 0)
        return colours.astype(np.uint8), coverage

    def _place(
        self,
        image: np.ndarray,
        fg: np.ndarray,
        labels: np.ndarray,
        areas: list[int],
        rng: np.random.Generator,
    ) -> _Pasted | None:
        """Cuts the donor's object out and finds a frame-0 place within the occlusion bound."""
        s = self.size
        longer_side = rng.uniform(*self.paste_scale) * s
        for _ in range(_PLACEMENT_TRIES):
            cut = self._cut_out(image, fg, longer_side, rng)
            if cut is None:
                return None
            colours, coverage = cut
            h, w = coverage.shape
            template = coverage.astype(np.float32)
            allowed = np.ones((s - h + 1, s - w + 1), bool)
            for k in range(1, len(areas)):
                visible = labels == k
                budget = visible.sum() - (1.0 - self.max_occlusion) * areas[k]
                if not visible.any():
                    continue
                # overlap[y, x] = object k's pixels that the paste at top-left (y, x) would hide.
                overlap = cv2.matchTemplate(visible.astype(np.float32), template, cv2.TM_CCORR)
                allowed &= np.rint(overlap) <= budget
            places = np.flatnonzero(allowed)
            if places.size:
                y, x = divmod(int(places[rng.integers(places.size)]), allowed.shape[1])
                return _Pasted(colours, coverage, [(y, x)])
            longer_side *= _SHRINK
        return None

    def _move(self, obj: _Pasted, rng: np.random.Generator) -> None:
        """Positions of frames 1..T-1: frame 0's plus up to t * motion * S, inside the frame."""
        h, w = obj.coverage.shape
        y0, x0 = obj.positions[0]
        for t in range(1, self.seq_len):
            dy, dx = rng.uniform(-1.0, 1.0, 2) * self.motion * t * self.size
            y = int(np.clip(round(y0 + dy), 0, self.size - h))
            x = int(np.clip(round(x0 + dx), 0, self.size - w))
            obj.positions.append((y, x))

    def affine_matrix(self, rng: np.random.Generator) -> np.ndarray:
        """A random float64 [2, 3] matrix mapping frame-0 pixels (x, y) to frame-t pixels."""
        s = self.size
        angle = math.radians(rng.uniform(*self.rotation))
        shear = math.radians(rng.uniform(*self.shear))
        zoom = rng.uniform(*self.scale)
        shift = rng.uniform(-1.0, 1.0, 2) * self.translation * s
        cos, sin = math.cos(angle), math.sin(angle)
        linear = np.asarray([[cos, -sin], [sin, cos]]) @ np.asarray(
            [[1.0, math.tan(shear)], [0, 1]]
        )
        linear *= zoom
        centre = np.full(2, (s - 1) / 2)
        offset = centre + shift - linear @ centre
        return np.concatenate([linear, offset[:, None]], axis=1)

    def _warp(
        self, frame: np.ndarray, label: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        matrix = self.affine_matrix(rng)
        size = (self.size, self.size)
        frame = cv2.warpAffine(
            frame, matrix, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT
        )
        label = cv2.warpAffine(
            label, matrix, size, flags=cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT
        )
        return frame, label


class _Donors(Sequence):
    """Donor images of a source, read when indexed (the maker reads only those it uses)."""

    def __init__(self, source: still_images.StillImageSource, indices: np.ndarray):
        self.source = source
        self.indices = [int(i) for i in indices]

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        return self.source.read(self.indices[i])


@dataclasses.dataclass(frozen=True)
class PseudoSequenceLoader:
    """grain random-map transform: image index -> one pseudo-sequence example.

    Attributes:
      source: the still images.
      maker: the pseudo-sequence recipe.
      superpixel_fn: optional frame uint8 [S, S, 3] -> superpixel labels [S, S] (e.g. SLIC).
    """

    source: still_images.StillImageSource
    maker: PseudoSequenceMaker
    superpixel_fn: Callable[[np.ndarray], np.ndarray] | None = None

    def __call__(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        """Reads image `index`, draws up to `max_objects` other images as donors, makes the
        pseudo-sequence.

        Returns:
          the maker's dict plus 'image_index': int32 and, with `superpixel_fn`,
          'superpixels': int32 [T, S, S].

        Raises:
          DataError: the image or a donor used is corrupt (named in the message); nothing is
            skipped.
          ValueError: `superpixel_fn` returns the wrong shape.
        """
        index = int(index)
        image, mask = self.source.read(index)
        count = len(self.source)
        picks = rng.choice(count - 1, size=min(self.maker.max_objects, count - 1), replace=False)
        picks = picks + (picks >= index)  # every index but `index`
        example = self.maker(image, mask, _Donors(self.source, picks), rng)
        example["image_index"] = np.int32(index)
        if self.superpixel_fn is not None:
            superpixels = [np.asarray(self.superpixel_fn(f)) for f in example["frames"]]
            expected = example["frames"].shape[1:3]
            bad = [sp.shape for sp in superpixels if sp.shape != expected]
            if bad:
                raise ValueError(
                    f"superpixel_fn: expected labels of shape {list(expected)}, got {list(bad[0])}"
                )
            example["superpixels"] = np.stack(superpixels).astype(np.int32)
        return example
