"""A user's own video: a folder of images or a video file, plus the first frame's mask.

Video files are decoded lazily with OpenCV: `VideoFileReader` decodes forward, keeps the first
frame and a few recent ones, and re-opens the file on a backward seek. An evaluation loop that
reads frames in order therefore decodes each frame once and never holds the whole video.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import pathlib
import re
import threading
from collections.abc import Mapping
from typing import Any

import cv2
import numpy as np
from absl import logging

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
      fps: frames per second from the container's header (0.0 when it does not say).
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
            self.fps = float(self._capture.get(cv2.CAP_PROP_FPS) or 0.0)
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


def _image_files(folder: pathlib.Path, exclude: set[pathlib.Path]) -> list[pathlib.Path]:
    files = [
        p
        for p in folder.iterdir()
        if p.is_file()
        and p.suffix.lower() in IMAGE_EXTENSIONS
        and not p.name.startswith(".")
        and p.resolve() not in exclude
    ]
    if not files:
        raise image_io.DataError(f"{folder}: no frames, expected image files {IMAGE_EXTENSIONS}")
    by_stem = collections.defaultdict(list)
    for path in files:
        by_stem[path.stem].append(path.name)
    shared = sorted(sorted(names) for names in by_stem.values() if len(names) > 1)
    if shared:
        # An error, not a guess: a .png beside a .jpg may be a mask or the same frame saved
        # twice, and reading either as a frame silently breaks the video (issue 31).
        examples = "; ".join(" + ".join(names) for names in shared[:3])
        raise image_io.DataError(
            f"{folder}: {len(shared)} frame name(s) belong to more than one file ({examples}"
            f"{'; ...' if len(shared) > 3 else ''}); expected one image per frame (outputs are "
            "named by the frame's stem). If the extra files are masks, move them out of the "
            "frames folder and give the first frame's with --mask (load_user_video's `masks`)"
        )
    return sorted(files, key=lambda p: natural_key(p.name))


MasksArg = image_io.PathLike | Mapping[int | str, image_io.PathLike]


@dataclasses.dataclass(frozen=True)
class UserVideo(sequence.VideoSequence):
    """A user's video with its given masks, held in memory (one per annotated frame).

    Each object starts on the frame whose mask gives it (`object_starts`), and the outputs of
    those frames are the given masks exactly: `evaluate.keep_given_masks`, which
    `evaluate.evaluate_sequences` and `python -m vosjax.segment` apply to every `UserVideo`.

    Attributes:
      given: frame index -> uint8 ids [H, W] of the objects that start on that frame (void,
        and objects that started earlier, are 0).
      fps: a video file's frames per second (None for a folder, or when its header has none).
    """

    given: Mapping[int, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)
    fps: float | None = None

    def read_mask(self, index: int) -> np.ndarray:
        """The given ids of frame `index` (read-only uint8 [H, W]).

        Raises:
          DataError: no mask was given for that frame.
        """
        if index not in self.given:
            raise image_io.DataError(
                f"{self.source}: no mask given for frame {self.frame_names[index]}"
            )
        return self.given[index]

    def downsized(self, max_side: int) -> UserVideo:
        """This video with frames resized (area averaging) so that their longer side is at
        most `max_side`, and the given masks resized to match (nearest); self if already so."""
        height, width = self.image_size
        if max(height, width) <= max_side:
            return self
        scale = max_side / max(height, width)
        size = (max(1, round(height * scale)), max(1, round(width * scale)))

        def read(index: int) -> np.ndarray:
            return cv2.resize(self.read_frame(index), size[::-1], interpolation=cv2.INTER_AREA)

        given = {}
        for t, mask in self.given.items():
            small = cv2.resize(mask, size[::-1], interpolation=cv2.INTER_NEAREST)
            lost = sorted(set(np.unique(mask).tolist()) - set(np.unique(small).tolist()))
            if lost:
                logging.warning(
                    "%s: objects %s of frame %s vanish at %dx%d (max_side=%d); they are "
                    "kept on that frame only",
                    self.name,
                    lost,
                    self.frame_names[t],
                    size[1],
                    size[0],
                    max_side,
                )
            small.flags.writeable = False
            given[t] = small
        return dataclasses.replace(self, image_size=size, read_frame_fn=read, given=given)


def frame_index(
    key: int | str, frame_names: tuple[str, ...], source: str, mask: pathlib.Path
) -> int:
    """The index of the frame that `key` names: a frame's name (a folder's file stem, '00010'
    for a video) first, else an index 0..N-1.

    Raises:
      DataError: naming `mask`, when no frame has that name and it is not an index in range.
    """
    if isinstance(key, str) and key in frame_names:
        return frame_names.index(key)
    n = len(frame_names)
    try:
        index = int(key)
    except ValueError:
        index = None
    if index is None or not 0 <= index < n:
        raise image_io.DataError(
            f"{mask}: given for frame {key}, but {source} has {n} frames: expected an index "
            f"0..{n - 1} or a frame name ({frame_names[0]} .. {frame_names[-1]})"
        )
    return index


def _mask_files(masks: MasksArg) -> list[tuple[int | str, pathlib.Path]]:
    items = masks.items() if isinstance(masks, Mapping) else [(0, masks)]
    files = [(key, pathlib.Path(path)) for key, path in items]
    if not files:
        raise image_io.DataError("no mask given: expected at least one mask (of frame 0)")
    for key, path in files:
        if not path.is_file():
            raise image_io.DataError(f"{path}: mask not found (given for frame {key})")
    return files


def _video_sequence(
    frames: pathlib.Path, name: str | None, exclude: set[pathlib.Path], cache_size: int
) -> tuple[dict[str, Any], pathlib.Path]:
    """The fields of the video's sequence, and the file whose size the masks must match."""
    if frames.is_dir():
        files = _image_files(frames, exclude)

        # The last frames read stay decoded: a caller that segments frame t and then draws
        # its overlay reads it twice.
        @functools.lru_cache(maxsize=2)
        def read(index: int) -> np.ndarray:
            frame = image_io.read_frame(files[index])
            frame.flags.writeable = False
            return frame

        fields = dict(
            name=name or frames.name,
            frame_names=tuple(p.stem for p in files),
            image_size=image_io.frame_size(files[0]),
            read_frame_fn=read,
        )
        return fields, files[0]
    if frames.suffix.lower() in VIDEO_EXTENSIONS:
        reader = VideoFileReader(frames, cache_size=cache_size)
        fields = dict(
            name=name or frames.stem,
            frame_names=tuple(f"{i:05d}" for i in range(reader.num_frames)),
            image_size=reader.read(0).shape[:2],
            read_frame_fn=reader.read,
            fps=reader.fps or None,
        )
        return fields, frames
    raise image_io.DataError(
        f"{frames}: expected a folder of images or a video file {VIDEO_EXTENSIONS}"
    )


def load_user_video(
    frames: image_io.PathLike,
    masks: MasksArg,
    name: str | None = None,
    cache_size: int = 4,
) -> UserVideo:
    """A user's video with the masks of the frames where its objects start.

    Everything is checked here, before any segmentation: the frames, each mask's file, size and
    objects, and the frames the masks are given for.

    Args:
      frames: a folder of images (.jpg/.png, in natural name order: frame_2 < frame_10; one
        file per name stem) or a video file (.mp4, .avi, .mov, .mkv, ...), decoded lazily by
        `VideoFileReader`.
      masks: the first frame's mask (a path), or frame -> mask, where the frame is a frame's
        name (a folder's file stem, or '00010' for a video) or an index 0..N-1. A mask is an
        indexed PNG of object ids (DAVIS palette or plain ids; 255 = void, read as background)
        or a binary PNG (object 1). A later mask gives the objects whose ids no earlier mask
        gave (the ids given earlier are left out of it, with a notice); a mask whose only
        object is an id already given, 1 (a binary PNG), gives a new object with the next
        free id.
      name: sequence name (results go to `<results>/<name>/`); default: the folder name or the
        video file's stem.
      cache_size: for a video file, how many recently read frames stay decoded.

    Returns:
      the video: frame names are the image stems (or '00000', '00001', ... for a video
      file), `mask_paths` frame index -> mask file, every frame is an output frame.

    Raises:
      DataError: `frames` or a mask missing, no frames, two files with one stem in the folder,
        unreadable video or mask, a mask whose size differs from the frames', a mask with no
        new object, a frame that is not in the video, two masks for one frame.
    """
    frames = pathlib.Path(frames)
    mask_files = _mask_files(masks)
    if not frames.exists():
        raise image_io.DataError(f"{frames}: frames not found, expected a folder or a video file")
    exclude = {path.resolve() for _, path in mask_files}
    fields, first_frame = _video_sequence(frames, name, exclude, cache_size)
    names, size = fields["frame_names"], tuple(fields["image_size"])
    by_frame: dict[int, pathlib.Path] = {}
    for key, path in mask_files:
        index = frame_index(key, names, str(frames), path)
        if index in by_frame:
            raise image_io.DataError(
                f"{path}: a second mask for frame {names[index]} (index {index}), which "
                f"{by_frame[index]} already gives; expected one mask per frame"
            )
        by_frame[index] = path

    given: dict[int, np.ndarray] = {}
    starts: dict[int, int] = {}
    for index, path in sorted(by_frame.items()):
        mask = image_io.read_mask(path)
        if mask.shape != size:
            raise image_io.DataError(
                f"{path}: mask size (H, W) = {mask.shape} differs from the frame size "
                f"{size} of {first_frame}"
            )
        mask = np.where(mask == image_io.VOID, 0, mask).astype(np.uint8)
        ids = set(np.unique(mask).tolist()) - {0}
        if not ids:
            raise image_io.DataError(
                f"{path}: the mask of frame {names[index]} holds no object (all 0); expected "
                "object ids > 0 (or white on black)"
            )
        earlier = ids & starts.keys()
        if earlier == ids == {1}:
            new_id = max(starts) + 1
            if new_id >= image_io.VOID:
                raise image_io.DataError(f"{path}: no object id left (ids up to 254 are taken)")
            logging.info("%s: object 1 of frame %s becomes object %d", path, names[index], new_id)
            mask, ids, earlier = np.where(mask == 1, new_id, 0).astype(np.uint8), {new_id}, set()
        elif earlier == ids:
            raise image_io.DataError(
                f"{path}: the mask of frame {names[index]} holds no new object: ids "
                f"{sorted(ids)} start on frame(s) {sorted({names[starts[i]] for i in ids})}; "
                "expected ids not given before (each object starts on one frame)"
            )
        elif earlier:
            logging.info(
                "%s: objects %s started earlier and are left out of it", path, sorted(earlier)
            )
            mask = np.where(np.isin(mask, sorted(earlier)), 0, mask).astype(np.uint8)
        for i in ids - earlier:
            starts[i] = index
        mask.flags.writeable = False
        given[index] = mask
    return UserVideo(
        **fields,
        mask_paths=by_frame,
        output_frames=tuple(range(len(names))),
        source=str(frames),
        object_starts=dict(sorted(starts.items())),
        given=given,
    )
