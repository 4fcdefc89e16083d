"""Tests of the grain training pipeline: determinism, resumption, sharding, corrupt files."""

import logging
import pathlib
import time

import numpy as np
import pytest
from PIL import Image

from vosjax.data import clip_sampling, clip_sources, pipeline, transforms

NUM_VIDEOS = 6


def _make_source(root: pathlib.Path, bad_video: int | None = None) -> clip_sources.VideoSource:
    """NUM_VIDEOS folders of 5 JPEG frames; frame i of video v has red 40 v, green 40 i."""
    folders = []
    for v in range(NUM_VIDEOS):
        folder = root / f"video{v}"
        folder.mkdir(parents=True)
        for i in range(5):
            frame = np.zeros((16, 20, 3), np.uint8)
            frame[..., 0], frame[..., 1] = 40 * v, 40 * i
            Image.fromarray(frame).save(folder / f"{i:05d}.jpg", quality=95)
        if v == bad_video:
            path = folder / "00002.jpg"
            path.write_bytes(path.read_bytes()[:300])  # truncated JPEG
        folders.append(folder)
    return clip_sources.FrameFolderSource(folders)


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> clip_sources.VideoSource:
    return _make_source(tmp_path_factory.mktemp("videos"))


SAMPLER = clip_sampling.ClipSampler(3, frame_gap=2, random_gaps=True)
TRANSFORM = transforms.Compose(
    (transforms.RandomResizedCrop(8, scale=(0.3, 1.0)), transforms.HorizontalFlip())
)


def _iterator(source, **kwargs):
    args = dict(
        sampler=SAMPLER, transform=TRANSFORM, global_batch_size=4, seed=3, shard_index=0,
        shard_count=1, num_workers=0,
    )  # fmt: skip
    args.update(kwargs)
    return pipeline.make_train_iterator(source, **args)


def _take(iterator, n: int) -> list[dict[str, np.ndarray]]:
    return [next(iterator) for _ in range(n)]


def _assert_same(a: list[dict], b: list[dict]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])


def test_batches_hold_the_sampled_frames(source):
    batch = next(_iterator(source, transform=None))
    assert batch["video"].shape == (4, 3, 16, 20, 3) and batch["video"].dtype == np.uint8
    assert batch["frame_indices"].shape == (4, 3)
    # Decoded JPEG colours identify the video and the frame of every clip frame.
    red = batch["video"][..., 0].mean(axis=(2, 3))
    green = batch["video"][..., 1].mean(axis=(2, 3))
    np.testing.assert_allclose(
        red, 40 * np.broadcast_to(batch["video_index"][:, None], (4, 3)), atol=3
    )
    np.testing.assert_allclose(green, 40 * batch["frame_indices"], atol=3)
    np.testing.assert_array_equal(batch["skipped"], 0)


def test_same_seed_same_batches_and_epochs_cover_every_video(source):
    a, b = _take(_iterator(source), 6), _take(_iterator(source), 6)
    _assert_same(a, b)
    other = _take(_iterator(source, seed=4), 6)
    assert not all(np.array_equal(x["video"], y["video"]) for x, y in zip(a, other, strict=True))
    order = np.concatenate([x["video_index"] for x in a])  # 24 = 4 epochs of 6 videos
    for epoch in range(4):
        assert sorted(order[6 * epoch : 6 * epoch + 6]) == list(range(NUM_VIDEOS))
    assert not np.array_equal(order[:6], order[6:12])  # reshuffled each epoch


def test_resume_from_state_gives_the_same_batches(source):
    iterator = _iterator(source)
    _take(iterator, 3)
    state = iterator.get_state()
    expected = _take(iterator, 2)
    fresh = _iterator(source)
    fresh.set_state(state)
    _assert_same(_take(fresh, 2), expected)


@pytest.mark.slow
def test_workers_give_the_same_batches_and_resume(source):
    expected = _take(_iterator(source), 5)
    iterator = _iterator(source, num_workers=2)
    first = _take(iterator, 3)
    state = iterator.get_state()
    rest = _take(iterator, 2)
    _assert_same(first + rest, expected)  # independent of num_workers
    fresh = _iterator(source, num_workers=2)
    fresh.set_state(state)
    _assert_same(_take(fresh, 2), rest)


def test_shards_of_two_hosts_are_disjoint_and_cover_the_data(source):
    seen = []
    for shard in range(2):
        iterator = _iterator(
            source, global_batch_size=2, shard_index=shard, shard_count=2, num_epochs=1,
            transform=None,
        )  # fmt: skip
        indices = np.concatenate([b["video_index"] for b in iterator])
        assert len(indices) == NUM_VIDEOS // 2 and len(set(indices.tolist())) == len(indices)
        assert sorted(indices.tolist()) == pipeline.shard_indices(NUM_VIDEOS, shard, 2)
        seen.append(set(indices.tolist()))
    assert not seen[0] & seen[1] and seen[0] | seen[1] == set(range(NUM_VIDEOS))


def test_global_batch_size_must_divide_by_hosts(source):
    with pytest.raises(ValueError, match=r"config\.data\.batch_size = 6"):
        _iterator(source, global_batch_size=6, shard_count=4)


def test_corrupt_video_is_skipped_counted_and_logged(tmp_path, caplog):
    source = _make_source(tmp_path, bad_video=2)
    # 5 consecutive frames: every clip of video 2 reads its truncated frame.
    sampler = clip_sampling.ClipSampler(5, mode="consecutive")
    with caplog.at_level(logging.WARNING, logger=pipeline.__name__):
        iterator = _iterator(source, sampler=sampler, transform=None, global_batch_size=3)
        batches = _take(iterator, 4)  # 2 epochs
    videos = np.concatenate([b["video_index"] for b in batches])
    skipped = np.concatenate([b["skipped"] for b in batches])
    # Each visit of video 2 gives video 3 instead, with skipped = 1.
    assert 2 not in videos.tolist()
    assert skipped.sum() == 2 and set(videos[skipped == 1].tolist()) == {3}
    assert sorted(videos[skipped == 0].tolist()) == [0, 0, 1, 1, 3, 3, 4, 4, 5, 5]
    # (grain reads ahead, so the warnings may also come from examples of later batches.)
    assert sum("skipping corrupt video 2" in r.getMessage() for r in caplog.records) >= 2
    assert any("00002.jpg" in r.getMessage() for r in caplog.records)


def test_affine_params_are_batched(source):
    affine = transforms.RandomAffine(size=(8, 8))
    batch = next(_iterator(source, transform=affine))
    assert batch["video"].shape == (4, 3, 8, 8, 3)
    assert batch["params"]["affine"].shape == (4, 3, 2, 3)


def test_read_threads_and_prefetch_keep_the_batches(source):
    reference = _take(_iterator(source), 4)
    _assert_same(_take(_iterator(source, read_threads=1, prefetch_batches=1), 4), reference)
    _assert_same(_take(_iterator(source, read_threads=4, prefetch_batches=8), 4), reference)


def test_prefetch_bounds_the_batches_built_ahead():
    # grain's default read options build 500 elements (here: batches) ahead; ours build
    # `prefetch_batches` (+ those the threads are working on).
    calls = []

    def loader(index: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        calls.append(index)
        return {"x": np.full((2,), index, np.int32)}

    dataset = pipeline.make_loader_dataset(
        5, loader, global_batch_size=2, seed=0, shard_index=0, shard_count=1,
        read_threads=1, prefetch_batches=3,
    )  # fmt: skip
    iterator = iter(dataset)
    next(iterator)
    time.sleep(0.5)  # time for the read thread to fill its buffer
    assert 2 * 3 <= len(calls) <= 2 * (1 + 3 + 1)


@pytest.mark.parametrize("field", ["read_threads", "prefetch_batches"])
def test_read_options_below_one_name_the_field(source, field):
    with pytest.raises(ValueError, match=f"config.data.{field} = 0"):
        _iterator(source, **{field: 0})


def test_reading_options_from_config():
    import ml_collections

    data = ml_collections.ConfigDict({"num_workers": 3, "read_threads": 1, "prefetch_batches": 6})
    assert pipeline.reading_options(data) == {
        "num_workers": 3, "read_threads": 1, "prefetch_batches": 6,
    }  # fmt: skip
    older = ml_collections.ConfigDict({"num_workers": 0})  # a config without the new fields
    assert pipeline.reading_options(older)["prefetch_batches"] == pipeline.DEFAULT_PREFETCH_BATCHES
