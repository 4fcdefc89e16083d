"""Tests of the Mask-VOS clustering stage: pseudo masks from keys, the cache."""

import json
import pathlib

import numpy as np
import pytest
from PIL import Image

from vosjax.data import clip_sources, image_io
from vosjax.methods.maskvos import pseudo_masks

RED, BLUE = (200, 20, 20), (20, 20, 200)


def _two_region_keys(rng, t, h, w, split):
    """Keys [t, h, w, 8]: columns < split near e0, the rest near e1."""
    keys = 0.05 * rng.normal(size=(t, h, w, 8)).astype(np.float32)
    keys[:, :, :split, 0] += 1.0
    keys[:, :, split:, 1] += 1.0
    return keys


def _is_split(labels, split):
    left, right = labels[..., :split], labels[..., split:]
    return (
        len(np.unique(left)) == 1 and len(np.unique(right)) == 1 and left.flat[0] != right.flat[0]
    )


def test_cluster_videos_finds_the_regions_of_each_video_independently():
    rng = np.random.default_rng(0)
    config = pseudo_masks.ClusteringConfig(num_clusters=2, position_dim=6, position_weight=0.1)
    keys = [_two_region_keys(rng, 3, 4, 6, 2), _two_region_keys(rng, 5, 6, 4, 3)]
    labels = pseudo_masks.cluster_videos(keys, config, video_ids=[0, 1])
    assert [lab.shape for lab in labels] == [(3, 4, 6), (5, 6, 4)]
    assert labels[0].dtype == np.uint8
    assert _is_split(labels[0], 2) and _is_split(labels[1], 3)
    # A video's clusters do not depend on the other videos of its batch.
    alone = pseudo_masks.cluster_videos(keys[1:], config, video_ids=[1])
    np.testing.assert_array_equal(alone[0], labels[1])


def test_fit_every_labels_frames_it_did_not_fit():
    rng = np.random.default_rng(1)
    keys = [_two_region_keys(rng, 9, 4, 6, 3)]
    config = pseudo_masks.ClusteringConfig(num_clusters=2, position_dim=0, fit_every=4)
    labels = pseudo_masks.cluster_videos(keys, config, video_ids=[0])[0]
    assert _is_split(labels, 3)  # frames 1-3 and 5-8 were only assigned, not fitted


def test_position_weight_makes_constant_videos_spatially_compact():
    keys = [np.ones((1, 8, 8, 4), np.float32)]  # no appearance cue at all
    config = pseudo_masks.ClusteringConfig(num_clusters=4, position_dim=12, position_weight=1.0)
    labels = pseudo_masks.cluster_videos(keys, config, video_ids=[0])[0]
    assert len(np.unique(labels)) >= 3  # k-means may leave a cluster empty
    ys, xs = np.mgrid[:8, :8]
    spread = []
    for c in np.unique(labels):
        mask = labels[0] == c
        spread.append(np.mean(np.hypot(ys[mask] - ys[mask].mean(), xs[mask] - xs[mask].mean())))
    # Compact blocks of an 8 x 8 grid: mean distance to the centroid ~2 (a random partition's
    # ~3.7, the whole grid's 3.4).
    assert max(spread) < 2.8


class _ColourKeys:
    """A fake encoder: the mean colour of each 8 x 8 block, counting its calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, frame):
        self.calls += 1
        h, w = frame.shape[0] // 8, frame.shape[1] // 8
        blocks = frame[: h * 8, : w * 8].reshape(h, 8, w, 8, 3).astype(np.float32)
        return blocks.mean(axis=(1, 3)) / 255.0


def _video(folder: pathlib.Path, num_frames: int, split: int) -> None:
    folder.mkdir(parents=True)
    for i in range(num_frames):
        frame = np.zeros((32, 48, 3), np.uint8)
        frame[:, : split * 8] = RED
        frame[:, split * 8 :] = BLUE
        Image.fromarray(frame).save(folder / f"{i:05d}.jpg", quality=95)


def test_build_writes_reuses_and_rebuilds_the_cache(tmp_path):
    _video(tmp_path / "videos" / "a", 4, 2)
    _video(tmp_path / "videos" / "b", 3, 4)
    source = clip_sources.FrameFolderSource([tmp_path / "videos" / "a", tmp_path / "videos" / "b"])
    config = pseudo_masks.ClusteringConfig(num_clusters=2, position_dim=6, position_weight=0.1)
    extract = _ColourKeys()
    cache = tmp_path / "cache"
    folder = pseudo_masks.build(extract, source, config, cache, step=100)
    assert folder == cache / "step_100" and extract.calls == 7
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["step"] == 100 and meta["videos"] == ["a", "b"]
    assert meta["config"]["num_clusters"] == 2
    masks = pseudo_masks.read_masks(folder / "b", [2, 0])
    assert masks.shape == (2, 4, 6) and _is_split(masks, 4)
    assert _is_split(pseudo_masks.read_masks(folder / "a", range(4)), 2)

    # Same step and config: reused without encoding anything.
    assert pseudo_masks.build(extract, source, config, cache, step=100) == folder
    assert extract.calls == 7
    assert pseudo_masks.find_cached(cache, config) == folder
    # A later step is a new set; the latest is found.
    pseudo_masks.build(extract, source, config, cache, step=200)
    assert pseudo_masks.find_cached(cache, config) == cache / "step_200"
    assert pseudo_masks.find_cached(cache, config, step=100) == folder
    # Another config does not match; an incomplete set (no meta.json) is rebuilt.
    other = pseudo_masks.ClusteringConfig(num_clusters=3, position_dim=6)
    assert pseudo_masks.find_cached(cache, other) is None
    (cache / "step_200" / "meta.json").unlink()
    assert pseudo_masks.find_cached(cache, config) == folder
    pseudo_masks.build(extract, source, config, cache, step=200)
    assert extract.calls == 21
    assert pseudo_masks.find_cached(cache, config) == cache / "step_200"


def test_missing_mask_and_bad_config_are_named(tmp_path):
    with pytest.raises(image_io.DataError, match="00003.png"):
        pseudo_masks.read_masks(tmp_path, [3])
    with pytest.raises(ValueError, match="config.clustering.num_clusters=1"):
        pseudo_masks.ClusteringConfig(num_clusters=1)
    with pytest.raises(ValueError, match="config.clustering.position_dim=10"):
        pseudo_masks.ClusteringConfig(position_dim=10)
    with pytest.raises(ValueError, match="config.clustering.fit_every=0"):
        pseudo_masks.ClusteringConfig(fit_every=0)
