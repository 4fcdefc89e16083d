"""Pictures of a segmentation: an mp4 of the masks over the frames, and a sheet of 8 frames.

Both take the frames one at a time and keep none of them, except the sheet's few thumbnails,
whose frame indices are chosen up front from the frame count.
"""

from __future__ import annotations

import pathlib

import cv2
import numpy as np

from vosjax.data import image_io

# A codec that every OpenCV build writes and reads (FFmpeg's MPEG-4 part 2); H.264 encoders
# are missing from the pip wheels.
FOURCC = "mp4v"


def even_size(size: tuple[int, int]) -> tuple[int, int]:
    """(H, W) rounded up to even numbers: the mp4 codec's 4:2:0 chroma needs them."""
    return size[0] + size[0] % 2, size[1] + size[1] % 2


class OverlayVideoWriter:
    """Writes `image_io.overlay(frame, mask)` frames to an mp4 (`FOURCC`).

    Frames of odd height or width are padded by one edge row or column (`even_size`).

    Attributes:
      path: the mp4 file.
      fps: frames per second.
      size: (H, W) of the frames given to `write`.
      frames_written: frames written so far.
    """

    def __init__(self, path: image_io.PathLike, fps: float, size: tuple[int, int]) -> None:
        """Opens the file for writing.

        Raises:
          ValueError: fps not positive.
          OSError: OpenCV cannot open an mp4 writer at `path`.
        """
        if not fps > 0:
            raise ValueError(f"overlay video {path}: fps={fps}, expected a positive number")
        self.path = pathlib.Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fps = float(fps)
        self.size = (int(size[0]), int(size[1]))
        height, width = even_size(self.size)
        self._writer = cv2.VideoWriter(
            str(self.path), cv2.VideoWriter_fourcc(*FOURCC), self.fps, (width, height)
        )
        if not self._writer.isOpened():
            raise OSError(f"{self.path}: OpenCV cannot write an mp4 ({FOURCC}) here")
        self.frames_written = 0

    def write(self, frame: np.ndarray, mask: np.ndarray) -> None:
        """Appends a frame uint8 [H, W, 3] (RGB) with its mask of ids [H, W] blended over it."""
        if frame.shape[:2] != self.size or mask.shape != self.size:
            raise ValueError(
                f"{self.path}: frame {frame.shape[:2]} / mask {mask.shape}, expected {self.size}"
            )
        image = image_io.overlay(frame, mask)
        pad_h, pad_w = self.size[0] % 2, self.size[1] % 2
        if pad_h or pad_w:
            image = np.pad(image, ((0, pad_h), (0, pad_w), (0, 0)), mode="edge")
        self._writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        self.frames_written += 1

    def close(self) -> None:
        """Finishes the file."""
        self._writer.release()

    def __enter__(self) -> OverlayVideoWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def sheet_frames(num_frames: int, count: int = 8) -> tuple[int, ...]:
    """`count` frame indices spread evenly from the first frame to the last (fewer if the
    video is shorter)."""
    return tuple(sorted({round(i) for i in np.linspace(0, num_frames - 1, min(count, num_frames))}))


class OverlaySheet:
    """A PNG of a few overlay frames in a grid, each labelled with its frame name.

    `add` takes every frame and keeps a thumbnail of those in `frames` only.

    Attributes:
      frames: the indices of the frames on the sheet.
      columns: thumbnails per row.
      thumb_size: (h, w) of a thumbnail.
    """

    def __init__(
        self,
        num_frames: int,
        size: tuple[int, int],
        count: int = 8,
        columns: int = 4,
        thumb_width: int = 480,
    ) -> None:
        self.frames = sheet_frames(num_frames, count)
        self.columns = min(columns, len(self.frames))
        width = min(thumb_width, size[1])
        self.thumb_size = (max(1, round(size[0] * width / size[1])), width)
        self._thumbs: dict[int, np.ndarray] = {}

    def add(self, index: int, name: str, frame: np.ndarray, mask: np.ndarray) -> None:
        """Keeps frame `index` (named `name`) if it is on the sheet."""
        if index not in self.frames:
            return
        height, width = self.thumb_size
        image = image_io.overlay(frame, mask)
        thumb = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
        cv2.putText(thumb, name, (6, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 3)
        cv2.putText(thumb, name, (6, 22), cv2.FONT_HERSHEY_SIMPLEX, 0.6, (255, 255, 255), 1)
        self._thumbs[index] = thumb

    def save(self, path: image_io.PathLike) -> pathlib.Path:
        """Writes the grid (white between thumbnails) as an RGB PNG.

        Raises:
          ValueError: a frame of the sheet was never added.
        """
        missing = [i for i in self.frames if i not in self._thumbs]
        if missing:
            raise ValueError(f"overlay sheet {path}: frames {missing} were not added")
        height, width = self.thumb_size
        rows = -(-len(self.frames) // self.columns)
        gap = 4
        sheet = np.full(
            (rows * height + (rows - 1) * gap, self.columns * width + (self.columns - 1) * gap, 3),
            255,
            np.uint8,
        )
        for k, index in enumerate(self.frames):
            y, x = (k // self.columns) * (height + gap), (k % self.columns) * (width + gap)
            sheet[y : y + height, x : x + width] = self._thumbs[index]
        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
        return path
