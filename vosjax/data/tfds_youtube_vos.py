"""The `youtube_vos_frames` tensorflow-datasets builder: YouTube-VOS videos from manual_dir.

YouTube-VOS needs a CodaLab account to download, so the builder reads an extracted root from
`manual_dir`:
```
<manual_dir>/train/JPEGImages/<video>/00000.jpg ...
<manual_dir>/valid/JPEGImages/<video>/...            (optional)
<manual_dir>/train_all_frames/JPEGImages/<video>/... (with the 'all_frames' config)
```
Each example is one video: `id` and `frames` (the original JPEG bytes, in name order). Masks are
not stored: self-supervised training uses frames only. Splits: 'train' and 'validation' (from
`valid/`), whichever exist. ArrayRecord for random access;
`clip_sources.TfdsVideoSource('youtube_vos_frames/every_5th', frames_key='frames')` samples clips.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Iterator
from typing import Any

import tensorflow_datasets as tfds

from vosjax.data import image_io

NAME = "youtube_vos_frames"
SPLIT_FOLDERS = {"train": "train", "validation": "valid"}


@dataclasses.dataclass(eq=False)
class YoutubeVosFramesConfig(tfds.core.BuilderConfig):
    """Which frames to store.

    Attributes:
      all_frames: read `<split>_all_frames/JPEGImages` (every frame) instead of `<split>/`
        (every 5th frame).
    """

    all_frames: bool = False


class YoutubeVosFrames(tfds.core.GeneratorBasedBuilder):
    """YouTube-VOS videos as JPEG frames, one example per video."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        YoutubeVosFramesConfig(name="every_5th", description="The annotated-rate frames."),
        YoutubeVosFramesConfig(
            name="all_frames", description="Every frame (*_all_frames).", all_frames=True
        ),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Download YouTube-VOS 2018 or 2019 (train.zip, optionally valid.zip and the *_all_frames
    archives) from https://youtube-vos.org/dataset/, extract them into one folder (holding
    train/JPEGImages/...), and pass that folder as manual_dir.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            disable_shuffling=True,  # example i is video i in name order; grain shuffles
            features=tfds.features.FeaturesDict(
                {
                    "id": tfds.features.Text(),
                    "frames": tfds.features.Sequence(
                        tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg")
                    ),
                }
            ),
        )

    def _frames_root(self, root: pathlib.Path, folder: str) -> pathlib.Path:
        suffix = "_all_frames" if self.builder_config.all_frames else ""
        return root / f"{folder}{suffix}" / "JPEGImages"

    def _split_generators(
        self, dl_manager: tfds.download.DownloadManager
    ) -> dict[str, Iterator[tuple[str, dict[str, Any]]]]:
        root = pathlib.Path(os.fspath(dl_manager.manual_dir))
        splits = {
            split: self._frames_root(root, folder)
            for split, folder in SPLIT_FOLDERS.items()
            if self._frames_root(root, folder).is_dir()
        }
        if not splits:
            expected = self._frames_root(root, "train")
            raise image_io.DataError(
                f"{expected}: not found; manual_dir must be a YouTube-VOS root holding "
                f"{expected.relative_to(root)}/<video>/*.jpg"
            )
        return {split: self._generate_examples(frames) for split, frames in splits.items()}

    def _generate_examples(self, frames_root: pathlib.Path) -> Iterator[tuple[str, dict]]:
        videos = sorted(p for p in frames_root.iterdir() if p.is_dir())
        for video in videos:
            frames = sorted(p for p in video.iterdir() if p.suffix.lower() in (".jpg", ".jpeg"))
            if not frames:
                raise image_io.DataError(f"{video}: empty video, expected .jpg frames")
            yield video.name, {"id": video.name, "frames": frames}


def build(
    manual_dir: image_io.PathLike,
    data_dir: image_io.PathLike,
    config: str | YoutubeVosFramesConfig = "every_5th",
) -> YoutubeVosFrames:
    """Prepares the dataset (ArrayRecord) in `data_dir` from the YouTube-VOS root `manual_dir`."""
    file_format = tfds.core.FileFormat.ARRAY_RECORD
    builder = YoutubeVosFrames(config=config, data_dir=os.fspath(data_dir), file_format=file_format)
    builder.download_and_prepare(
        file_format=file_format,
        download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)),
    )
    return builder
