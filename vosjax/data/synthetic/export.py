"""Exports synthetic videos in the DAVIS-2017 layout, so every DAVIS reader and tool can use them.

```
ROOT/JPEGImages/<resolution>/synth-val-000/00000.jpg ...
ROOT/Annotations/<resolution>/synth-val-000/00000.png ...   (indexed PNGs, object ids)
ROOT/ImageSets/2017/train.txt, val.txt
ROOT/vosjax_synthetic.json                                    (the parameters, written last)
```
An export is reused when the manifest holds the same parameters, so calling `export_davis` or
`default_davis_root` again is cheap. Exports are written to a temporary folder and renamed into
place, so a crash or a concurrent export never leaves a half-written root behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import numbers
import os
import pathlib
import shutil
import tempfile
from typing import Any

from PIL import Image

from vosjax.data import image_io
from vosjax.data.synthetic import generator

MANIFEST = "vosjax_synthetic.json"
# Bump when the generator's output changes, so that cached exports are regenerated.
FORMAT_VERSION = 1
IMAGE_FORMATS = ("jpg", "png")
# The DAVIS-2017 splits and the generator split whose seeds they use (the tfds builder uses the
# same, so the same parameters give the same videos in both).
SPLITS = (("train", "train"), ("val", "validation"))


def cache_root() -> pathlib.Path:
    """Where vosjax keeps generated data: $VOSJAX_DATA_DIR, else ~/.cache/vosjax."""
    return pathlib.Path(os.environ.get("VOSJAX_DATA_DIR", "~/.cache/vosjax")).expanduser()


def resolve_config(config: generator.SyntheticConfig | str) -> generator.SyntheticConfig:
    """A config, or the config of a level name ('easy', 'medium', 'hard')."""
    if isinstance(config, str):
        return generator.level_config(config)
    return config


def sequence_name(split: str, index: int) -> str:
    """'synth-train-000', 'synth-val-007', ... ."""
    return f"synth-{split}-{index:03d}"


def _params(
    *,
    num_train: int,
    num_val: int,
    num_frames: int,
    height: int,
    width: int,
    seed: int,
    config: generator.SyntheticConfig | str,
    resolution: str,
    image_format: str,
) -> dict[str, Any]:
    """The manifest: every parameter that determines the export, as JSON values."""
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image_format {image_format!r}: expected one of {IMAGE_FORMATS}")
    for name, value, low in (
        ("num_train", num_train, 0),
        ("num_val", num_val, 0),
        ("num_frames", num_frames, 1),
        ("height", height, 8),
        ("width", width, 8),
        ("seed", seed, 0),
    ):
        if not isinstance(value, numbers.Integral) or value < low:
            raise ValueError(f"export_davis {name}: expected an int >= {low}, got {value!r}")
    params = {
        "format_version": FORMAT_VERSION,
        "num_train": int(num_train),
        "num_val": int(num_val),
        "num_frames": int(num_frames),
        "height": int(height),
        "width": int(width),
        "seed": int(seed),
        "config": dataclasses.asdict(resolve_config(config)),
        "resolution": resolution,
        "image_format": image_format,
        "jpeg_quality": 95,
        "jpeg_subsampling": "4:4:4",
    }
    return json.loads(json.dumps(params))  # tuples -> lists, as they read back


def _read_manifest(root: pathlib.Path) -> dict[str, Any] | None:
    try:
        return json.loads((root / MANIFEST).read_text())
    except (OSError, ValueError):
        return None


def _write_split(
    folder: pathlib.Path,
    split: str,
    generator_split: str,
    count: int,
    params: dict[str, Any],
    config: generator.SyntheticConfig,
) -> None:
    """Writes the frames, annotations and ImageSets file of one split into folder."""
    resolution, extension = params["resolution"], params["image_format"]
    names = []
    for index in range(count):
        name = sequence_name(split, index)
        names.append(name)
        video = generator.generate_video(
            generator.split_seed(params["seed"], generator_split, index),
            num_frames=params["num_frames"],
            height=params["height"],
            width=params["width"],
            config=config,
        )
        frames_dir = folder / "JPEGImages" / resolution / name
        frames_dir.mkdir(parents=True)
        for t, (frame, mask) in enumerate(zip(video.frames, video.masks, strict=True)):
            image = Image.fromarray(frame)
            if extension == "jpg":
                # 4:4:4: chroma subsampling blurs the sharp colour edges of small frames.
                image.save(
                    frames_dir / f"{t:05d}.jpg", quality=params["jpeg_quality"], subsampling=0
                )
            else:
                image.save(frames_dir / f"{t:05d}.png")
            image_io.write_mask(folder / "Annotations" / resolution / name / f"{t:05d}.png", mask)
    imagesets = folder / "ImageSets" / "2017"
    imagesets.mkdir(parents=True, exist_ok=True)
    (imagesets / f"{split}.txt").write_text("".join(f"{name}\n" for name in names))


def export_davis(
    root: image_io.PathLike,
    *,
    num_train: int,
    num_val: int,
    num_frames: int,
    height: int,
    width: int,
    seed: int = 0,
    config: generator.SyntheticConfig | str = "medium",
    resolution: str = "480p",
    image_format: str = "jpg",
) -> pathlib.Path:
    """Writes synthetic train and val videos in the DAVIS-2017 layout (or reuses them).

    Video i of a split has seed `generator.split_seed(seed, 'train' | 'validation', i)`; every
    frame has its annotation. JPEG frames are written at quality 95 without chroma subsampling.

    Args:
      root: output folder; missing, empty, or an earlier export (replaced if its parameters
        differ).
      num_train: number of training sequences (synth-train-000, ...).
      num_val: number of validation sequences (synth-val-000, ...).
      num_frames: frames per sequence.
      height: frame height.
      width: frame width.
      seed: dataset seed.
      config: generator config or level name.
      resolution: the `<resolution>` folder name.
      image_format: 'jpg' or 'png' for the frames.

    Returns:
      root as a path; `vosjax.data.davis.load_davis(root, '2017/val', resolution)` reads it.

    Raises:
      ValueError: a bad parameter, named in the message.
      DataError: root exists, is not empty and is not a synthetic export.
    """
    params = _params(
        num_train=num_train,
        num_val=num_val,
        num_frames=num_frames,
        height=height,
        width=width,
        seed=seed,
        config=config,
        resolution=resolution,
        image_format=image_format,
    )
    root = pathlib.Path(root)
    if _read_manifest(root) == params:
        return root
    if root.exists() and not (root / MANIFEST).is_file():
        if not root.is_dir() or any(root.iterdir()):
            raise image_io.DataError(
                f"{root}: exists and is not a synthetic export (no {MANIFEST}); expected a "
                "missing or empty folder"
            )
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{root.name}.", dir=root.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the export is ordinary data
    try:
        for (split, generator_split), count in zip(SPLITS, (num_train, num_val), strict=True):
            _write_split(tmp, split, generator_split, count, params, resolve_config(config))
        (tmp / MANIFEST).write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")
        if root.exists():
            shutil.rmtree(root)  # an empty folder or an export with other parameters
        try:
            tmp.rename(root)
        except OSError:
            # Another process exported into root meanwhile; fine if it wrote the same thing.
            if _read_manifest(root) != params:
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def default_davis_root(
    *,
    num_train: int = 30,
    num_val: int = 8,
    num_frames: int = 50,
    height: int = 480,
    width: int = 854,
    seed: int = 0,
    config: generator.SyntheticConfig | str = "medium",
    resolution: str = "480p",
    image_format: str = "jpg",
    data_dir: image_io.PathLike | None = None,
) -> pathlib.Path:
    """Exports (once) into `<data_dir>/davis_synthetic/<hash of the parameters>` and returns it.

    The defaults mirror DAVIS-2016's sizes (30 train / 8 val sequences at 480x854); this is the
    data root that vosjax uses when no DAVIS root is given. `data_dir` defaults to
    `cache_root()`.
    """
    params = _params(
        num_train=num_train,
        num_val=num_val,
        num_frames=num_frames,
        height=height,
        width=width,
        seed=seed,
        config=config,
        resolution=resolution,
        image_format=image_format,
    )
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    base = pathlib.Path(data_dir) if data_dir is not None else cache_root()
    return export_davis(
        base / "davis_synthetic" / digest,
        num_train=num_train,
        num_val=num_val,
        num_frames=num_frames,
        height=height,
        width=width,
        seed=seed,
        config=config,
        resolution=resolution,
        image_format=image_format,
    )
