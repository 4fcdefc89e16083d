"""Writes predicted masks in the layouts that the official toolkits and servers read.

- 'davis': `<root>/<sequence>/<frame>.png` for every frame (the DAVIS-2017 evaluation reads the
  frames named like its ground truth).
- 'youtube_vos': `<root>/Annotations/<video>/<frame>.png` for the frames that meta.json lists
  (`VideoSequence.output_frames`) and no other; `make_youtube_vos_submission` zips
  `Annotations/` for the evaluation server.

Every file is an indexed PNG of object ids with the DAVIS palette (`image_io.write_mask`).
"""

from __future__ import annotations

import pathlib
import zipfile
from collections.abc import Iterable

import numpy as np

from vosjax.data import image_io, sequence

LAYOUTS = ("davis", "youtube_vos")


class ResultsWriter:
    """Writes one PNG per (sequence, frame) under `root`.

    Attributes:
      root: the results folder.
      layout: 'davis' or 'youtube_vos'.
    """

    def __init__(self, root: image_io.PathLike, layout: str = "davis") -> None:
        """Raises ValueError for a layout other than 'davis' or 'youtube_vos'."""
        if layout not in LAYOUTS:
            raise ValueError(f"ResultsWriter layout {layout!r}: expected one of {LAYOUTS}")
        self.root = pathlib.Path(root)
        self.layout = layout

    def folder(self, seq: sequence.VideoSequence) -> pathlib.Path:
        """The folder that holds the PNGs of `seq`."""
        if self.layout == "davis":
            return self.root / seq.name
        return self.root / "Annotations" / seq.name

    def required_frames(self, seq: sequence.VideoSequence) -> tuple[int, ...]:
        """Frame indices that need a file: all for DAVIS, `output_frames` for YouTube-VOS."""
        if self.layout == "davis":
            return tuple(range(len(seq)))
        return tuple(seq.output_frames)

    def path(self, seq: sequence.VideoSequence, frame_index: int) -> pathlib.Path:
        """The file of frame `frame_index` of `seq`."""
        return self.folder(seq) / f"{seq.frame_names[frame_index]}.png"

    def write(
        self, seq: sequence.VideoSequence, frame_index: int, mask: np.ndarray
    ) -> pathlib.Path | None:
        """Writes the prediction of one frame.

        Args:
          seq: the sequence the frame belongs to.
          frame_index: index of the frame in `seq`.
          mask: integer object ids [H, W] at the sequence's image size (0 = background).

        Returns:
          the file written, or None for a frame that the layout does not take (a YouTube-VOS
          frame outside `output_frames`).

        Raises:
          IndexError: frame_index outside the sequence.
          ValueError: mask not [H, W] of `seq.image_size`, not integer, or ids outside 0..255.
        """
        if not 0 <= frame_index < len(seq):
            raise IndexError(f"{seq.name}: frame {frame_index} of a {len(seq)}-frame sequence")
        if self.layout == "youtube_vos" and frame_index not in set(seq.output_frames):
            return None
        mask = np.asarray(mask)
        if mask.shape != tuple(seq.image_size):
            raise ValueError(
                f"{seq.name} frame {seq.frame_names[frame_index]}: prediction shape {mask.shape}, "
                f"expected the frame size (H, W) = {tuple(seq.image_size)}"
            )
        if not (np.issubdtype(mask.dtype, np.integer) or mask.dtype == np.bool_):
            raise ValueError(
                f"{seq.name} frame {seq.frame_names[frame_index]}: prediction dtype {mask.dtype}, "
                "expected integer object ids (take the argmax of soft predictions first)"
            )
        path = self.path(seq, frame_index)
        image_io.write_mask(path, mask)
        return path

    def missing(self, seq: sequence.VideoSequence) -> list[pathlib.Path]:
        """Files of the required frames of `seq` that do not exist yet."""
        paths = (self.path(seq, i) for i in self.required_frames(seq))
        return [p for p in paths if not p.is_file()]


def make_youtube_vos_submission(
    out_dir: image_io.PathLike,
    sequences: Iterable[sequence.VideoSequence] | None = None,
    zip_path: image_io.PathLike | None = None,
) -> pathlib.Path:
    """Zips `<out_dir>/Annotations/` the way the YouTube-VOS server expects.

    The archive holds `Annotations/<video>/<frame>.png` entries.

    Args:
      out_dir: the root of a 'youtube_vos' `ResultsWriter`.
      sequences: if given, every required frame of these videos must have its file.
      zip_path: the archive to write; default `<out_dir>/submission.zip`.

    Returns:
      the path of the archive.

    Raises:
      DataError: no `Annotations/` folder or no PNG in it, or a required frame's file missing.
    """
    out_dir = pathlib.Path(out_dir)
    annotations = out_dir / "Annotations"
    if not annotations.is_dir():
        raise image_io.DataError(f"{annotations}: results folder not found")
    if sequences is not None:
        writer = ResultsWriter(out_dir, "youtube_vos")
        missing = [p for seq in sequences for p in writer.missing(seq)]
        if missing:
            raise image_io.DataError(
                f"{annotations}: {len(missing)} required prediction files are missing, e.g. "
                f"{[str(p) for p in missing[:3]]}"
            )
    files = sorted(p for p in annotations.rglob("*.png") if p.is_file())
    if not files:
        raise image_io.DataError(f"{annotations}: no PNG to submit")
    zip_path = pathlib.Path(zip_path) if zip_path is not None else out_dir / "submission.zip"
    zip_path.parent.mkdir(parents=True, exist_ok=True)
    # PNGs are already compressed: store them.
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_STORED) as archive:
        for path in files:
            archive.write(path, path.relative_to(out_dir).as_posix())
    return zip_path
