"""A user's own video: a folder of images or a video file, plus the first frame's mask.

Video files are decoded lazily with OpenCV: `VideoFileReader` decodes forward, keeps the first
frame and a few recent ones, and re-opens the file on a backward seek. An evaluation loop that
reads frames in order therefore decodes each frame once and never holds the whole video.
"""

from __future__ import annotations

import collections
import pathlib
import re
import threading
from typing import Any

import cv2
import numpy as np

from vosjax.data import image_io, sequence

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".m4v", ".webm")
# Containers whose header frame count is exact (the mp4 / mov sample tables); other containers
# (mkv, avi, webm) may only estimate it from duration x fps, so their frames are counted.
_EXACT_COUNT_EXTENSIONS = (".mp4", ".mov", ".m4v")


def natural_key(name: str) -> tuple[Any, ...]:
    """Sort key that orders digit runs by value: 'frame_2.jpg' < 'frame_10.jpg'."""
    return tuple(int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name))


class VideoFileReader:
    """Random access to the frames of a video file, decoded on demand.

    Sequential reads decode each frame once. A read before the decoder's position re-opens the
    file and decodes forward from the start, unless the frame is cached: frame 0 always is (the
    semi-supervised task keeps returning to it), and so are the last `cache_size` frames read.
    Memory is thus bounded by `cache_size + 1` frames. Thread-safe; picklable (the decoder is
    re-opened in the new process).

    Attributes:
      path: the video file.
      num_frames: number of frames.
      decoded: frames decoded so far (for tests and profiling).
      opens: times the file was opened.
    """

    def __init__(self, path: image_io.PathLike, cache_size: int = 4) -> None:
        """Opens the video and decodes its first frame.

        Raises:
          DataError: the file is missing, cannot be decoded, or has no frame.
        """
        self.path = pathlib.Path(path)
        self.cache_size = cache_size
        self.decoded = 0
        self.opens = 0
        self._init_state()
        if not self.path.is_file():
            raise image_io.DataError(f"{self.path}: video file not found")
        with self._lock:
            self._first = self._read_locked(0, count_hint=None)
            self.num_frames = self._count_frames()

    def _init_state(self) -> None:
        self._lock = threading.Lock()
        self._capture: cv2.VideoCapture | None = None
        self._next = 0  # index of the frame the next decode returns
        self._recent: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        for key in ("_lock", "_capture", "_next", "_recent"):
            del state[key]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._init_state()

    def __len__(self) -> int:
        return self.num_frames

    def _open(self) -> None:
        if self._capture is not None:
            self._capture.release()
        capture = cv2.VideoCapture(str(self.path))
        if not capture.isOpened():
            raise image_io.DataError(
                f"{self.path}: unreadable video (OpenCV/FFmpeg cannot open it); expected one of "
                f"{VIDEO_EXTENSIONS} with a codec FFmpeg decodes"
            )
        self._capture = capture
        self._next = 0
        self.opens += 1

    def _count_frames(self) -> int:
        count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT))
        if count > 0 and self.path.suffix.lower() in _EXACT_COUNT_EXTENSIONS:
            return count
        # Count by demuxing and decoding to the end, then start over (one pass, no frame kept).
        count = self._next
        while self._capture.grab():
            count += 1
        self._open()
        return count

    def _read_locked(self, index: int, count_hint: int | None) -> np.ndarray:
        if self._capture is None or index < self._next:
            self._open()
        while self._next < index:
            if not self._capture.grab():
                break
            self._next += 1
            self.decoded += 1
        ok, bgr = self._capture.read() if self._next == index else (False, None)
        if not ok:
            if index == 0:
                raise image_io.DataError(f"{self.path}: video has no frame that decodes")
            raise image_io.DataError(
                f"{self.path}: video ended or failed to decode at frame {self._next}, before "
                f"frame {index} (its header announced {count_hint} frames)"
            )
        self._next += 1
        self.decoded += 1
        frame = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
        frame.flags.writeable = False  # cached and shared between callers
        return frame

    def read(self, index: int) -> np.ndarray:
        """Frame `index` as uint8 [H, W, 3] RGB (read-only).

        Raises:
          IndexError: index outside 0..num_frames-1.
          DataError: the video fails to decode up to that frame.
        """
        if not 0 <= index < self.num_frames:
            raise IndexError(f"{self.path}: frame {index} of a {self.num_frames}-frame video")
        if index == 0:
            return self._first
        with self._lock:
            if index in self._recent:
                self._recent.move_to_end(index)
                return self._recent[index]
            frame = self._read_locked(index, count_hint=self.num_frames)
            self._recent[index] = frame
            while len(self._recent) > self.cache_size:
                self._recent.popitem(last=False)
            return frame

    def close(self) -> None:
        """Releases the decoder (a later read re-opens it)."""
        with self._lock:
            if self._capture is not None:
                self._capture.release()
            self._capture = None


def _image_files(folder: pathlib.Path, exclude: pathlib.Path) -> list[pathlib.Path]:
    files = [
        p
        for p in folder.iterdir()
        if p.is_file()
        and p.suffix.lower() in IMAGE_EXTENSIONS
        and not p.name.startswith(".")
        and p.resolve() != exclude
    ]
    if not files:
        raise image_io.DataError(f"{folder}: no frames, expected image files {IMAGE_EXTENSIONS}")
    return sorted(files, key=lambda p: natural_key(p.name))


def load_user_video(
    frames: image_io.PathLike,
    first_mask: image_io.PathLike,
    name: str | None = None,
    cache_size: int = 4,
) -> sequence.VideoSequence:
    """A user's video with the mask of its first frame.

    Args:
      frames: a folder of images (.jpg/.png, in natural name order: frame_2 < frame_10) or a
        video file (.mp4, .avi, .mov, .mkv, ...), decoded lazily by `VideoFileReader`.
      first_mask: the first frame's mask: an indexed PNG of object ids or a binary PNG
        (object 1).
      name: sequence name (results go to `<results>/<name>/`); default: the folder name or the
        video file's stem.
      cache_size: for a video file, how many recently read frames stay decoded.

    Returns:
      the sequence: frame names are the image stems (or '00000', '00001', ... for a video
      file), `mask_paths` is {0: first_mask}, every frame is an output frame.

    Raises:
      DataError: `frames` or `first_mask` missing, no frames, unreadable video or mask, a mask
        whose size differs from the frames', or a mask with no object.
    """
    frames = pathlib.Path(frames)
    first_mask = pathlib.Path(first_mask)
    if not frames.exists():
        raise image_io.DataError(f"{frames}: frames not found, expected a folder or a video file")
    if not first_mask.is_file():
        raise image_io.DataError(f"{first_mask}: first-frame mask not found")
    if frames.is_dir():
        files = _image_files(frames, exclude=first_mask.resolve())
        seq = sequence.frame_folder_sequence(
            name or frames.name, files, {0: first_mask}, source=str(frames)
        )
        first_frame = files[0]
    elif frames.suffix.lower() in VIDEO_EXTENSIONS:
        reader = VideoFileReader(frames, cache_size=cache_size)
        seq = sequence.VideoSequence(
            name=name or frames.stem,
            frame_names=tuple(f"{i:05d}" for i in range(reader.num_frames)),
            image_size=reader.read(0).shape[:2],
            read_frame_fn=reader.read,
            mask_paths={0: first_mask},
            output_frames=tuple(range(reader.num_frames)),
            source=str(frames),
        )
        first_frame = frames
    else:
        raise image_io.DataError(
            f"{frames}: expected a folder of images or a video file {VIDEO_EXTENSIONS}"
        )
    mask = image_io.read_mask(first_mask)
    if mask.shape != tuple(seq.image_size):
        raise image_io.DataError(
            f"{first_mask}: mask size (H, W) = {mask.shape} differs from the frame size "
            f"{tuple(seq.image_size)} of {first_frame}"
        )
    if not np.any((mask > 0) & (mask != image_io.VOID)):
        raise image_io.DataError(f"{first_mask}: the first-frame mask holds no object (all 0)")
    return seq
