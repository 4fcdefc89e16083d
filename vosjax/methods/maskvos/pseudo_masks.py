"""Mask-VOS space-time clustering: every training video -> M pseudo-mask segments, cached.

The paper's first stage: the encoder's stride-8 keys of all frames of a video, concatenated with a
3-D sinusoidal encoding of (x, y, t), are clustered by k-means into M segments; the cluster map of
each frame is its pseudo mask. Clustering runs in JAX (`vosjax.ops.kmeans`), several videos at
once (vmapped, one video per device).

Cache layout (`cache_root` is chosen by the config; a folder next to the dataset or in the
workdir):
  cache_root/step_<S>/meta.json            written last: its presence marks a complete set
  cache_root/step_<S>/<video>/<frame>.png  uint8 cluster ids [h, w] at stride 8, one per frame
`meta.json` holds the training step whose encoder made the masks and the clustering config, so a
resumed run reuses a set made with the same config and a re-clustering writes a new `step_<S>`.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import pathlib
import shutil
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from vosjax import sharding
from vosjax.data import clip_sources, image_io
from vosjax.ops import kmeans

META = "meta.json"


@dataclasses.dataclass(frozen=True)
class ClusteringConfig:
    """How pseudo masks are made (`config.clustering`).

    Attributes:
      num_clusters: M segments per video (paper 5; the released code 7).
      position_dim: channels of the (x, y, t) sinusoidal encoding (divisible by 6; 0: none).
      position_weight: weight of "far in space-time" against "opposite in appearance"
        (`kmeans.video_points`): larger gives spatially and temporally more compact segments.
      fit_every: fit k-means on every `fit_every`-th frame, then label every frame (code: 8).
      max_iters: Lloyd iterations at most.
      seed: k-means++ seed (video i uses fold_in(seed, i)).
    """

    num_clusters: int = 5
    position_dim: int = 24
    position_weight: float = 1.0
    fit_every: int = 1
    max_iters: int = 50
    seed: int = 0

    def __post_init__(self):
        if self.num_clusters < 2 or self.num_clusters > 255:
            raise ValueError(f"config.clustering.num_clusters={self.num_clusters}: expected 2..255")
        if self.position_dim < 0 or self.position_dim % 6:
            raise ValueError(
                f"config.clustering.position_dim={self.position_dim}: expected a multiple of 6"
            )
        if self.fit_every < 1:
            raise ValueError(f"config.clustering.fit_every={self.fit_every}: expected >= 1")

    @classmethod
    def from_config(cls, config: Any) -> ClusteringConfig:
        return cls(**{f.name: config[f.name] for f in dataclasses.fields(cls) if f.name in config})


def cluster_videos(
    keys: Sequence[np.ndarray], config: ClusteringConfig, video_ids: Sequence[int]
) -> list[np.ndarray]:
    """k-means of several videos at once (padded to one size, one video per device).

    Args:
      keys: per video, float [T_i, h_i, w_i, D] stride-8 keys.
      config: clustering settings.
      video_ids: per video, the id folded into the seed (its index in the dataset), so a video's
        clusters do not depend on which videos share its batch.

    Returns:
      Per video, uint8 [T_i, h_i, w_i] cluster ids.
    """
    points = [
        np.asarray(
            kmeans.video_points(
                jnp.asarray(k),
                position_dim=config.position_dim,
                position_weight=config.position_weight,
            )
        )
        for k in keys
    ]
    fit = [_fit_mask(k.shape, config.fit_every) for k in keys]
    size = max(len(p) for p in points)
    size = -(-size // 4096) * 4096  # bucket the padded size: fewer compilations
    devices = jax.device_count()
    count = -(-len(points) // devices) * devices
    dim = points[0].shape[1]
    padded = np.zeros((count, size, dim), np.float32)
    valid = np.zeros((count, size), bool)
    seeds = np.zeros((count,), np.uint32)
    for i, (p, f) in enumerate(zip(points, fit, strict=True)):
        padded[i, : len(p)] = p
        valid[i, : len(p)] = f
        seeds[i] = video_ids[i]
    mesh = sharding.make_mesh({"data": devices})
    spec = sharding.batch_sharding(mesh)
    padded, valid, seeds = (jax.device_put(x, spec) for x in (padded, valid, seeds))
    labels = _fit_and_assign(
        padded, valid, seeds, jnp.uint32(config.seed), config.num_clusters, config.max_iters
    )
    labels = np.asarray(jax.device_get(labels))
    return [
        labels[i, : len(p)].reshape(k.shape[:3]).astype(np.uint8)
        for i, (p, k) in enumerate(zip(points, keys, strict=True))
    ]


def _fit_mask(shape: tuple[int, ...], fit_every: int) -> np.ndarray:
    """True for the points of every `fit_every`-th frame."""
    t, h, w = shape[:3]
    frames = np.zeros((t, h * w), bool)
    frames[::fit_every] = True
    return frames.reshape(-1)


@functools.partial(jax.jit, static_argnames=("num_clusters", "max_iters"))
def _fit_and_assign(
    points: jax.Array,
    fit: jax.Array,
    video_ids: jax.Array,
    seed: jax.Array,
    num_clusters: int,
    max_iters: int,
) -> jax.Array:
    """[V, N, D] points, [V, N] fit mask, [V] ids -> [V, N] cluster ids (one k-means per video)."""
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(video_ids)
    result = kmeans.batched_kmeans(keys, points, fit, num_clusters, max_iters=max_iters)
    return jax.vmap(kmeans.assign)(points, result.centers)


def encode_video(extract_keys: Callable[[np.ndarray], jax.Array], frames: np.ndarray) -> np.ndarray:
    """uint8 [T, H, W, 3] -> float32 [T, h, w, D] keys, one frame at a time (bounded memory)."""
    return np.stack([np.asarray(extract_keys(frame)) for frame in frames])


def write_masks(folder: pathlib.Path, labels: np.ndarray) -> None:
    """uint8 [T, h, w] -> folder/00000.png ... (the frame index of the video)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, frame in enumerate(labels):
        Image.fromarray(frame, mode="L").save(folder / f"{i:05d}.png")


def read_masks(folder: pathlib.Path, frame_indices: Sequence[int]) -> np.ndarray:
    """The cluster ids of the given frames: uint8 [T, h, w].

    Raises:
      DataError: a mask file is missing or unreadable.
    """
    masks = []
    for i in frame_indices:
        path = folder / f"{int(i):05d}.png"
        try:
            with Image.open(path) as image:
                masks.append(np.asarray(image))
        except (OSError, SyntaxError) as e:
            raise image_io.DataError(f"{path}: pseudo mask missing or unreadable ({e})") from e
    return np.stack(masks)


def find_cached(
    cache_root: image_io.PathLike, config: ClusteringConfig, step: int | None = None
) -> pathlib.Path | None:
    """The complete set made with `config` at `step` (None: the latest such set), if any."""
    root = pathlib.Path(cache_root)
    if not root.is_dir():
        return None
    found = []
    for folder in root.glob("step_*"):
        meta_path = folder / META
        if not meta_path.is_file():
            continue  # incomplete (a run stopped while writing it)
        meta = json.loads(meta_path.read_text())
        if meta.get("config") == dataclasses.asdict(config) and (
            step is None or meta.get("step") == step
        ):
            found.append((int(meta["step"]), folder))
    return max(found)[1] if found else None


def build(
    extract_keys: Callable[[np.ndarray], jax.Array],
    source: clip_sources.VideoSource,
    config: ClusteringConfig,
    cache_root: image_io.PathLike,
    step: int,
    *,
    videos_per_batch: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> pathlib.Path:
    """Clusters every video of `source` with the encoder of training step `step`; caches masks.

    Reuses a complete set of the same step and config if there is one.

    Args:
      extract_keys: uint8 frame [H, W, 3] -> keys [h, w, D] (e.g. correspondence.KeyExtractor).
      source: the training videos (their names become the cache's folder names; videos of the
        same name are one video, clustered once).
      config: clustering settings.
      cache_root: where the sets live.
      step: the training step of the encoder (names the set).
      videos_per_batch: videos clustered at once (default: the device count).
      progress: called with (videos done, videos in all).

    Returns:
      The set's folder, `cache_root/step_<step>`.
    """
    cached = find_cached(cache_root, config, step)
    if cached is not None:
        return cached
    folder = pathlib.Path(cache_root) / f"step_{step}"
    if folder.exists():
        shutil.rmtree(folder)  # an incomplete set, or one of another config
    per_batch = videos_per_batch or jax.device_count()
    all_names = [source.name(i) for i in range(len(source))]
    # A mixed source repeats videos (to weight its parts): each distinct video is clustered once.
    first_index = {}
    for i, name in enumerate(all_names):
        first_index.setdefault(name, i)
    names, unique = list(first_index), list(first_index.values())
    for start in range(0, len(unique), per_batch):
        ids = unique[start : start + per_batch]
        keys = [encode_video(extract_keys, source[i]["video"]) for i in ids]
        for i, labels in zip(ids, cluster_videos(keys, config, ids), strict=True):
            write_masks(folder / all_names[i], labels)
        if progress is not None:
            progress(min(start + per_batch, len(unique)), len(unique))
    meta = {"step": int(step), "config": dataclasses.asdict(config), "videos": names}
    tmp = folder / (META + ".tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    os.replace(tmp, folder / META)
    return folder
