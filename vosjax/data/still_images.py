"""Random-access sources of still images with a foreground mask (SHLS's training data).

SHLS learns from still images with a saliency mask (MSRA10K) turned into pseudo-sequences
(`vosjax.data.pseudo_sequences`). A source here gives:
- `len(source)`, `source.name(i)`;
- `source.read(i)` -> (image uint8 [H, W, 3] RGB, foreground bool [H, W]).

Sources:
- `ImageMaskFolderSource`: a folder tree of `<name>.jpg` + `<name>.png` pairs (MSRA10K, DUTS
  copied into one folder, your own images);
- `DavisStillFrames`: every frame of a DAVIS split, its annotation as the foreground;
- `SyntheticStills`: frame 0 of procedural videos (`vosjax.data.synthetic`), the default.
`open_still_source` picks one from a path. Sources hold only paths and numbers, so they pickle
cheaply to grain's worker processes. A corrupt file raises `image_io.DataError` naming it.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
from PIL import Image

from vosjax.data import davis, image_io
from vosjax.data.synthetic import generator

IMAGE_EXTENSIONS = (".jpg", ".jpeg")
MASK_EXTENSION = ".png"
# Grayscale masks: foreground is a value at or above half of the 8-bit (or 16-bit) range.
_GRAY_THRESHOLD = 128
_GRAY16_THRESHOLD = 32768
# Seeds of synthetic stills are drawn from this split name (see `generator.split_seed`).
_SYNTHETIC_SPLIT = "still"


class StillImageSource:
    """Base class of still-image sources: `__len__`, `name(index)`, `read(index)`."""

    def __len__(self) -> int:
        raise NotImplementedError

    def name(self, index: int) -> str:
        """A readable name of image `index` (a relative path, a sequence/frame, a seed)."""
        raise NotImplementedError

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image `index` and its foreground.

        Returns:
          (uint8 [H, W, 3] RGB image, bool [H, W] foreground mask).

        Raises:
          DataError: the image or its mask is missing, unreadable, or of a different size.
        """
        raise NotImplementedError


def _check_index(source: StillImageSource, index: int) -> int:
    index = int(index)
    if not 0 <= index < len(source):
        raise IndexError(f"image {index} of a source of {len(source)} images")
    return index


def _check_sizes(image: np.ndarray, mask: np.ndarray, image_path, mask_path) -> None:
    if image.shape[:2] != mask.shape:
        raise image_io.DataError(
            f"{mask_path}: mask is {mask.shape[0]}x{mask.shape[1]} but its image {image_path} "
            f"is {image.shape[0]}x{image.shape[1]} (height x width)"
        )


def read_foreground(path: image_io.PathLike) -> np.ndarray:
    """Reads a foreground (saliency) mask PNG as a boolean mask.

    - indexed ('P') masks hold ids: every non-zero index is foreground (a void 255 too);
    - 1-bit ('1') masks: set pixels are foreground;
    - grayscale ('L', 'LA': its gray channel; 'RGB', 'RGBA': their luma, alpha ignored) and
      16-bit ('I', 'I;16') masks: when every value is 0 or 1 (a binary 0/1 mask) foreground is
      the 1s, otherwise it is the values >= 128 (>= 32768 where values exceed 255), which
      binarises the {0, 255} masks of MSRA10K and the anti-aliased edges of soft masks.

    Args:
      path: a PNG file.

    Returns:
      bool array [H, W].

    Raises:
      DataError: the file is missing, unreadable, or not a mask mode above.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise image_io.DataError(f"{path}: mask file not found")
    try:
        with Image.open(path) as image:
            image.load()
            mode = image.mode
            if mode == "P":
                return np.asarray(image) > 0
            if mode == "1":
                return np.asarray(image).astype(bool)
            if mode == "LA":
                values = np.asarray(image.getchannel(0))
            elif mode in ("RGB", "RGBA"):
                values = np.asarray(image.convert("L"))
            elif mode in ("L", "I", "I;16", "I;16B", "I;16L"):
                values = np.asarray(image)
            else:
                raise image_io.DataError(
                    f"{path}: mask mode {mode!r}; expected a grayscale, binary or indexed PNG"
                )
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise image_io.DataError(f"{path}: unreadable or truncated mask ({e})") from e
    top = int(values.max()) if values.size else 0
    if top <= 1:
        return values > 0
    return values >= (_GRAY16_THRESHOLD if top > 255 else _GRAY_THRESHOLD)


class ImageMaskFolderSource(StillImageSource):
    """A folder tree of `<name>.jpg` images, each with its mask `<name>.png` beside it.

    This is the layout of MSRA10K (`MSRA10K_Imgs_GT/Imgs/`: `75.jpg` + `75.png`). The folder is
    searched recursively; images are the .jpg / .jpeg files (any case), sorted by relative path;
    PNG files without a JPEG are taken for masks and not listed. Masks are read by
    `read_foreground`.
    """

    def __init__(self, root: image_io.PathLike):
        """Args:
        root: the folder.

        Raises:
          DataError: the folder is missing or holds no image, or an image has no mask
            (named in the message).
        """
        root = pathlib.Path(root)
        if not root.is_dir():
            raise image_io.DataError(f"{root}: image folder not found")
        self.root = root
        images = sorted(
            p
            for p in root.rglob("*")
            if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
        )
        if not images:
            raise image_io.DataError(
                f"{root}: holds no image + mask pair (expected <name>.jpg files, each with a "
                f"<name>.png mask beside it)"
            )
        masks = []
        for image in images:
            mask = image.with_suffix(MASK_EXTENSION)
            if not mask.is_file():
                upper = image.with_suffix(MASK_EXTENSION.upper())
                if not upper.is_file():
                    raise image_io.DataError(f"{image}: no mask {mask.name} beside the image")
                mask = upper
            masks.append(mask)
        self.images = tuple(images)
        self.masks = tuple(masks)

    def __len__(self) -> int:
        return len(self.images)

    def name(self, index: int) -> str:
        return self.images[index].relative_to(self.root).with_suffix("").as_posix()

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        index = _check_index(self, index)
        image = image_io.read_frame(self.images[index])
        mask = read_foreground(self.masks[index])
        _check_sizes(image, mask, self.images[index], self.masks[index])
        return image, mask


class DavisStillFrames(StillImageSource):
    """Every frame of every sequence of a DAVIS split, with its annotation as the foreground.

    Foreground = annotation > 0 (`image_io.read_mask`): DAVIS-2016's {0, 255} masks read as
    object 1; DAVIS-2017's objects (and void) merge into one foreground. Empty annotations are
    kept (the pseudo-sequence then holds only pasted objects). Every frame must have an
    annotation: none is skipped.
    """

    def __init__(
        self,
        root: image_io.PathLike,
        imageset: str = "2016/train",
        resolution: str = "240p",
    ):
        """Args:
        root: DAVIS root folder.
        imageset: '<year>/<split>', naming `root/ImageSets/<year>/<split>.txt`.
        resolution: '480p', '240p' or 'Full-Resolution'.

        Raises:
          DataError: root, split file or a sequence folder missing, a sequence without frames,
            or a frame without annotation (named in the message).
        """
        root = pathlib.Path(root)
        if not root.is_dir():
            raise image_io.DataError(f"{root}: DAVIS root folder not found")
        self.root = root
        self.imageset = imageset
        self.resolution = resolution
        frames, masks, names = [], [], []
        for sequence in dict.fromkeys(davis.read_imageset(root, imageset)):
            folder = root / "JPEGImages" / resolution / sequence
            if not folder.is_dir():
                raise image_io.DataError(f"{folder}: frame folder of {sequence!r} not found")
            files = sorted(
                e.name
                for e in os.scandir(folder)
                if os.path.splitext(e.name)[1].lower() in davis.FRAME_EXTENSIONS
                and not e.name.startswith(".")
            )
            if not files:
                raise image_io.DataError(f"{folder}: holds no frame {davis.FRAME_EXTENSIONS}")
            annotations = root / "Annotations" / resolution / sequence
            for file in files:
                stem = os.path.splitext(file)[0]
                mask = annotations / f"{stem}.png"
                if not mask.is_file():
                    raise image_io.DataError(
                        f"{folder / file}: no annotation {mask} (every frame of a still-image "
                        "source needs one)"
                    )
                frames.append(folder / file)
                masks.append(mask)
                names.append(f"{sequence}/{stem}")
        self.frames = tuple(frames)
        self.masks = tuple(masks)
        self.names = tuple(names)

    def __len__(self) -> int:
        return len(self.frames)

    def name(self, index: int) -> str:
        return self.names[index]

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        index = _check_index(self, index)
        image = image_io.read_frame(self.frames[index])
        mask = image_io.read_mask(self.masks[index]) > 0
        _check_sizes(image, mask, self.frames[index], self.masks[index])
        return image, mask


class SyntheticStills(StillImageSource):
    """Frame 0 of `count` synthetic videos, foreground = every object (mask > 0).

    Image i is frame 0 of `generator.generate_video(split_seed(seed, 'still', i), ...)`:
    deterministic, rendered when read (~15 ms at 256 x 256).
    """

    def __init__(
        self,
        config: generator.SyntheticConfig | str,
        count: int,
        seed: int = 0,
        *,
        height: int = 256,
        width: int = 256,
    ):
        """Args:
        config: a `SyntheticConfig` or a level name ('easy', 'medium', 'hard').
        count: number of images, >= 1.
        seed: dataset seed, >= 0.
        height: image height, >= 8.
        width: image width, >= 8.

        Raises:
          ValueError: unknown level, or a bad count, seed or size.
        """
        self.config = generator.level_config(config) if isinstance(config, str) else config
        if not isinstance(self.config, generator.SyntheticConfig):
            raise ValueError(
                f"SyntheticStills.config: expected a SyntheticConfig or a level name, got "
                f"{config!r}"
            )
        if int(count) < 1:
            raise ValueError(f"SyntheticStills.count: expected >= 1, got {count}")
        if int(seed) < 0:
            raise ValueError(f"SyntheticStills.seed: expected >= 0, got {seed}")
        if height < 8 or width < 8:
            raise ValueError(
                f"SyntheticStills height, width: expected >= 8, got {height} x {width}"
            )
        self.count = int(count)
        self.seed = int(seed)
        self.height = int(height)
        self.width = int(width)

    def __len__(self) -> int:
        return self.count

    def name(self, index: int) -> str:
        return f"synthetic/{self.seed}/{int(index)}"

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        index = _check_index(self, index)
        video = generator.generate_video(
            generator.split_seed(self.seed, _SYNTHETIC_SPLIT, index),
            num_frames=1,
            height=self.height,
            width=self.width,
            config=self.config,
        )
        return video.frames[0], video.masks[0] > 0


def open_still_source(
    path: str | None = None,
    *,
    imageset: str = "2016/train",
    resolution: str = "240p",
    synthetic_config: generator.SyntheticConfig | str = "medium",
    synthetic_count: int = 1000,
) -> StillImageSource:
    """A still-image source chosen from a path (what a config's data path holds).

    - None or '': `SyntheticStills(synthetic_config, synthetic_count)`;
    - a DAVIS root (has ImageSets/ and JPEGImages/): `DavisStillFrames(path, imageset,
      resolution)`;
    - any other folder: `ImageMaskFolderSource(path)` (jpg + png pairs, searched recursively).

    Raises:
      FileNotFoundError: the path does not exist.
      DataError: the path is a file, or the chosen source's errors.
    """
    if not path:
        return SyntheticStills(synthetic_config, synthetic_count)
    root = pathlib.Path(path)
    if not root.exists():
        raise FileNotFoundError(
            f"{root}: still-image data not found; expected a DAVIS root or a folder of "
            "<name>.jpg + <name>.png pairs"
        )
    if not root.is_dir():
        raise image_io.DataError(f"{root}: expected a folder of still images, got a file")
    if (root / "ImageSets").is_dir() and (root / "JPEGImages").is_dir():
        return DavisStillFrames(root, imageset, resolution)
    return ImageMaskFolderSource(root)
