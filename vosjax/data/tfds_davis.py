"""The `davis2017_frames` tensorflow-datasets builder: DAVIS videos and masks from manual_dir.

DAVIS cannot be downloaded by tfds (it needs the user to accept its terms), so the builder reads
an extracted DAVIS root from `manual_dir`:
```
<manual_dir>/JPEGImages/<resolution>/<sequence>/00000.jpg ...
<manual_dir>/Annotations/<resolution>/<sequence>/00000.png ...
<manual_dir>/ImageSets/<year>/{train,val}.txt
```
Each example is one sequence: `id`, `frames` (the original JPEG bytes, not re-encoded),
`masks` (object ids as [H, W, 1] PNGs, for the frames that have an annotation) and
`mask_frames` (the indices of those frames). Splits: 'train' and 'validation' (ImageSets
train / val), whichever split files exist. Files are ArrayRecord for random access by grain;
`clip_sources.TfdsVideoSource('davis2017_frames/480p', frames_key='frames')` samples clips.
DAVIS-2016 is the same layout with `year='2016'` (binary masks read as object 1).
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from vosjax.data import davis, image_io

NAME = "davis2017_frames"
SPLIT_FILES = {"train": "train", "validation": "val"}


@dataclasses.dataclass(eq=False)
class DavisFramesConfig(tfds.core.BuilderConfig):
    """Which part of a DAVIS root to store.

    Attributes:
      resolution: folder under JPEGImages/ and Annotations/ ('480p', '240p', 'Full-Resolution').
      year: folder under ImageSets/ ('2017', or '2016' for DAVIS-2016).
      sequences: store only these sequences (of each split); empty for all.
    """

    resolution: str = "480p"
    year: str = "2017"
    sequences: tuple[str, ...] = ()


class Davis2017Frames(tfds.core.GeneratorBasedBuilder):
    """DAVIS sequences as JPEG frames plus indexed masks, one example per sequence."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIGS = [
        DavisFramesConfig(name="480p", description="DAVIS-2017 at 480p."),
        DavisFramesConfig(
            name="full", description="DAVIS-2017 at full resolution.", resolution="Full-Resolution"
        ),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Download DAVIS-2017 trainval (480p or Full-Resolution) from
    https://davischallenge.org/davis2017/code.html, extract it, and pass the folder that holds
    JPEGImages/, Annotations/ and ImageSets/ as manual_dir (e.g.
    `builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
    manual_dir=...))`).
    """

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            disable_shuffling=True,  # example i is sequence i of the split file; grain shuffles
            features=tfds.features.FeaturesDict(
                {
                    "id": tfds.features.Text(),
                    "frames": tfds.features.Sequence(
                        tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg")
                    ),
                    "masks": tfds.features.Sequence(
                        tfds.features.Image(shape=(None, None, 1), encoding_format="png")
                    ),
                    "mask_frames": tfds.features.Sequence(tfds.features.Scalar(np.int32)),
                }
            ),
        )

    def _split_generators(
        self, dl_manager: tfds.download.DownloadManager
    ) -> dict[str, Iterator[tuple[str, dict[str, Any]]]]:
        root = pathlib.Path(os.fspath(dl_manager.manual_dir))
        c = self.builder_config
        splits = {}
        for split, split_name in SPLIT_FILES.items():
            if not (root / "ImageSets" / c.year / f"{split_name}.txt").is_file():
                continue
            names = davis.read_imageset(root, f"{c.year}/{split_name}")
            names = [n for n in names if not c.sequences or n in c.sequences]
            if names:  # a split with no example (after `sequences`) is left out
                splits[split] = names
        if not splits:
            raise image_io.DataError(
                f"{root / 'ImageSets' / c.year}: no train.txt or val.txt listing a sequence "
                f"{'of ' + str(c.sequences) + ' ' if c.sequences else ''}; manual_dir must be a "
                f"DAVIS root (JPEGImages/, Annotations/, ImageSets/{c.year}/)"
            )
        return {split: self._generate_examples(root, names) for split, names in splits.items()}

    def _generate_examples(
        self, root: pathlib.Path, names: list[str]
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        c = self.builder_config
        for name in names:
            seq = davis.load_sequence(root, name, c.resolution)
            folder = root / "JPEGImages" / c.resolution / name
            frames = [folder / f"{frame}.jpg" for frame in seq.frame_names]
            missing = [str(p) for p in frames if not p.is_file()]
            if missing:
                raise image_io.DataError(f"{missing[0]}: expected JPEG frames")
            annotated = seq.annotated_frames
            yield (
                name,
                {
                    "id": name,
                    "frames": frames,
                    "masks": [seq.read_mask(i)[..., None] for i in annotated],
                    "mask_frames": list(annotated),
                },
            )


def build(
    manual_dir: image_io.PathLike,
    data_dir: image_io.PathLike,
    config: str | DavisFramesConfig = "480p",
) -> Davis2017Frames:
    """Prepares the dataset (ArrayRecord) in `data_dir` from the DAVIS root `manual_dir`."""
    file_format = tfds.core.FileFormat.ARRAY_RECORD
    builder = Davis2017Frames(config=config, data_dir=os.fspath(data_dir), file_format=file_format)
    builder.download_and_prepare(
        file_format=file_format,
        download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)),
    )
    return builder
