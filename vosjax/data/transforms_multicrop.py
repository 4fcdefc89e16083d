"""Multi-crop augmentation (DINO's, as INO uses it: per frame, global and local crops)."""

from __future__ import annotations

import dataclasses

import numpy as np

from vosjax.data import transforms


@dataclasses.dataclass(frozen=True)
class MultiCrop:
    """Per frame, `num_global` large and `num_local` small crops, each with its own augmentation.

    Each crop draws its own box (`RandomResizedCrop`, torchvision semantics), flip, colour jitter
    (0.4, 0.4, 0.2, 0.1 with p=0.8), grayscale (p=0.2) and blur (p=1.0 for global crops, 0.5
    for local ones), as in DINO; then `normalize`. Crops of different frames are independent.

    Attributes:
      global_size: side of the global crops, pixels.
      global_scale: (min, max) area of a global crop, fraction of the frame.
      num_global: global crops per frame (INO: 1).
      local_size: side of the local crops (INO: 64 or 96).
      local_scale: (min, max) area of a local crop.
      num_local: local crops per frame.
      flip_p: probability of mirroring a crop.
      jitter: colour jitter of every crop.
      grayscale_p: probability of converting a crop to grayscale.
      global_blur_p: blur probability of a global crop.
      local_blur_p: blur probability of a local crop.
      augment_global: False leaves global crops un-augmented (crop and resize only; INO's
        released code), True augments them like local crops (DINO; the INO paper).
      normalize: applied last; None keeps the input's dtype.
    """

    global_size: int = 224
    global_scale: tuple[float, float] = (0.4, 1.0)
    num_global: int = 1
    local_size: int = 96
    local_scale: tuple[float, float] = (0.05, 0.4)
    num_local: int = 8
    flip_p: float = 0.5
    jitter: transforms.ColourJitter = transforms.ColourJitter(0.4, 0.4, 0.2, 0.1, p=0.8)
    grayscale_p: float = 0.2
    global_blur_p: float = 1.0
    local_blur_p: float = 0.5
    augment_global: bool = True
    normalize: transforms.Normalize | None = transforms.Normalize()

    def _crops(
        self,
        frame: np.ndarray,
        count: int,
        crop: transforms.RandomResizedCrop,
        blur_p: float,
        rng: np.random.Generator,
        augmented: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        height, width = frame.shape[:2]
        size = transforms.as_pair(crop.size)
        steps = (
            transforms.HorizontalFlip(self.flip_p),
            self.jitter,
            transforms.Grayscale(self.grayscale_p),
            transforms.GaussianBlur((0.1, 2.0), p=blur_p),
        )
        augment = transforms.Compose(steps if augmented else ())
        crops, boxes = [], []
        for _ in range(count):
            top, left, h, w = crop.sample_box(height, width, rng)
            patch = transforms.resize_frame(frame[top : top + h, left : left + w], *size)
            patch = augment(patch[None], rng)
            if self.normalize is not None:
                patch = self.normalize(patch)
            crops.append(patch[0])
            boxes.append((top, left, h, w))
        return np.stack(crops), np.asarray(boxes, np.int32).reshape(count, 4)

    def __call__(self, clip: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Crops every frame.

        Args:
          clip: [T, H, W, 3].
          rng: random generator.

        Returns:
          {'global': [T, num_global, G, G, 3], 'local': [T, num_local, L, L, 3] (float32 if
          normalized), 'global_boxes' / 'local_boxes': int32 [T, n, 4] crop boxes (top, left,
          height, width) in input pixels, so that a loss can find where crops overlap}.
        """
        transforms.check_clip(clip, "MultiCrop")
        global_crop = transforms.RandomResizedCrop(self.global_size, self.global_scale)
        local_crop = transforms.RandomResizedCrop(self.local_size, self.local_scale)
        out = {"global": [], "local": [], "global_boxes": [], "local_boxes": []}
        for frame in clip:
            crops, boxes = self._crops(
                frame, self.num_global, global_crop, self.global_blur_p, rng, self.augment_global
            )
            out["global"].append(crops)
            out["global_boxes"].append(boxes)
            crops, boxes = self._crops(frame, self.num_local, local_crop, self.local_blur_p, rng)
            out["local"].append(crops)
            out["local_boxes"].append(boxes)
        return {key: np.stack(value) for key, value in out.items()}
