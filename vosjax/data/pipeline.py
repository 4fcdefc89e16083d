"""The grain training pipeline: video source -> clips -> augmented, batched examples.

    MapDataset.range(len(source)) -> this host's shard (every shard_count-th video)
      -> shuffle(seed) -> repeat (reshuffled each epoch)
      -> random_map(ClipLoader): sample T frames, decode only those, transform
      -> batch(global_batch_size // shard_count)
      -> to_iter_dataset(read_threads, prefetch_batches) -> mp_prefetch(num_workers)

Determinism: grain derives each example's RNG from the seed and the example's position, so a
seed gives the same batches whatever `num_workers` is, and the iterator's `get_state()` /
`set_state()` resume exactly (the state is a small dict that the checkpoint stores).

Corrupt data: a video whose sampled frames fail to decode (truncated JPEG, undecodable mp4) is
skipped with a logged warning and replaced by the next video of the source (index + 1, wrapping
around), deterministically. Each example carries `skipped`, the number of videos skipped to
produce it, so the trainer can sum it over batches and report it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

import cv2
import grain
import numpy as np
from absl import flags

from vosjax.data import clip_sampling, clip_sources, image_io, transforms

_LOG = logging.getLogger(__name__)
# Errors that mean "this file is corrupt": a bad image / video raises DataError from our readers;
# OSError and cv2.error cover what escapes them (I/O errors, OpenCV failures).
CORRUPT_DATA_ERRORS = (image_io.DataError, OSError, cv2.error)
# Per reading process: threads building batches, and batches built ahead (`config.data`).
DEFAULT_READ_THREADS = 2
DEFAULT_PREFETCH_BATCHES = 4


@dataclasses.dataclass(frozen=True)
class ClipLoader:
    """grain random-map transform: video index -> one training example.

    Attributes:
      source: the videos.
      sampler: which frames make a clip.
      transform: applied to the clip [T, H, W, 3] with the example's RNG; returns an array, or
        a dict (its 'clip' entry becomes 'video', the others are kept, e.g. 'params'); None
        keeps the uint8 frames.
      max_skips: corrupt videos skipped in a row before giving up.
    """

    source: clip_sources.VideoSource
    sampler: clip_sampling.ClipSampler
    transform: transforms.Transform | None = None
    max_skips: int = 100

    def __call__(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        """Loads a clip of video `index` (or of the next good one).

        Returns:
          {'video': the (transformed) clip, 'frame_indices': int32 [T], 'video_index': int32,
          'skipped': int32, plus any other entries of a dict-returning transform}.

        Raises:
          DataError: `max_skips` + 1 videos in a row are corrupt (the data set is broken).
        """
        count = len(self.source)
        index = int(index)
        for skipped in range(min(self.max_skips, count - 1) + 1):
            current = (index + skipped) % count
            try:
                frames, indices = self.source.sample_clip(current, self.sampler, rng)
            except CORRUPT_DATA_ERRORS as e:
                _LOG.warning("skipping corrupt video %d (%s): %s", current, type(e).__name__, e)
                continue
            return self._example(frames, indices, current, skipped, rng)
        raise image_io.DataError(
            f"{skipped + 1} videos in a row from index {index} failed to decode; the training "
            "data looks broken (see the warnings above)"
        )

    def _example(
        self,
        frames: np.ndarray,
        indices: np.ndarray,
        video_index: int,
        skipped: int,
        rng: np.random.Generator,
    ) -> dict[str, Any]:
        example: dict[str, Any] = {}
        out = frames if self.transform is None else self.transform(frames, rng)
        if isinstance(out, dict):
            example.update({k: v for k, v in out.items() if k != "clip"})
            if "clip" in out:
                example["video"] = out["clip"]
        else:
            example["video"] = out
        example["frame_indices"] = np.asarray(indices, np.int32)
        example["video_index"] = np.int32(video_index)
        example["skipped"] = np.int32(skipped)
        return example


def _check_batch(global_batch_size: int, shard_count: int, shard_index: int) -> int:
    if global_batch_size < 1 or global_batch_size % shard_count:
        raise ValueError(
            f"config.data.batch_size = {global_batch_size}: the global batch size must be a "
            f"positive multiple of the number of hosts ({shard_count})"
        )
    if not 0 <= shard_index < shard_count:
        raise ValueError(f"shard_index {shard_index}: expected 0 <= shard_index < {shard_count}")
    return global_batch_size // shard_count


def make_train_dataset(
    source: clip_sources.VideoSource,
    *,
    sampler: clip_sampling.ClipSampler,
    transform: transforms.Transform | None,
    global_batch_size: int,
    seed: int,
    shard_index: int | None = None,
    shard_count: int | None = None,
    num_workers: int = 0,
    read_threads: int = DEFAULT_READ_THREADS,
    prefetch_batches: int = DEFAULT_PREFETCH_BATCHES,
    drop_remainder: bool = True,
    num_epochs: int | None = None,
) -> grain.IterDataset:
    """The training dataset of this host (see `make_train_iterator` for the arguments)."""
    return make_loader_dataset(
        len(source),
        ClipLoader(source, sampler, transform),
        global_batch_size=global_batch_size,
        seed=seed,
        shard_index=shard_index,
        shard_count=shard_count,
        num_workers=num_workers,
        read_threads=read_threads,
        prefetch_batches=prefetch_batches,
        drop_remainder=drop_remainder,
        num_epochs=num_epochs,
    )


def make_loader_dataset(
    num_items: int,
    loader: Callable[[int, np.random.Generator], dict[str, Any]],
    *,
    global_batch_size: int,
    seed: int,
    shard_index: int | None = None,
    shard_count: int | None = None,
    num_workers: int = 0,
    read_threads: int = DEFAULT_READ_THREADS,
    prefetch_batches: int = DEFAULT_PREFETCH_BATCHES,
    drop_remainder: bool = True,
    num_epochs: int | None = None,
) -> grain.IterDataset:
    """This host's shard of items 0..num_items-1, shuffled, mapped by `loader`, batched.

    The generic half of `make_train_dataset`: `loader(index, rng)` turns an item index (a
    video, a still image) into one example with the example's own RNG; the other arguments are
    `make_train_iterator`'s.
    """
    if shard_index is None or shard_count is None:
        import jax  # only for the defaults: tests and tools build pipelines without it

        shard_index = jax.process_index() if shard_index is None else shard_index
        shard_count = jax.process_count() if shard_count is None else shard_count
    per_host = _check_batch(global_batch_size, shard_count, shard_index)
    ds = grain.MapDataset.range(num_items)[shard_index::shard_count]
    if len(ds) == 0:
        raise ValueError(
            f"host {shard_index} of {shard_count} gets no item: the source has only {num_items}"
        )
    ds = ds.shuffle(seed=seed).repeat(num_epochs)
    # Each host draws its own augmentations: the map seed mixes in the shard index.
    map_seed = int(np.random.SeedSequence([seed, shard_index]).generate_state(1)[0])
    ds = ds.random_map(loader, seed=map_seed)
    ds = ds.batch(per_host, drop_remainder=drop_remainder)
    if read_threads < 1 or prefetch_batches < 1:
        raise ValueError(
            f"config.data.read_threads = {read_threads}, config.data.prefetch_batches = "
            f"{prefetch_batches}: expected both >= 1"
        )
    # grain's own default (16 threads, 500 elements ahead) would hold 500 *batches* in every
    # process that reads (each worker, or the trainer itself) and make the first batch wait for
    # 16 concurrent ones: seconds to minutes before the first step, gigabytes per worker.
    read_options = grain.ReadOptions(
        num_threads=read_threads, prefetch_buffer_size=prefetch_batches
    )
    iter_ds = ds.to_iter_dataset(read_options)
    if num_workers > 0:
        # grain's worker processes read absl flags; outside `absl.app.run` (tests, notebooks)
        # nothing has parsed them, so take their defaults.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        iter_ds = iter_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iter_ds


def make_train_iterator(
    source: clip_sources.VideoSource,
    *,
    sampler: clip_sampling.ClipSampler,
    transform: transforms.Transform | None,
    global_batch_size: int,
    seed: int,
    shard_index: int | None = None,
    shard_count: int | None = None,
    num_workers: int = 0,
    read_threads: int = DEFAULT_READ_THREADS,
    prefetch_batches: int = DEFAULT_PREFETCH_BATCHES,
    drop_remainder: bool = True,
    num_epochs: int | None = None,
) -> grain.DatasetIterator:
    """An iterator over this host's training batches.

    Args:
      source: the videos (`clip_sources`).
      sampler: which frames make a clip.
      transform: augmentation of a clip, called with a per-example RNG.
      global_batch_size: examples per step over all hosts (`config.data.batch_size`).
      seed: shuffling and augmentation seed.
      shard_index: this host's shard; default `jax.process_index()`.
      shard_count: number of shards; default `jax.process_count()`.
      num_workers: grain worker processes (0: decode in this process).
      read_threads: threads that build batches in each reading process (every worker, or this
        process with no worker).
      prefetch_batches: batches each reading process builds ahead.
      drop_remainder: drop a last incomplete batch (only with `num_epochs`).
      num_epochs: passes over the data; None repeats forever.

    Returns:
      an iterator of dicts of numpy arrays with a leading batch axis of
      `global_batch_size // shard_count`: 'video' [B, T, H, W, 3] (or what `transform`
      returns), 'frame_indices' [B, T], 'video_index' [B], 'skipped' [B]. Its `get_state()` /
      `set_state()` save and restore the position.

    Raises:
      ValueError: `global_batch_size` not a multiple of `shard_count`, or a shard with no video.
    """
    return iter(
        make_train_dataset(
            source,
            sampler=sampler,
            transform=transform,
            global_batch_size=global_batch_size,
            seed=seed,
            shard_index=shard_index,
            shard_count=shard_count,
            num_workers=num_workers,
            read_threads=read_threads,
            prefetch_batches=prefetch_batches,
            drop_remainder=drop_remainder,
            num_epochs=num_epochs,
        )
    )


def reading_options(data_config: Any) -> dict[str, int]:
    """`make_train_iterator`'s process and thread arguments from `config.data`.

    Configs that predate `read_threads` / `prefetch_batches` get the defaults.
    """
    return {
        "num_workers": int(data_config.num_workers),
        "read_threads": int(data_config.get("read_threads", DEFAULT_READ_THREADS)),
        "prefetch_batches": int(data_config.get("prefetch_batches", DEFAULT_PREFETCH_BATCHES)),
    }


def shard_indices(num_videos: int, shard_index: int, shard_count: int) -> list[int]:
    """Video indices of a shard (what `make_train_dataset` gives a host), for tests and tools."""
    return list(range(num_videos))[shard_index::shard_count]
