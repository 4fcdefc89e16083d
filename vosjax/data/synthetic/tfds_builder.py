"""The `vosjax_synthetic` tensorflow-datasets builder: synthetic videos, no download needed.

Splits:
- `train`: unlabeled clips for self-supervised training: `masks` is empty ([0, H, W]) and
  `num_objects` is 0.
- `validation`: videos with their masks.

Each example: `id` (the sequence name, e.g. 'synth-val-003'), `seed` (the `generate_video` seed
that reproduces it), `video` (T lossless PNG frames), `masks` uint8 [T, H, W] (object ids,
zlib-compressed), `num_objects`. The examples are stored in ArrayRecord files, which
`tfds.data_source` (and so grain) reads with random access. tfds' numpy decoding returns the
video as a list of T uint8 [H, W, 3] frames; `to_arrays` turns an example into plain arrays.

Video i of a split has seed `generator.split_seed(config.seed, split, i)`, the same as in
`export.export_davis`.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from vosjax.data import image_io
from vosjax.data.synthetic import export, generator

NAME = "vosjax_synthetic"
SPLITS = ("train", "validation")


@dataclasses.dataclass(eq=False)
class SyntheticBuilderConfig(tfds.core.BuilderConfig):
    """Size and content of one `vosjax_synthetic` config.

    Attributes:
      height: frame height.
      width: frame width.
      num_frames: frames per video.
      num_train: videos in `train`.
      num_val: videos in `validation`.
      seed: dataset seed.
      level: generator difficulty level ('easy', 'medium', 'hard').
    """

    height: int = 64
    width: int = 64
    num_frames: int = 8
    num_train: int = 4
    num_val: int = 2
    seed: int = 0
    level: str = "medium"


CONFIGS = (
    SyntheticBuilderConfig(
        name="tiny", description="64x64, 8 frames, 4 train / 2 validation videos: for tests."
    ),
    SyntheticBuilderConfig(
        name="small",
        description="128x128, 16 frames, 200 train / 20 validation videos.",
        height=128,
        width=128,
        num_frames=16,
        num_train=200,
        num_val=20,
    ),
    SyntheticBuilderConfig(
        name="davis",
        description="480x854, 50 frames, 30 train / 8 validation videos (DAVIS-2016 sizes).",
        height=480,
        width=854,
        num_frames=50,
        num_train=30,
        num_val=8,
    ),
)


class VosjaxSynthetic(tfds.core.GeneratorBasedBuilder):
    """Procedurally generated videos with exact multi-object masks."""

    VERSION = tfds.core.Version(f"{export.FORMAT_VERSION}.0.0")
    RELEASE_NOTES = {f"{export.FORMAT_VERSION}.0.0": "Initial release."}
    BUILDER_CONFIGS = list(CONFIGS)

    def _info(self) -> tfds.core.DatasetInfo:
        c = self.builder_config
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            # Keep the generation order: example i of a split is video i (grain shuffles later).
            disable_shuffling=True,
            features=tfds.features.FeaturesDict(
                {
                    "id": tfds.features.Text(),
                    "seed": tfds.features.Scalar(np.int64),
                    "video": tfds.features.Video(
                        (c.num_frames, c.height, c.width, 3), encoding_format="png"
                    ),
                    # One zlib-compressed array: masks compress well, and numpy decoding
                    # returns it as one array ([0, H, W] in train) rather than a frame list.
                    "masks": tfds.features.Tensor(
                        shape=(None, c.height, c.width),
                        dtype=np.uint8,
                        encoding=tfds.features.Encoding.ZLIB,
                    ),
                    "num_objects": tfds.features.Scalar(np.int32),
                }
            ),
        )

    def _split_generators(
        self, dl_manager: tfds.download.DownloadManager
    ) -> dict[str, Iterator[tuple[str, dict[str, Any]]]]:
        del dl_manager  # nothing to download
        c = self.builder_config
        counts = {"train": c.num_train, "validation": c.num_val}
        return {split: self._generate_examples(split, counts[split]) for split in SPLITS}

    def _generate_examples(self, split: str, count: int) -> Iterator[tuple[str, dict[str, Any]]]:
        c = self.builder_config
        config = generator.level_config(c.level)
        short = "val" if split == "validation" else split
        for index in range(count):
            seed = generator.split_seed(c.seed, split, index)
            video = generator.generate_video(
                seed, num_frames=c.num_frames, height=c.height, width=c.width, config=config
            )
            labelled = split != "train"
            masks = video.masks if labelled else video.masks[:0]
            name = export.sequence_name(short, index)
            yield (
                name,
                {
                    "id": name,
                    "seed": seed,
                    "video": video.frames,
                    "masks": masks,
                    "num_objects": video.num_objects if labelled else 0,
                },
            )


def to_arrays(example: dict[str, Any]) -> dict[str, Any]:
    """A decoded example as plain values.

    Args:
      example: an element of `load_source(...)`.

    Returns:
      {'id': str, 'seed': int, 'video': uint8 [T, H, W, 3], 'masks': uint8 [T, H, W] ([0, H, W]
      in train), 'num_objects': int}.
    """
    name = example["id"]
    return {
        "id": name.decode() if isinstance(name, bytes) else str(name),
        "seed": int(example["seed"]),
        "video": np.stack(example["video"]),
        "masks": np.asarray(example["masks"], np.uint8),
        "num_objects": int(example["num_objects"]),
    }


def default_data_dir() -> pathlib.Path:
    """`<export.cache_root()>/vosjax_tfds`."""
    return export.cache_root() / "vosjax_tfds"


def load_source(
    config_name: str, split: str, data_dir: image_io.PathLike | None = None
) -> Sequence[dict[str, Any]]:
    """Builds `vosjax_synthetic/<config_name>` if needed and opens a split for random access.

    Args:
      config_name: 'tiny', 'small' or 'davis'.
      split: 'train' or 'validation' (tfds slicing like 'validation[:2]' works too).
      data_dir: tfds data dir; default `default_data_dir()`.

    Returns:
      `tfds.data_source(...)`: len() and [i] give decoded examples (numpy arrays).

    Raises:
      ValueError: unknown config name.
    """
    names = [c.name for c in CONFIGS]
    if config_name not in names:
        raise ValueError(f"{NAME} config {config_name!r}: expected one of {names}")
    data_dir = os.fspath(data_dir if data_dir is not None else default_data_dir())
    file_format = tfds.core.FileFormat.ARRAY_RECORD
    builder = VosjaxSynthetic(config=config_name, data_dir=data_dir, file_format=file_format)
    builder.download_and_prepare(file_format=file_format)
    return tfds.data_source(f"{NAME}/{config_name}", split=split, data_dir=data_dir, download=False)
