"""DAVIS-2016 and DAVIS-2017 layouts.

```
ROOT/JPEGImages/<resolution>/<sequence>/00000.jpg ...
ROOT/Annotations/<resolution>/<sequence>/00000.png ...
ROOT/ImageSets/<year>/<split>.txt          (one sequence name a line)
```
DAVIS-2017 annotations are indexed PNGs of object ids (255 = void); DAVIS-2016 annotations are
grayscale {0, 255} masks ('L', sometimes 'LA'), read as object 1. `image_io.read_mask` tells them
apart; for a 2016 imageset, `read_ground_truth` also insists on {0, 255}, since any other value
would read as object ids (a mask saved as {0, 50} would make 50 objects).

Evaluation needs the ground truth of every frame: as the official toolkit, a sequence's frames
are the images of its `JPEGImages` folder, and an annotation missing among them is an error, never
a frame left out of the scores.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

from vosjax.data import image_io, sequence

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")
# The year whose annotations are binary {0, 255} masks of one object.
BINARY_YEAR = "2016"
# At most this many missing file names are listed in an error message.
_MAX_LISTED = 5


def _parse_imageset(imageset: str) -> tuple[str, str]:
    parts = imageset.strip("/").split("/")
    if len(parts) != 2 or not all(parts):
        raise image_io.DataError(
            f"imageset {imageset!r}: expected '<year>/<split>', e.g. '2017/val'"
        )
    return parts[0], parts[1]


def is_binary_imageset(imageset: str) -> bool:
    """Whether the split's annotations are DAVIS-2016's binary {0, 255} masks ('2016/...')."""
    return _parse_imageset(imageset)[0] == BINARY_YEAR


def read_imageset(root: image_io.PathLike, imageset: str) -> list[str]:
    """Sequence names of a split.

    Args:
      root: DAVIS root folder.
      imageset: '<year>/<split>', e.g. '2017/val' or '2016/train'.

    Raises:
      DataError: the split file is missing or empty, or `imageset` is malformed.
    """
    year, split = _parse_imageset(imageset)
    path = pathlib.Path(root) / "ImageSets" / year / f"{split}.txt"
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


def _listing(names: Sequence[str]) -> str:
    more = len(names) - _MAX_LISTED
    return ", ".join(names[:_MAX_LISTED]) + (f" and {more} more" if more > 0 else "")


def ground_truth_files(
    root: image_io.PathLike, name: str, resolution: str = "480p"
) -> list[pathlib.Path]:
    """The annotation of every frame of a sequence, in frame order, for scoring.

    The frames are those of `ROOT/JPEGImages/<resolution>/<name>`, as the official toolkit lists
    them; a root without that folder (ground truth only) needs annotations numbered without a gap
    from the first to the last (a missing last frame cannot be told there).

    Raises:
      DataError: the annotation folder is missing or empty, the frame folder is empty, an
        annotation matches no frame, or a frame has no annotation (the first one is named).
    """
    root = pathlib.Path(root)
    files = annotation_files(root, name, resolution)
    folder = files[0].parent
    frames_dir = root / "JPEGImages" / resolution / name
    if frames_dir.is_dir():
        expected = [p.stem for p in _list_files(frames_dir, FRAME_EXTENSIONS, "frame")]
        source = f"the {len(expected)} frames of {frames_dir}"
    else:
        stems = [p.stem for p in files]
        width = len(stems[0])
        if not all(s.isdigit() and len(s) == width for s in stems):
            return files  # names without a numbering: nothing tells which frames exist
        first, last = int(stems[0]), int(stems[-1])
        expected = [f"{n:0{width}d}" for n in range(first, last + 1)]
        source = f"numbered {expected[0]} .. {expected[-1]}; no frame folder {frames_dir}"
    by_stem = {p.stem: p for p in files}
    stray = sorted(set(by_stem) - set(expected))
    if stray:
        raise image_io.DataError(
            f"{by_stem[stray[0]]}: annotation matches no frame of sequence {name!r} ({source}); "
            f"expected one annotation per frame, with the frame's name"
        )
    missing = [f"{stem}.png" for stem in expected if stem not in by_stem]
    if missing:
        raise image_io.DataError(
            f"{folder / missing[0]}: ground truth not found; evaluation needs an annotation for "
            f"every frame of sequence {name!r} ({source}); missing {len(missing)}: "
            f"{_listing(missing)}"
        )
    return [by_stem[stem] for stem in expected]


def read_ground_truth(path: image_io.PathLike, binary: bool = False) -> np.ndarray:
    """One ground-truth annotation as object ids uint8 [H, W] (255 = void).

    Args:
      path: the annotation PNG.
      binary: DAVIS-2016 ground truth (`is_binary_imageset`): the file must hold only the values
        0 and 255 (255 = object 1; in 'LA' files the gray channel; in colour files black and
        white); any other value is an error rather than object ids.

    Raises:
      DataError: the file is missing, unreadable or malformed (`image_io.read_mask`), or, with
        `binary`, holds other values than 0 and 255.
    """
    if not binary:
        return image_io.read_mask(path)
    path = pathlib.Path(path)
    if not path.is_file():
        raise image_io.DataError(f"{path}: file not found")
    try:
        with Image.open(path) as image:
            image.load()
            if image.mode == "LA":
                image = image.getchannel(0)
            elif image.mode == "1":
                image = image.convert("L")
            elif image.mode == "RGBA":
                image = image.convert("RGB")
            # (count, value) pairs, or None with more than 256 values (a soft mask).
            colours = image.getcolors(maxcolors=256)
            values = np.asarray(image)
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise image_io.DataError(f"{path}: unreadable or truncated image ({e})") from e
    white = (255, 255, 255) if values.ndim == 3 else 255
    black = (0, 0, 0) if values.ndim == 3 else 0
    found = None if colours is None else sorted(value for _, value in colours)
    if found is None or not set(found) <= {black, white}:
        shown = "more than 256 values" if found is None else f"values {found[:10]}"
        kind = " (an indexed PNG of object ids)" if image.mode == "P" else ""
        raise image_io.DataError(
            f"{path}: DAVIS-2016 ground truth has {shown}{kind}; expected a binary mask with the "
            "values 0 and 255 only (255 = the object), as for every imageset '2016/...'"
        )
    if values.ndim == 3:
        return np.all(values == 255, axis=-1).astype(np.uint8)
    return (values == 255).astype(np.uint8)


def _check_complete(seq: sequence.VideoSequence, folder: pathlib.Path) -> None:
    """Ground truth on the first frame only (test splits) or on every frame (train, val)."""
    annotated = seq.annotated_frames
    if len(annotated) == 1 or len(annotated) == len(seq):
        return
    missing = [f"{seq.frame_names[t]}.png" for t in range(len(seq)) if t not in seq.mask_paths]
    raise image_io.DataError(
        f"{folder / missing[0]}: ground truth not found; sequence {seq.name!r} has annotations "
        f"for {len(annotated)} of its {len(seq)} frames (in {seq.source}); expected one for every "
        f"frame, or for the first frame only; missing {len(missing)}: {_listing(missing)}"
    )


def _check_annotations(seq: sequence.VideoSequence, binary: bool) -> None:
    """Every annotation has its frame's size (a header read) and, if `binary`, values {0, 255}."""
    for t, path in sorted(seq.mask_paths.items()):
        if binary:
            size = read_ground_truth(path, binary=True).shape
        else:
            size = image_io.frame_size(path)
        if tuple(size) != tuple(seq.image_size):
            raise image_io.DataError(
                f"{path}: annotation size {tuple(size)} (H, W) differs from the size "
                f"{tuple(seq.image_size)} of the frames in {seq.source} (frame "
                f"{seq.frame_names[t]}); expected one annotation per frame at the frame's size"
            )


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
    """The sequences of a DAVIS split (or the named subset of it), to evaluate on.

    Every sequence has ground truth on all its frames (train, val) or on the first only (test
    splits), each at its frame's size (read from the file's header). For a 2016 imageset every
    annotation is read once here and must be binary {0, 255} (`read_ground_truth`). So a bad
    file stops the run before any work rather than after a sequence has been segmented.

    Raises:
      DataError: root or split missing, a requested sequence not in the split, any sequence
        error of `load_sequence`, a sequence with annotations on some but not all frames, an
        annotation unreadable or of another size than the frames, a 2016 annotation with other
        values than 0 and 255.
    """
    root = pathlib.Path(os.fspath(root))
    if not root.is_dir():
        raise image_io.DataError(f"{root}: DAVIS root folder not found")
    names = split_sequences(root, imageset, sequences)
    binary = is_binary_imageset(imageset)
    loaded = []
    for name in names:
        seq = load_sequence(root, name, resolution)
        _check_complete(seq, root / "Annotations" / resolution / name)
        _check_annotations(seq, binary)
        loaded.append(seq)
    return loaded
