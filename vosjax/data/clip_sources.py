"""Random-access sources of training videos: frame folders, video files, tfds datasets.

A source holds a list of videos and decodes only what is asked for:
- `len(source)`, `source.name(i)`, `source.num_frames(i)`;
- `source.read_frames(i, frame_indices)` -> uint8 [T, H, W, 3], decoding only those frames;
- `source.sample_clip(i, sampler, rng)` -> (frames, indices): the pipeline's entry point;
- `source[i]` -> {'name', 'index', 'video': uint8 [N, H, W, 3]}: the whole video (for
  inspection; training uses `sample_clip`).
Sources are picklable (file handles and datasets are opened lazily in each process), so grain
can ship them to worker processes. A corrupt file raises `image_io.DataError` naming it; the
pipeline skips such videos.
"""

from __future__ import annotations

import io
import os
import pathlib
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from vosjax.data import clip_sampling, davis, image_io, user_video

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")
TFDS_PREFIX = "tfds:"


def decode_image(data: bytes, what: str) -> np.ndarray:
    """Decodes encoded image bytes (JPEG, PNG) to uint8 [H, W, 3].

    Raises:
      DataError: the bytes are not a complete image; `what` names it in the message.
    """
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise image_io.DataError(f"{what}: unreadable or truncated image ({e})") from e
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def _stack(frames: list[np.ndarray], what: str) -> np.ndarray:
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise image_io.DataError(f"{what}: frames of different sizes {sorted(shapes)}")
    return np.stack(frames)


class VideoSource:
    """Base class: the interface above, with `sample_clip` and `__getitem__` built on it."""

    def __len__(self) -> int:
        raise NotImplementedError

    def name(self, index: int) -> str:
        raise NotImplementedError

    def num_frames(self, index: int) -> int:
        raise NotImplementedError

    def read_frames(self, index: int, frame_indices: Sequence[int]) -> np.ndarray:
        raise NotImplementedError

    def sample_clip(
        self, index: int, sampler: clip_sampling.ClipSampler, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Samples frame indices of video `index` and decodes those frames.

        Returns:
          (uint8 [T, H, W, 3] frames, int64 [T] frame indices).

        Raises:
          DataError: a sampled frame (or the video) is unreadable.
        """
        indices = sampler.indices(self.num_frames(index), rng)
        return self.read_frames(index, indices), indices

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not -len(self) <= index < len(self):
            raise IndexError(f"video {index} of a source of {len(self)} videos")
        index %= len(self)
        video = self.read_frames(index, range(self.num_frames(index)))
        return {"name": self.name(index), "index": index, "video": video}


class FrameFolderSource(VideoSource):
    """Videos stored as folders of image files (DAVIS, YouTube-VOS, extracted frames).

    Frames of a folder are its .jpg / .jpeg / .png files in name order, listed when read.
    """

    def __init__(self, folders: Sequence[image_io.PathLike], names: Sequence[str] | None = None):
        """Args:
        folders: one folder per video.
        names: one name per video; default the folder names.

        Raises:
          DataError: no folders, or a folder that does not exist.
        """
        self.folders = tuple(pathlib.Path(f) for f in folders)
        if not self.folders:
            raise image_io.DataError("FrameFolderSource: no video folders given")
        missing = [str(f) for f in self.folders if not f.is_dir()]
        if missing:
            raise image_io.DataError(f"{missing[0]}: video frame folder not found")
        self.names = tuple(names) if names is not None else tuple(f.name for f in self.folders)

    def __len__(self) -> int:
        return len(self.folders)

    def name(self, index: int) -> str:
        return self.names[index]

    def frame_files(self, index: int) -> list[pathlib.Path]:
        """The image files of video `index` in name order.

        Raises:
          DataError: the folder holds no image.
        """
        folder = self.folders[index]
        files = sorted(
            e.path
            for e in os.scandir(folder)
            if os.path.splitext(e.name)[1].lower() in FRAME_EXTENSIONS
            and not e.name.startswith(".")
        )
        if not files:
            raise image_io.DataError(f"{folder}: empty video, expected files {FRAME_EXTENSIONS}")
        return [pathlib.Path(f) for f in files]

    def num_frames(self, index: int) -> int:
        return len(self.frame_files(index))

    def read_frames(self, index: int, frame_indices: Sequence[int]) -> np.ndarray:
        files = self.frame_files(index)
        return self._read(files, frame_indices, index)

    def _read(self, files: list[pathlib.Path], frame_indices: Sequence[int], index: int):
        decoded = {i: image_io.read_frame(files[i]) for i in sorted(set(map(int, frame_indices)))}
        return _stack([decoded[int(i)] for i in frame_indices], str(self.folders[index]))

    def sample_clip(
        self, index: int, sampler: clip_sampling.ClipSampler, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        files = self.frame_files(index)  # listed once
        indices = sampler.indices(len(files), rng)
        return self._read(files, indices, index), indices


def davis_frames(
    root: image_io.PathLike, imageset: str = "2017/train", resolution: str = "480p"
) -> FrameFolderSource:
    """The videos of a DAVIS split: `root/JPEGImages/<resolution>/<sequence>`.

    Args:
      root: DAVIS root folder.
      imageset: '<year>/<split>' naming `root/ImageSets/<year>/<split>.txt` (e.g. '2016/train').
      resolution: '480p', '240p' or 'Full-Resolution'.

    Raises:
      DataError: root, split file or a listed sequence folder missing.
    """
    root = pathlib.Path(root)
    names = davis.read_imageset(root, imageset)
    return FrameFolderSource([root / "JPEGImages" / resolution / n for n in names], names)


def youtube_vos_frames(
    root: image_io.PathLike, split: str = "train", all_frames: bool = False
) -> FrameFolderSource:
    """The videos of a YouTube-VOS split: `root/<split>/JPEGImages/<video>` (no meta.json needed).

    Args:
      root: YouTube-VOS root.
      split: 'train', 'valid', ...
      all_frames: read `root/<split>_all_frames/JPEGImages` (every frame) instead.

    Raises:
      DataError: the JPEGImages folder is missing or holds no video folder.
    """
    split_dir = f"{split}_all_frames" if all_frames else split
    frames_root = pathlib.Path(root) / split_dir / "JPEGImages"
    if not frames_root.is_dir():
        raise image_io.DataError(f"{frames_root}: YouTube-VOS frame folder not found")
    folders = sorted(p for p in frames_root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise image_io.DataError(f"{frames_root}: holds no video folder")
    return FrameFolderSource(folders)


class VideoFileSource(VideoSource):
    """A folder tree of video files (Kinetics / Charades style: `root/**/*.mp4`)."""

    def __init__(
        self,
        root: image_io.PathLike,
        extensions: Sequence[str] = user_video.VIDEO_EXTENSIONS,
    ):
        """Args:
        root: searched recursively.
        extensions: file name endings of videos (lower case, with the dot).

        Raises:
          DataError: root missing or holding no video file.
        """
        root = pathlib.Path(root)
        if not root.is_dir():
            raise image_io.DataError(f"{root}: video folder not found")
        self.root = root
        self.paths = tuple(
            sorted(
                p for p in root.rglob("*") if p.suffix.lower() in tuple(extensions) and p.is_file()
            )
        )
        if not self.paths:
            raise image_io.DataError(f"{root}: holds no video file {tuple(extensions)}")

    def __len__(self) -> int:
        return len(self.paths)

    def name(self, index: int) -> str:
        return str(self.paths[index].relative_to(self.root).with_suffix(""))

    def _reader(self, index: int) -> user_video.VideoFileReader:
        return user_video.VideoFileReader(self.paths[index], cache_size=0)

    def num_frames(self, index: int) -> int:
        return self._reader(index).num_frames

    @staticmethod
    def _read(reader: user_video.VideoFileReader, frame_indices: Sequence[int]) -> np.ndarray:
        # Forward order: one decoding pass over the video.
        decoded = {i: reader.read(i) for i in sorted(set(map(int, frame_indices)))}
        reader.close()
        return np.stack([decoded[int(i)] for i in frame_indices])

    def read_frames(self, index: int, frame_indices: Sequence[int]) -> np.ndarray:
        return self._read(self._reader(index), frame_indices)

    def sample_clip(
        self, index: int, sampler: clip_sampling.ClipSampler, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        reader = self._reader(index)  # opened once for the count and the frames
        indices = sampler.indices(reader.num_frames, rng)
        return self._read(reader, indices), indices


class TfdsVideoSource(VideoSource):
    """A tfds dataset (ArrayRecord) whose examples hold a video as a list of encoded frames.

    Examples are read undecoded (`DeserializeMethod.DESERIALIZE_NO_DECODE`), so only the sampled
    frames are decoded. Works with `vosjax_synthetic` ('video': PNG frames) and the
    `davis2017_frames` / `youtube_vos_frames` builders ('frames': JPEG bytes).
    """

    def __init__(
        self,
        name: str,
        split: str = "train",
        data_dir: image_io.PathLike | None = None,
        frames_key: str = "video",
        name_key: str = "id",
    ):
        """Args:
        name: tfds name with config, e.g. 'vosjax_synthetic/tiny'.
        split: split (tfds slicing allowed).
        data_dir: tfds data dir.
        frames_key: feature holding the encoded frames.
        name_key: text feature holding the video's name.
        """
        self.dataset_name = name
        self.split = split
        self.data_dir = None if data_dir is None else os.fspath(data_dir)
        self.frames_key = frames_key
        self.name_key = name_key
        self._source = None
        self._length = len(self._data())

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_source": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Open the source (and so import tfds) now, in the thread that unpickles it: a grain
        # worker. Importing tfds swaps `builtins.__import__` for a moment (etils'
        # lazy_imports), which makes any relative import running in another thread fail, such
        # as PIL's when the worker's other threads decode frames.
        self.__dict__.update(state)
        self._data()

    def _data(self) -> Sequence[Any]:
        if self._source is None:
            import tensorflow_datasets as tfds  # heavy: only for tfds sources

            self._source = tfds.data_source(
                self.dataset_name,
                split=self.split,
                data_dir=self.data_dir,
                download=False,
                deserialize_method=tfds.decode.DeserializeMethod.DESERIALIZE_NO_DECODE,
            )
        return self._source

    def _encoded(self, index: int) -> tuple[Any, Sequence[bytes]]:
        example = self._data()[index]
        feature = example.features.feature
        if self.frames_key not in feature:
            raise image_io.DataError(
                f"{self.dataset_name}[{self.split}]: examples have no feature "
                f"{self.frames_key!r} (frames_key); they have {sorted(feature)}"
            )
        return feature, feature[self.frames_key].bytes_list.value

    def __len__(self) -> int:
        return self._length

    def name(self, index: int) -> str:
        feature, _ = self._encoded(index)
        if self.name_key in feature:
            return feature[self.name_key].bytes_list.value[0].decode()
        return f"{self.dataset_name}[{self.split}][{index}]"

    def num_frames(self, index: int) -> int:
        return len(self._encoded(index)[1])

    def _decode(self, encoded: Sequence[bytes], frame_indices: Sequence[int], index: int):
        what = f"{self.dataset_name}[{self.split}] example {index}"
        decoded = {
            i: decode_image(encoded[i], f"{what} frame {i}")
            for i in sorted(set(map(int, frame_indices)))
        }
        return _stack([decoded[int(i)] for i in frame_indices], what)

    def read_frames(self, index: int, frame_indices: Sequence[int]) -> np.ndarray:
        return self._decode(self._encoded(index)[1], frame_indices, index)

    def sample_clip(
        self, index: int, sampler: clip_sampling.ClipSampler, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        _, encoded = self._encoded(index)
        indices = sampler.indices(len(encoded), rng)
        return self._decode(encoded, indices, index), indices


class MixedSource(VideoSource):
    """Several sources as one, each repeated a whole number of times (to weight the mix).

    Video `i` of the mix is video `j % len(part)` of the part whose index range holds `i`
    (`j` counted from the start of that range), so the pipeline's shuffle over
    `range(len(mix))` draws each part in proportion to `len(part) * repeats`.
    """

    def __init__(self, parts: Sequence[tuple[VideoSource, int]]):
        """Args:
        parts: (source, repeats) pairs; repeats >= 1.

        Raises:
          ValueError: no parts, or a repeat count below 1.
        """
        if not parts:
            raise ValueError("MixedSource: no sources given")
        bad = [r for _, r in parts if int(r) < 1]
        if bad:
            raise ValueError(f"MixedSource: repeats must be >= 1, got {bad}")
        self.parts = tuple((source, int(r)) for source, r in parts)
        self.offsets = np.cumsum([0] + [len(s) * r for s, r in self.parts])

    def _locate(self, index: int) -> tuple[VideoSource, int]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"video {index} of a mixed source of {len(self)} videos")
        k = int(np.searchsorted(self.offsets, index, side="right")) - 1
        source = self.parts[k][0]
        return source, (index - int(self.offsets[k])) % len(source)

    def fractions(self) -> list[float]:
        """The share of each part in the mix."""
        return [len(s) * r / len(self) for s, r in self.parts]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def name(self, index: int) -> str:
        source, j = self._locate(index)
        return source.name(j)

    def num_frames(self, index: int) -> int:
        source, j = self._locate(index)
        return source.num_frames(j)

    def read_frames(self, index: int, frame_indices: Sequence[int]) -> np.ndarray:
        source, j = self._locate(index)
        return source.read_frames(j, frame_indices)

    def sample_clip(
        self, index: int, sampler: clip_sampling.ClipSampler, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        source, j = self._locate(index)
        return source.sample_clip(j, sampler, rng)


def mix_with_fraction(main: VideoSource, extra: VideoSource, fraction: float) -> MixedSource:
    """`main` plus `extra`, repeated so that about `fraction` of the clips come from `extra`.

    Raises:
      ValueError: `fraction` outside (0, 1).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"mix fraction {fraction}: expected a value in (0, 1)")
    n, m = len(main), len(extra)
    # One of the two parts is repeated; pick the pair whose share is closest to `fraction`.
    candidates = [(max(1, round(m * (1 - fraction) / (n * fraction))), 1)]
    candidates.append((1, max(1, round(n * fraction / (m * (1 - fraction))))))
    main_repeats, extra_repeats = min(
        candidates, key=lambda c: abs(m * c[1] / (n * c[0] + m * c[1]) - fraction)
    )
    return MixedSource([(main, main_repeats), (extra, extra_repeats)])


def synthetic_frames(
    config_name: str = "tiny", data_dir: image_io.PathLike | None = None
) -> TfdsVideoSource:
    """The train split of `vosjax_synthetic/<config_name>`, built on first use."""
    from vosjax.data.synthetic import tfds_builder  # imports tensorflow_datasets

    data_dir = tfds_builder.default_data_dir() if data_dir is None else data_dir
    tfds_builder.load_source(config_name, "train", data_dir=data_dir)  # builds if needed
    return TfdsVideoSource(f"{tfds_builder.NAME}/{config_name}", "train", data_dir)


def open_source(
    path: str | None = None,
    *,
    imageset: str = "2017/train",
    resolution: str = "480p",
    split: str = "train",
    synthetic_config: str = "tiny",
    data_dir: image_io.PathLike | None = None,
) -> VideoSource:
    """A training source chosen from a path (what `config.data.path` holds).

    - None or '': the synthetic default, `vosjax_synthetic/<synthetic_config>` train split.
    - 'tfds:<name>/<config>' (e.g. 'tfds:davis2017_frames/480p'): that tfds dataset's `split`
      from `data_dir`.
    - a DAVIS root (has ImageSets/): `davis_frames(path, imageset, resolution)`.
    - a YouTube-VOS root (has `<split>/JPEGImages`): `youtube_vos_frames(path, split)`.
    - any other folder: its video files, searched recursively.

    Raises:
      DataError: the path is missing or none of the above.
    """
    if not path:
        return synthetic_frames(synthetic_config, data_dir)
    if path.startswith(TFDS_PREFIX):
        name = path[len(TFDS_PREFIX) :]
        frames_key = "video" if name.startswith("vosjax_synthetic") else "frames"
        return TfdsVideoSource(name, split, data_dir, frames_key=frames_key)
    root = pathlib.Path(path)
    if not root.is_dir():
        raise image_io.DataError(
            f"{root}: training data not found; expected a DAVIS or YouTube-VOS root, a folder "
            f"of video files, or '{TFDS_PREFIX}<name>'"
        )
    if (root / "ImageSets").is_dir():
        return davis_frames(root, imageset, resolution)
    if (root / split / "JPEGImages").is_dir():
        return youtube_vos_frames(root, split)
    return VideoFileSource(root)
