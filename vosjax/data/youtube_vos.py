"""YouTube-VOS 2018 / 2019 layout.

```
ROOT/<split>/JPEGImages/<video>/00000.jpg ...   (every 5th frame)
ROOT/<split>/Annotations/<video>/00000.png ...  (indexed PNGs of object ids)
ROOT/<split>/meta.json
ROOT/<split>_all_frames/JPEGImages/<video>/...  (optional: every frame, no annotations)
```
meta.json: `{"videos": {<video>: {"objects": {"1": {"frames": ["00000", "00005", ...]}}}}}`
(train objects also carry "category"). In the valid / test splits an object's annotation is
given only on the first frame it appears in, which may be after frame 0; predictions are required
only on the frames that meta.json lists. So each sequence carries:
- `output_frames`: indices of the frames listed for any of its objects;
- `object_starts`: object id -> index of its first listed frame (declared by meta.json and
  checked against the annotation PNGs at load time unless `check_masks=False`).
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence

import numpy as np

from vosjax.data import image_io, sequence

FRAME_EXTENSIONS = (".jpg", ".jpeg", ".png")


def read_meta(path: image_io.PathLike) -> dict[str, dict[int, tuple[str, ...]]]:
    """Parses a YouTube-VOS meta.json.

    Args:
      path: the meta.json file.

    Returns:
      video name -> {object id -> its listed frame names, sorted}.

    Raises:
      DataError: the file is missing, not JSON, or not of the documented structure.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise image_io.DataError(f"{path}: YouTube-VOS meta.json not found")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise image_io.DataError(f"{path}: not valid JSON ({e})") from e
    if not isinstance(meta, dict) or not isinstance(meta.get("videos"), dict):
        raise image_io.DataError(f'{path}: expected an object with a "videos" mapping')
    videos = {}
    for video, entry in meta["videos"].items():
        objects = entry.get("objects") if isinstance(entry, dict) else None
        if not isinstance(objects, dict):
            raise image_io.DataError(f'{path}: video {video!r} has no "objects" mapping')
        parsed = {}
        for key, obj in objects.items():
            frames = obj.get("frames") if isinstance(obj, dict) else None
            if not key.isdigit() or not 0 < int(key) < image_io.VOID:
                raise image_io.DataError(
                    f"{path}: video {video!r} has object key {key!r}; expected an id in 1..254"
                )
            if not isinstance(frames, list) or not frames:
                raise image_io.DataError(
                    f'{path}: video {video!r} object {key} lists no "frames"; expected frame '
                    'names like ["00000", "00005"]'
                )
            parsed[int(key)] = tuple(sorted(str(f) for f in frames))
        videos[video] = parsed
    return videos


def _frame_files(folder: pathlib.Path) -> list[pathlib.Path]:
    if not folder.is_dir():
        raise image_io.DataError(f"{folder}: frame folder not found (the video is in meta.json)")
    files = sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in FRAME_EXTENSIONS and not p.name.startswith(".")
    )
    if not files:
        raise image_io.DataError(f"{folder}: empty video, expected frame files {FRAME_EXTENSIONS}")
    return files


def load_video(
    split_root: image_io.PathLike,
    video: str,
    objects: dict[int, tuple[str, ...]],
    check_masks: bool = True,
    frames_root: image_io.PathLike | None = None,
) -> sequence.VideoSequence:
    """One YouTube-VOS video.

    Args:
      split_root: ROOT/<split>, holding Annotations/.
      video: the video's name.
      objects: its entry of `read_meta`: object id -> listed frame names.
      check_masks: read each object's first annotation PNG and check that it holds the object
        and has the frames' size.
      frames_root: the folder holding JPEGImages/ if not `split_root` (e.g.
        ROOT/valid_all_frames).

    Returns:
      the sequence, with `output_frames` and `object_starts` from `objects`.

    Raises:
      DataError: the frame folder is missing or empty, a listed frame has no image, or an
        object's first listed frame has no annotation PNG, or (check_masks) one without that
        object's id or of another size than the frames.
    """
    split_root = pathlib.Path(split_root)
    frame_folder = pathlib.Path(frames_root or split_root) / "JPEGImages" / video
    mask_folder = split_root / "Annotations" / video
    frames = _frame_files(frame_folder)
    index = {p.stem: i for i, p in enumerate(frames)}
    output, starts = set(), {}
    for obj, names in sorted(objects.items()):
        missing = [n for n in names if n not in index]
        if missing:
            raise image_io.DataError(
                f"{frame_folder}: frames {missing[:5]} listed in meta.json for object {obj} "
                f"have no image (expected {missing[0]}.jpg)"
            )
        output.update(index[n] for n in names)
        starts[obj] = min(index[n] for n in names)
    mask_paths = {}
    if mask_folder.is_dir():
        mask_paths = {
            index[p.stem]: p
            for p in sorted(mask_folder.glob("*.png"))
            if p.stem in index and not p.name.startswith(".")
        }
    for obj, start in starts.items():
        path = mask_folder / f"{frames[start].stem}.png"
        if start not in mask_paths:
            raise image_io.DataError(
                f"{path}: a required mask is missing: object {obj} of {video} first appears in "
                f"frame {frames[start].stem} and needs its annotation there"
            )
    seq = sequence.frame_folder_sequence(
        video,
        frames,
        mask_paths,
        output_frames=sorted(output),
        source=str(frame_folder),
        object_starts=starts,
    )
    if check_masks:
        for start in sorted(set(starts.values())):
            present = set(np.unique(seq.read_mask(start)).tolist())  # also checks its size
            for obj in (o for o, s in starts.items() if s == start and o not in present):
                raise image_io.DataError(
                    f"{mask_paths[start]}: a required mask is missing: object {obj} of {video} "
                    f"first appears in frame {frames[start].stem}, but this annotation holds "
                    f"only ids {sorted(present)}"
                )
    return seq


def load_youtube_vos(
    root: image_io.PathLike,
    split: str = "valid",
    videos: Sequence[str] | None = None,
    check_masks: bool = True,
    all_frames: bool = False,
) -> list[sequence.VideoSequence]:
    """The videos of a YouTube-VOS split, in name order.

    Args:
      root: the YouTube-VOS root (holding `<split>/`).
      split: 'train', 'valid', 'test', ...: a folder of `root` holding meta.json.
      videos: only these videos (names from meta.json); None for all.
      check_masks: read each object's first annotation to check that it holds the object
        (about one PNG per object; False skips it for speed).
      all_frames: read the frames from `<split>_all_frames/JPEGImages` (every frame) instead of
        `<split>/JPEGImages`; annotations and meta.json still come from `<split>`, and
        `output_frames` are still only the frames meta.json lists.

    Returns:
      one sequence per video.

    Raises:
      DataError: root, split or meta.json missing, a requested video not in meta.json, or any
        error of `load_video`.
    """
    root = pathlib.Path(root)
    if not root.is_dir():
        raise image_io.DataError(f"{root}: YouTube-VOS root folder not found")
    split_root = root / split
    if not split_root.is_dir():
        raise image_io.DataError(f"{split_root}: split folder {split!r} not found")
    frames_root = root / f"{split}_all_frames" if all_frames else split_root
    if not frames_root.is_dir():
        raise image_io.DataError(f"{frames_root}: all-frames folder not found (all_frames=True)")
    meta_path = split_root / "meta.json"
    if not meta_path.is_file() and split.endswith("_all_frames"):
        raise image_io.DataError(
            f"{meta_path}: YouTube-VOS meta.json not found; for every frame of "
            f"{split.removesuffix('_all_frames')!r} use "
            f"split={split.removesuffix('_all_frames')!r}, all_frames=True"
        )
    meta = read_meta(meta_path)
    names = sorted(meta)
    if videos is not None:
        unknown = [v for v in videos if v not in meta]
        if unknown:
            raise image_io.DataError(f"{meta_path}: videos {unknown[:5]} are not listed there")
        names = [v for v in names if v in set(videos)]
    return [
        load_video(split_root, v, meta[v], check_masks=check_masks, frames_root=frames_root)
        for v in names
    ]
