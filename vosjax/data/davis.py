"""DAVIS-2016 and DAVIS-2017 layouts.

```
ROOT/JPEGImages/<resolution>/<sequence>/00000.jpg ...
ROOT/Annotations/<resolution>/<sequence>/00000.png ...
ROOT/ImageSets/<year>/<split>.txt          (one sequence name a line)
```
DAVIS-2017 annotations are indexed PNGs of object ids (255 = void); DAVIS-2016 annotations are
grayscale {0, 255} masks ('L', sometimes 'LA'), read as object 1. `image_io.read_mask` tells them
apart.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

from vosjax.data import image_io, sequence

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")


def read_imageset(root: image_io.PathLike, imageset: str) -> list[str]:
    """Sequence names of a split.

    Args:
      root: DAVIS root folder.
      imageset: '<year>/<split>', e.g. '2017/val' or '2016/train'.

    Raises:
      DataError: the split file is missing or empty, or `imageset` is malformed.
    """
    parts = imageset.strip("/").split("/")
    if len(parts) != 2 or not all(parts):
        raise image_io.DataError(
            f"imageset {imageset!r}: expected '<year>/<split>', e.g. '2017/val'"
        )
    path = pathlib.Path(root) / "ImageSets" / parts[0] / f"{parts[1]}.txt"
    if not path.is_file():
        raise image_io.DataError(f"{path}: split file not found (imageset {imageset!r})")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise image_io.DataError(f"{path}: split file lists no sequence")
    return names


def split_sequences(
    root: image_io.PathLike, imageset: str, sequences: Sequence[str] | None = None
) -> list[str]:
    """The sequence names of a split in its order, once each, or the requested subset of them.

    Raises:
      DataError: the split file is missing or empty, or a requested sequence is not in it.
    """
    names = list(dict.fromkeys(read_imageset(root, imageset)))
    if sequences:
        unknown = [s for s in sequences if s not in names]
        if unknown:
            raise image_io.DataError(
                f"sequences {unknown} are not in imageset {imageset!r} of {root}"
            )
        names = [s for s in names if s in sequences]
    return names


def _list_files(folder: pathlib.Path, extensions: tuple[str, ...], what: str) -> list[pathlib.Path]:
    if not folder.is_dir():
        raise image_io.DataError(f"{folder}: {what} folder not found")
    files = sorted(
        (
            p
            for p in folder.iterdir()
            if p.suffix.lower() in extensions and not p.name.startswith(".")
        ),
        key=lambda p: p.name,
    )
    if not files:
        raise image_io.DataError(f"{folder}: empty sequence, expected {what} files {extensions}")
    return files


def annotation_files(
    root: image_io.PathLike, name: str, resolution: str = "480p"
) -> list[pathlib.Path]:
    """The annotation PNGs of one sequence, sorted by name.

    Raises:
      DataError: the folder is missing or holds no PNG.
    """
    folder = pathlib.Path(root) / "Annotations" / resolution / name
    return _list_files(folder, (".png",), "annotation")


def load_sequence(
    root: image_io.PathLike, name: str, resolution: str = "480p"
) -> sequence.VideoSequence:
    """One DAVIS sequence: its frames and whatever annotations exist for them.

    Raises:
      DataError: frames or annotation folder missing, no annotation for the first frame, an
        annotation that matches no frame.
    """
    root = pathlib.Path(root)
    frames = _list_files(root / "JPEGImages" / resolution / name, FRAME_EXTENSIONS, "frame")
    masks = annotation_files(root, name, resolution)
    index = {p.stem: i for i, p in enumerate(frames)}
    mask_paths = {}
    for mask in masks:
        if mask.stem not in index:
            raise image_io.DataError(
                f"{mask}: annotation matches no frame in {frames[0].parent} "
                f"(expected one of {frames[0].stem} .. {frames[-1].stem})"
            )
        mask_paths[index[mask.stem]] = mask
    if 0 not in mask_paths:
        raise image_io.DataError(
            f"{root / 'Annotations' / resolution / name}: the first frame {frames[0].stem} needs "
            f"an annotation ({frames[0].stem}.png), the semi-supervised task starts from it"
        )
    return sequence.frame_folder_sequence(
        name, frames, mask_paths, source=str(root / "JPEGImages" / resolution / name)
    )


def load_davis(
    root: image_io.PathLike,
    imageset: str = "2017/val",
    resolution: str = "480p",
    sequences: list[str] | None = None,
) -> list[sequence.VideoSequence]:
    """The sequences of a DAVIS split (or the named subset of it).

    Raises:
      DataError: root or split missing, a requested sequence not in the split, any sequence
        error of `load_sequence`.
    """
    root = pathlib.Path(os.fspath(root))
    if not root.is_dir():
        raise image_io.DataError(f"{root}: DAVIS root folder not found")
    names = split_sequences(root, imageset, sequences)
    return [load_sequence(root, name, resolution) for name in names]
