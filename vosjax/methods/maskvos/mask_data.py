"""Training data of Mask-VOS mask-embedded segmentation: clips with their pseudo masks.

The second stage of Mask-VOS learns to segment with the pseudo masks of the clustering stage
(`pseudo_masks.build`) as targets: a few clusters of a clip are drawn as "objects" and the model
propagates their masks from frame 0 to the other frames.

How the masks travel through the grain pipeline (`vosjax.data.pipeline.ClipLoader`, which hands
the transform nothing but what the source's `sample_clip` returns): `PseudoMaskSource` packs them
as a fourth channel of the frames,
  uint8 [T, H, W, 4]: RGB + the cluster id of each pixel (stride-8 masks upsampled 8x),
and `MaskTwoViewTransform` unpacks them, so neither the pipeline nor the other sources change.

Example layout (after `MaskTwoViewTransform` and `ClipLoader`; B examples per batch):
  'video'         uint8   [B, T, S, S, 3]      the clip (S = crop);
  'view'          uint8   [B, S, S, 3]         an affine view of frame 0 (as `TwoViewTransform`);
  'affine'        float32 [B, 2, 3]            view pixel -> frame-0 pixel;
  'labels'        uint8   [B, T, S/8, S/8]     0 background, 1..K the sampled objects;
  'num_objects'   int32   [B]                  objects sampled (<= K); ids above it are absent;
  'frame_indices', 'video_index', 'skipped'    as every `ClipLoader` example.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence

import cv2
import grain
import ml_collections
import numpy as np

from vosjax.data import clip_sampling, clip_sources, image_io, pipeline, transforms
from vosjax.methods.maskvos import correspondence, pseudo_masks

STRIDE = 8  # pseudo masks and output labels are at 1/8 of the frame's resolution
MAX_OBJECTS = 254  # object ids 1..K must fit uint8 with room for a void value


def pack(frames: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """uint8 frames [T, H, W, 3] + uint8 cluster ids [T, H, W] -> uint8 [T, H, W, 4]."""
    return np.concatenate([frames, labels[..., None].astype(np.uint8)], axis=-1)


def unpack(clip: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """uint8 [T, H, W, 4] -> (frames uint8 [T, H, W, 3], cluster ids uint8 [T, H, W]).

    Raises:
      ValueError: `clip` is not a packed clip (see `PseudoMaskSource`).
    """
    if clip.ndim != 4 or clip.shape[-1] != 4 or clip.dtype != np.uint8:
        raise ValueError(
            "clip: expected uint8 [T, H, W, 4] (RGB + pseudo-mask cluster ids, what "
            f"PseudoMaskSource.sample_clip returns), got {clip.dtype} {clip.shape}"
        )
    return clip[..., :3], clip[..., 3]


def upsample_masks(masks: np.ndarray, height: int, width: int, what: str) -> np.ndarray:
    """Stride-8 cluster ids [T, h, w] -> [T, height, width]: each id covers an 8 x 8 block.

    `h` may be ceil(height / 8) (the excess rows are cropped) or height // 8 (the last rows
    repeat the last block row); the same holds for `w`.

    Raises:
      DataError: the masks' size fits neither; `what` names them in the message.
    """
    h, w = masks.shape[1:]
    if h not in (height // STRIDE, -(-height // STRIDE)) or w not in (
        width // STRIDE,
        -(-width // STRIDE),
    ):
        raise image_io.DataError(
            f"{what}: pseudo masks of size {h} x {w} do not fit frames of {height} x {width} "
            f"(expected ceil or floor of 1/{STRIDE} of the frame size)"
        )
    full = np.repeat(np.repeat(masks, STRIDE, axis=1), STRIDE, axis=2)[:, :height, :width]
    pad_h, pad_w = height - full.shape[1], width - full.shape[2]
    if pad_h or pad_w:
        full = np.pad(full, ((0, 0), (0, pad_h), (0, pad_w)), mode="edge")
    return full


class PseudoMaskSource(clip_sources.VideoSource):
    """A video source whose clips carry their pseudo masks as a fourth channel.

    Video `i`'s masks are read from `masks_folder / source.name(i)` (the layout of
    `pseudo_masks.build`, `masks_folder` being a `cache_root/step_<S>` set). `read_frames` and
    `source[i]` still give plain RGB frames; only `sample_clip`, the pipeline's entry point,
    packs the masks.
    """

    def __init__(self, source: clip_sources.VideoSource, masks_folder: image_io.PathLike):
        """Args:
        source: the training videos (the ones that were clustered).
        masks_folder: the set of pseudo masks (`pseudo_masks.build`'s result).

        Raises:
          DataError: `masks_folder` does not exist.
        """
        self.source = source
        self.masks_folder = pathlib.Path(masks_folder)
        if not self.masks_folder.is_dir():
            raise image_io.DataError(f"{self.masks_folder}: pseudo-mask folder not found")

    def __len__(self) -> int:
        return len(self.source)

    def name(self, index: int) -> str:
        return self.source.name(index)

    def num_frames(self, index: int) -> int:
        return self.source.num_frames(index)

    def read_frames(self, index: int, frame_indices: Sequence[int]) -> np.ndarray:
        return self.source.read_frames(index, frame_indices)

    def mask_folder(self, index: int) -> pathlib.Path:
        """Where the pseudo masks of video `index` are."""
        return self.masks_folder / self.source.name(index)

    def read_masks(
        self, index: int, frame_indices: Sequence[int], height: int, width: int
    ) -> np.ndarray:
        """Cluster ids of the given frames at the frame's resolution: uint8 [T, height, width].

        Raises:
          DataError: the video's mask folder or a frame's mask is missing, or the masks do not
            fit the frame size.
        """
        folder = self.mask_folder(index)
        if not folder.is_dir():
            raise image_io.DataError(f"{folder}: no pseudo masks for video {self.name(index)!r}")
        masks = pseudo_masks.read_masks(folder, frame_indices)
        return upsample_masks(masks, height, width, str(folder))

    def sample_clip(
        self, index: int, sampler: clip_sampling.ClipSampler, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Samples a clip of video `index` (as the wrapped source does) with its masks.

        Returns:
          (uint8 [T, H, W, 4] frames with cluster ids in channel 3 (`unpack` splits them),
          int64 [T] frame indices).

        Raises:
          DataError: a frame or mask is unreadable or missing (the pipeline skips the video).
        """
        frames, indices = self.source.sample_clip(index, sampler, rng)
        masks = self.read_masks(index, indices, *frames.shape[1:3])
        return pack(frames, masks), indices


def _check_fields(
    crop: int,
    min_short: int,
    max_short: int,
    num_objects: int,
    min_object_fraction: float,
    prefix: str,
) -> None:
    """Raises ValueError naming `prefix + field` for a value the transform cannot use."""
    if crop < STRIDE or crop % STRIDE:
        raise ValueError(f"{prefix}crop={crop}: expected a positive multiple of {STRIDE}")
    if min_short < crop:
        raise ValueError(f"{prefix}min_short={min_short}: expected >= {prefix}crop={crop}")
    if max_short < min_short:
        raise ValueError(
            f"{prefix}max_short={max_short}: expected >= {prefix}min_short={min_short}"
        )
    if not 1 <= num_objects <= MAX_OBJECTS:
        raise ValueError(f"{prefix}num_objects={num_objects}: expected 1..{MAX_OBJECTS}")
    if not 0.0 <= min_object_fraction <= 1.0:
        raise ValueError(
            f"{prefix}min_object_fraction={min_object_fraction}: expected a value in [0, 1]"
        )


def block_mode(labels: np.ndarray) -> np.ndarray:
    """uint8 ids [T, H, W] (H, W multiples of 8) -> [T, H/8, W/8]: each 8 x 8 block's majority.

    Ties go to the smallest id. The majority is the area-weighted summary of the block (the
    released code's bilinear /8 of one-hot masks instead samples near the block's centre).
    """
    t, height, width = labels.shape
    blocks = labels.reshape(t, height // STRIDE, STRIDE, width // STRIDE, STRIDE)
    ids = np.flatnonzero(np.bincount(labels.ravel(), minlength=256))
    counts = np.stack([(blocks == i).sum(axis=(2, 4)) for i in ids])
    return ids[np.argmax(counts, axis=0)].astype(np.uint8)


@dataclasses.dataclass(frozen=True)
class MaskTwoViewTransform(correspondence.TwoViewTransform):
    """Packed clip [T, H, W, 4] -> the clip, an affine view of frame 0 and object labels.

    Frames and cluster ids get the same geometry, drawn as `TwoViewTransform` draws it (short
    side in [min_short, max_short], an S x S crop, a flip): frames are resized as
    `transforms.ShortSideResize` does (bilinear, area when shrinking), ids with centre-aligned
    nearest neighbour. For a given RNG state 'clip', 'view' and 'affine' equal
    `TwoViewTransform`'s output. The ids are then reduced to S/8 (`block_mode`) and objects are
    drawn: among the clusters covering at least `min_object_fraction` of frame 0 (at S/8),
    up to `num_objects` in random order become objects 1..K in every frame; all other pixels
    are background 0.

    Attributes (besides `TwoViewTransform`'s crop, scale and view fields):
      num_objects: K, the most objects drawn per clip (the released code: 2, plus background).
      min_object_fraction: smallest share of frame 0 (at S/8) a cluster needs to be drawn; our
        choice (the release does not say how its 2-object masks were made).
    """

    num_objects: int = 2
    min_object_fraction: float = 0.05

    def __post_init__(self):
        _check_fields(
            self.crop,
            self.min_short,
            self.max_short,
            self.num_objects,
            self.min_object_fraction,
            "MaskTwoViewTransform.",
        )

    def crop_and_flip(
        self, frames: np.ndarray, labels: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """The shared geometry: frames [T, H, W, 3], ids [T, H, W] -> [T, S, S, 3], [T, S, S].

        Draws from `rng` exactly what ShortSideResize -> RandomCrop -> HorizontalFlip draw.
        """
        short = int(rng.integers(self.min_short, self.max_short + 1))
        height, width = frames.shape[1:3]
        factor = short / min(height, width)
        new_h = short if height <= width else int(round(height * factor))
        new_w = short if width < height else int(round(width * factor))
        if (new_h, new_w) != (height, width):
            frames = np.stack([transforms.resize_frame(f, new_h, new_w) for f in frames])
            labels = np.stack(
                [
                    cv2.resize(f, (new_w, new_h), interpolation=cv2.INTER_NEAREST_EXACT)
                    for f in labels
                ]
            )
        s = self.crop
        top = int(rng.integers(0, new_h - s + 1, size=1)[0])
        left = int(rng.integers(0, new_w - s + 1, size=1)[0])
        frames = frames[:, top : top + s, left : left + s]
        labels = labels[:, top : top + s, left : left + s]
        if rng.random(1)[0] < self.flip:
            frames, labels = frames[:, :, ::-1], labels[:, :, ::-1]
        return np.ascontiguousarray(frames), np.ascontiguousarray(labels)

    def sample_objects(
        self, labels: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Cluster ids [T, h, w] -> (object ids uint8 [T, h, w] in 0..K, int32 count <= K)."""
        counts = np.bincount(labels[0].ravel(), minlength=256)
        fractions = counts / labels[0].size
        eligible = np.flatnonzero((counts > 0) & (fractions >= self.min_object_fraction))
        chosen = rng.permutation(eligible)[: self.num_objects]
        lookup = np.zeros(256, np.uint8)
        lookup[chosen] = np.arange(1, len(chosen) + 1)
        return lookup[labels], np.int32(len(chosen))

    def __call__(self, clip: np.ndarray, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """Returns {'clip': uint8 [T, S, S, 3], 'view': uint8 [S, S, 3], 'affine': f32 [2, 3],
        'labels': uint8 [T, S/8, S/8], 'num_objects': int32 scalar}.

        Raises:
          ValueError: `clip` is not a packed clip uint8 [T, H, W, 4].
        """
        frames, labels = unpack(clip)
        frames, labels = self.crop_and_flip(frames, labels, rng)
        view, affine = self.affine_view(frames, rng)
        objects, count = self.sample_objects(block_mode(labels), rng)
        return {
            "clip": frames,
            "view": view,
            "affine": affine,
            "labels": objects,
            "num_objects": count,
        }


def make_transform(data: ml_collections.ConfigDict) -> MaskTwoViewTransform:
    """The training transform of `config.data`: `correspondence.make_transform`'s fields plus
    `num_objects` and `min_object_fraction` (the dataclass defaults when absent).

    Raises:
      ValueError: a field the transform cannot use, named as `config.data.<field>`.
    """
    num_objects = data.get("num_objects", MaskTwoViewTransform.num_objects)
    min_object_fraction = data.get("min_object_fraction", MaskTwoViewTransform.min_object_fraction)
    if not isinstance(num_objects, int) or isinstance(num_objects, bool):
        raise ValueError(f"config.data.num_objects={num_objects!r}: expected an integer")
    if not isinstance(min_object_fraction, int | float):
        raise ValueError(
            f"config.data.min_object_fraction={min_object_fraction!r}: expected a number"
        )
    _check_fields(
        data.crop, data.min_short, data.max_short, num_objects, min_object_fraction, "config.data."
    )
    two_view = correspondence.make_transform(data)
    return MaskTwoViewTransform(
        **dataclasses.asdict(two_view),
        num_objects=num_objects,
        min_object_fraction=float(min_object_fraction),
    )


def make_train_iterator(
    source: clip_sources.VideoSource,
    masks_folder: image_io.PathLike,
    *,
    sampler: clip_sampling.ClipSampler,
    transform: MaskTwoViewTransform,
    global_batch_size: int,
    seed: int,
    num_workers: int = 0,
    read_threads: int = pipeline.DEFAULT_READ_THREADS,
    prefetch_batches: int = pipeline.DEFAULT_PREFETCH_BATCHES,
    shard_index: int | None = None,
    shard_count: int | None = None,
    num_epochs: int | None = None,
) -> grain.DatasetIterator:
    """Batches of clips with object labels (`pipeline.make_train_iterator` over the masks).

    Args:
      source: the training videos (those `masks_folder` was made from).
      masks_folder: the pseudo-mask set (`cache_root/step_<S>`, `pseudo_masks.build`).
      sampler: which frames make a clip.
      transform: the joint augmentation and object sampling.
      global_batch_size: examples per step over all hosts.
      seed: shuffling and augmentation seed.
      num_workers: grain worker processes (0: in this process).
      read_threads: threads building batches per reading process (`pipeline`).
      prefetch_batches: batches built ahead per reading process.
      shard_index: this host's shard; default `jax.process_index()`.
      shard_count: number of shards; default `jax.process_count()`.
      num_epochs: passes over the data; None repeats forever.

    Returns:
      An iterator of batches laid out as the module docstring says. Videos without masks are
      skipped as corrupt (counted in 'skipped').

    Raises:
      DataError: `masks_folder` does not exist.
      ValueError: see `pipeline.make_train_iterator`.
    """
    return pipeline.make_train_iterator(
        PseudoMaskSource(source, masks_folder),
        sampler=sampler,
        transform=transform,
        global_batch_size=global_batch_size,
        seed=seed,
        shard_index=shard_index,
        shard_count=shard_count,
        num_workers=num_workers,
        read_threads=read_threads,
        prefetch_batches=prefetch_batches,
        num_epochs=num_epochs,
    )
