"""The video sequence that every reader returns and every evaluation loop consumes."""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from vosjax.data import image_io


@dataclasses.dataclass(frozen=True)
class VideoSequence:
    """A video, the annotations given for it, and the frames that need predictions.

    Attributes:
      name: sequence name; predictions are written to `<results>/<name>/<frame_name>.png`.
      frame_names: one name per frame (the file stem, e.g. '00000').
      image_size: (height, width) of every frame.
      read_frame_fn: frame index -> uint8 [H, W, 3].
      mask_paths: frame index -> annotation file, for the frames that have one (every frame for
        DAVIS ground truth, some for YouTube-VOS, the first for a user's video).
      output_frames: indices of the frames that need a prediction (all for DAVIS, the listed
        ones for YouTube-VOS).
      source: where the sequence was read from, for error messages.
      object_starts: object id -> index of the frame whose annotation introduces it, when the
        dataset declares it (YouTube-VOS meta.json: objects may appear after frame 0). None
        (DAVIS, a user's video) means every object is given in the first frame's mask;
        `start_frames` then reads them from that mask, lazily, on first use.
    """

    name: str
    frame_names: tuple[str, ...]
    image_size: tuple[int, int]
    read_frame_fn: Callable[[int], np.ndarray] = dataclasses.field(repr=False)
    mask_paths: Mapping[int, pathlib.Path] = dataclasses.field(repr=False)
    output_frames: tuple[int, ...] = dataclasses.field(repr=False)
    source: str = ""
    object_starts: Mapping[int, int] | None = dataclasses.field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.frame_names)

    def read_frame(self, index: int) -> np.ndarray:
        """Frame `index` as uint8 [H, W, 3]; raises DataError if its size differs."""
        frame = self.read_frame_fn(index)
        if frame.shape[:2] != tuple(self.image_size):
            raise image_io.DataError(
                f"{self.source}: frame {self.frame_names[index]} has size {frame.shape[:2]}, "
                f"expected {tuple(self.image_size)} like the sequence's first frame"
            )
        return frame

    def read_mask(self, index: int) -> np.ndarray:
        """Annotation of frame `index` as object ids uint8 [H, W] (255 = void).

        Raises:
          DataError: the frame has no annotation, or the mask's size differs from the frame's.
        """
        if index not in self.mask_paths:
            raise image_io.DataError(
                f"{self.source}: no annotation for frame {self.frame_names[index]} of {self.name}"
            )
        path = self.mask_paths[index]
        mask = image_io.read_mask(path)
        if mask.shape != tuple(self.image_size):
            raise image_io.DataError(
                f"{path}: mask size {mask.shape} differs from the frame size "
                f"{tuple(self.image_size)}"
            )
        return mask

    @property
    def annotated_frames(self) -> tuple[int, ...]:
        return tuple(sorted(self.mask_paths))

    @functools.cached_property
    def start_frames(self) -> dict[int, int]:
        """Object id -> index of the frame whose annotation gives that object.

        `object_starts` when the reader set it; otherwise every id (not 0, not void 255) of the
        first frame's mask, starting at frame 0. Computed once, on first use: only the frame-0
        mask is read (the later masks of DAVIS are ground truth, not inputs).
        """
        if self.object_starts is not None:
            return dict(sorted(self.object_starts.items()))
        ids = np.unique(self.read_mask(0))
        return {int(i): 0 for i in ids if i not in (0, image_io.VOID)}

    def objects_starting_at(self, index: int) -> tuple[int, ...]:
        """Ids of the objects whose given annotation is the mask of frame `index`."""
        return tuple(i for i, start in self.start_frames.items() if start == index)


def frame_folder_sequence(
    name: str,
    frame_paths: Sequence[pathlib.Path],
    mask_paths: Mapping[int, pathlib.Path],
    output_frames: Sequence[int] | None = None,
    source: str = "",
    object_starts: Mapping[int, int] | None = None,
) -> VideoSequence:
    """A sequence whose frames are image files.

    Raises:
      DataError: no frames.
    """
    frame_paths = tuple(frame_paths)
    if not frame_paths:
        raise image_io.DataError(f"{source or name}: empty sequence, expected image files")
    return VideoSequence(
        name=name,
        frame_names=tuple(p.stem for p in frame_paths),
        image_size=image_io.frame_size(frame_paths[0]),
        read_frame_fn=lambda i: image_io.read_frame(frame_paths[i]),
        mask_paths=dict(mask_paths),
        output_frames=tuple(range(len(frame_paths)) if output_frames is None else output_frames),
        source=source or str(frame_paths[0].parent),
        object_starts=None if object_starts is None else dict(object_starts),
    )
