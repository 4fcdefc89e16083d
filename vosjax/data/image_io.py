"""Reading frames and masks, writing indexed PNGs with the DAVIS palette.

Every reader here checks what it reads and raises `DataError` naming the file and what was
expected, so that a bad file never surfaces as a crash deep inside numpy or as a wrong number.

Masks come in three forms:
- indexed PNGs (mode 'P', DAVIS-2017 / YouTube-VOS): pixel = object id, 0 = background,
  255 = void;
- binary grayscale PNGs (mode 'L' or 'LA', DAVIS-2016): {0, 255}, where 255 is object 1;
- colour PNGs (mode 'RGB', as some propagation codes write them): colours of the DAVIS palette.
"""

from __future__ import annotations

import os
import pathlib
import tempfile

import numpy as np
from PIL import Image

PathLike = str | os.PathLike

VOID = 255
# Object ids above this are not accepted in grayscale masks: they are more likely a soft or
# anti-aliased mask than a segmentation with hundreds of objects.
MAX_GRAY_OBJECT_ID = 100


class DataError(ValueError):
    """A data file or folder is missing or is not what vosjax expects."""


def davis_palette() -> np.ndarray:
    """The DAVIS / PASCAL VOC colour map.

    Returns:
      uint8 array [256, 3]; row i is the colour of object id i.
    """
    palette = np.zeros((256, 3), np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette[i] = (r, g, b)
    return palette


_PALETTE = davis_palette()
_COLOUR_TO_ID = {
    (int(r) << 16) | (int(g) << 8) | int(b): i
    for i, (r, g, b) in reversed(list(enumerate(_PALETTE)))
}


def _open(path: PathLike) -> Image.Image:
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        image = Image.open(path)
        image.load()
    except (OSError, SyntaxError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: unreadable or truncated image ({e})") from e
    return image


def read_frame(path: PathLike) -> np.ndarray:
    """Reads an RGB frame.

    Args:
      path: a JPEG or PNG file.

    Returns:
      uint8 array [H, W, 3].

    Raises:
      DataError: the file is missing, unreadable or truncated.
    """
    image = _open(path)
    if image.mode != "RGB":
        image = image.convert("RGB")
    return np.asarray(image)


def frame_size(path: PathLike) -> tuple[int, int]:
    """(height, width) of an image file, read from its header only."""
    path = pathlib.Path(path)
    try:
        with Image.open(path) as image:
            width, height = image.size
    except FileNotFoundError as e:
        raise DataError(f"{path}: file not found") from e
    except (OSError, SyntaxError) as e:
        raise DataError(f"{path}: unreadable image ({e})") from e
    return height, width


def read_mask(path: PathLike) -> np.ndarray:
    """Reads a segmentation mask as object ids.

    Args:
      path: an indexed ('P'), grayscale ('L', 'LA'), 1-bit ('1') or colour ('RGB') PNG.
        Binary masks ({0, 255} grayscale, 1-bit, black/white RGB) read as object 1.

    Returns:
      uint8 array [H, W]: 0 background, 1..K objects, 255 void (indexed masks only).

    Raises:
      DataError: the file is missing, unreadable, or its values are neither object ids nor the
        binary {0, 255} of DAVIS-2016, or its colours are not in the DAVIS palette.
    """
    image = _open(path)
    mode = image.mode
    if mode == "P":
        return np.asarray(image, dtype=np.uint8)
    if mode == "1":  # a 1-bit binary mask, as many drawing tools save one
        return np.asarray(image).astype(np.uint8)
    if mode in ("L", "LA", "I", "I;16"):
        channel = image.getchannel(0) if mode == "LA" else image
        values = np.asarray(channel)
        # 8-bit: PIL's histogram gives the values present ~10x faster than np.unique (DAVIS-2016
        # evaluation reads one such mask per frame).
        present = np.flatnonzero(channel.histogram()) if channel.mode == "L" else np.unique(values)
        if present.size and set(present.tolist()) <= {0, 255}:
            return (values == 255).astype(np.uint8)
        if present.max() <= MAX_GRAY_OBJECT_ID:
            return values.astype(np.uint8)
        raise DataError(
            f"{path}: grayscale mask values {present[:10].tolist()} are neither object ids "
            f"(0..{MAX_GRAY_OBJECT_ID}) nor the binary {{0, 255}} of DAVIS-2016"
        )
    if mode in ("RGB", "RGBA"):
        rgb = np.asarray(image.convert("RGB")).astype(np.int32)
        code = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        colours, inverse = np.unique(code, return_inverse=True)
        if set(colours.tolist()) <= {0, 0xFFFFFF}:  # black/white saved as RGB: binary, object 1
            return (code == 0xFFFFFF).astype(np.uint8)
        ids = np.empty(colours.shape, np.uint8)
        for i, colour in enumerate(colours.tolist()):
            if colour not in _COLOUR_TO_ID:
                rgb_bad = (colour >> 16, (colour >> 8) & 255, colour & 255)
                raise DataError(
                    f"{path}: colour mask has colour {rgb_bad} that is not in the DAVIS "
                    "palette; expected an indexed PNG of object ids"
                )
            ids[i] = _COLOUR_TO_ID[colour]
        return ids[inverse].reshape(code.shape)
    raise DataError(f"{path}: mask mode {mode!r}; expected an indexed 'P', 'L' or 'RGB' PNG")


def write_mask(path: PathLike, mask: np.ndarray) -> None:
    """Writes object ids as an indexed PNG with the DAVIS palette.

    The official DAVIS toolkits and the YouTube-VOS server read these files.

    Args:
      path: output file; parent folders are created.
      mask: integer array [H, W] of object ids in 0..255.

    Raises:
      ValueError: mask is not 2-D or has ids outside 0..255.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"write_mask({path}): expected a [H, W] mask, got shape {mask.shape}")
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise ValueError(
            f"write_mask({path}): ids must be in 0..255, got {mask.min()}..{mask.max()}"
        )
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    image.putpalette(_PALETTE.ravel().tolist())
    image.save(path)


def make_writable_folder(folder: PathLike) -> pathlib.Path:
    """`folder`, created if missing, once a file has been created (and removed) in it.

    A real write, not the permission bits: they do not stop root, while a read-only mount or an
    immutable folder does.

    Raises:
      OSError: the folder cannot be created or written.
    """
    folder = pathlib.Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    handle, probe = tempfile.mkstemp(prefix=".vosjax_write_check_", dir=folder)
    os.close(handle)
    os.unlink(probe)
    return folder


def overlay(frame: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blends the palette colours of `mask` [H, W] over `frame` [H, W, 3] (uint8)."""
    colours = _PALETTE[mask.astype(np.int64) % 256].astype(np.float32)
    blend = np.where(
        (mask > 0)[..., None], (1 - alpha) * frame.astype(np.float32) + alpha * colours, frame
    )
    return blend.astype(np.uint8)
