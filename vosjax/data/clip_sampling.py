"""Which frames of a video make a training clip.

A `ClipSampler` turns a video length and an RNG into T frame indices; a source then decodes only
those frames. Modes:
- 'random': a random start, then frames `frame_gap` apart; with `random_gaps=True` each of the
  T - 1 gaps is drawn uniformly from 1..frame_gap instead.
- 'consecutive': T adjacent frames (gap 1) from a random start; `frame_gap` is not used.
`permute=True` shuffles the T indices (Mask-VOS's released code feeds the frames of a clip in a
random order).

Videos shorter than a clip needs (span = (T - 1) * gap + 1 frames):
- `short_video='shrink_gap'` (default): use the largest gap that fits, (N - 1) // (T - 1);
  with fewer than T frames (gap 1 does not fit either) the last frame is repeated.
- `short_video='repeat_last'`: keep the gap from frame 0 and repeat the last frame for the
  indices past the end.
"""

from __future__ import annotations

import dataclasses

import numpy as np

MODES = ("random", "consecutive")
SHORT_VIDEO_POLICIES = ("shrink_gap", "repeat_last")


@dataclasses.dataclass(frozen=True)
class ClipSampler:
    """Samples T frame indices of a video.

    Attributes:
      num_frames: clip length T.
      frame_gap: stride between sampled frames ('random' mode), or the largest gap when
        `random_gaps`.
      mode: 'random' or 'consecutive' (see the module docstring).
      random_gaps: draw each gap uniformly from 1..frame_gap ('random' mode only).
      permute: return the T indices in a random order.
      short_video: 'shrink_gap' or 'repeat_last' for videos shorter than the clip's span.
    """

    num_frames: int
    frame_gap: int = 1
    mode: str = "random"
    random_gaps: bool = False
    permute: bool = False
    short_video: str = "shrink_gap"

    def __post_init__(self) -> None:
        if self.num_frames < 1:
            raise ValueError(f"ClipSampler.num_frames: expected >= 1, got {self.num_frames}")
        if self.frame_gap < 1:
            raise ValueError(f"ClipSampler.frame_gap: expected >= 1, got {self.frame_gap}")
        if self.mode not in MODES:
            raise ValueError(f"ClipSampler.mode: expected one of {MODES}, got {self.mode!r}")
        if self.short_video not in SHORT_VIDEO_POLICIES:
            raise ValueError(
                f"ClipSampler.short_video: expected one of {SHORT_VIDEO_POLICIES}, got "
                f"{self.short_video!r}"
            )

    def _gaps(self, video_length: int, rng: np.random.Generator) -> np.ndarray:
        """The T - 1 gaps between consecutive sampled frames."""
        steps = self.num_frames - 1
        max_gap = 1 if self.mode == "consecutive" else self.frame_gap
        if steps and self.short_video == "shrink_gap":
            max_gap = max(1, min(max_gap, (video_length - 1) // steps))
        if self.random_gaps and self.mode == "random":
            return rng.integers(1, max_gap + 1, size=steps)
        return np.full(steps, max_gap, np.int64)

    def indices(self, video_length: int, rng: np.random.Generator) -> np.ndarray:
        """Frame indices of one clip.

        Args:
          video_length: N, the number of frames of the video.
          rng: random generator (start, random gaps, permutation).

        Returns:
          int64 [T], every index in 0..N-1; increasing unless `permute` (repeated at the end
          for a video too short, see the module docstring).

        Raises:
          ValueError: `video_length` < 1.
        """
        if video_length < 1:
            raise ValueError(f"ClipSampler: a video needs at least 1 frame, got {video_length}")
        gaps = self._gaps(video_length, rng)
        offsets = np.concatenate([[0], np.cumsum(gaps)]).astype(np.int64)
        last_start = video_length - 1 - int(offsets[-1])
        start = int(rng.integers(0, last_start + 1)) if last_start > 0 else 0
        indices = np.minimum(start + offsets, video_length - 1)
        if self.permute:
            indices = rng.permutation(indices)
        return indices
