"""Tests of ClipSampler: the indices of each mode and of short videos."""

import numpy as np
import pytest

from vosjax.data import clip_sampling


def _draws(sampler: clip_sampling.ClipSampler, length: int, n: int = 300) -> np.ndarray:
    rng = np.random.default_rng(0)
    return np.stack([sampler.indices(length, rng) for _ in range(n)])


def test_random_mode_fixed_gap_covers_every_start():
    draws = _draws(clip_sampling.ClipSampler(4, frame_gap=3), length=20)
    np.testing.assert_array_equal(np.diff(draws, axis=1), 3)
    # Span 10: starts 0..10, all drawn, last index at most 19.
    assert set(draws[:, 0].tolist()) == set(range(11))
    assert draws.max() == 19


def test_consecutive_mode_ignores_gap():
    draws = _draws(clip_sampling.ClipSampler(5, frame_gap=4, mode="consecutive"), length=12)
    np.testing.assert_array_equal(draws - draws[:, :1], np.tile(np.arange(5), (len(draws), 1)))
    assert set(draws[:, 0].tolist()) == set(range(8))


def test_random_gaps_up_to_the_max_gap():
    draws = _draws(clip_sampling.ClipSampler(4, frame_gap=5, random_gaps=True), length=40)
    gaps = np.diff(draws, axis=1)
    assert set(gaps.ravel().tolist()) == {1, 2, 3, 4, 5}
    assert draws.max() <= 39 and draws.min() >= 0


def test_short_video_shrinks_the_gap_then_repeats_the_last_frame():
    sampler = clip_sampling.ClipSampler(4, frame_gap=5)
    rng = np.random.default_rng(0)
    np.testing.assert_array_equal(sampler.indices(10, rng), [0, 3, 6, 9])  # largest gap: 3
    np.testing.assert_array_equal(sampler.indices(3, rng), [0, 1, 2, 2])
    np.testing.assert_array_equal(sampler.indices(1, rng), [0, 0, 0, 0])
    random_gaps = clip_sampling.ClipSampler(4, frame_gap=5, random_gaps=True)
    assert _draws(random_gaps, length=10).max() <= 9


def test_short_video_repeat_last_keeps_the_gap():
    sampler = clip_sampling.ClipSampler(4, frame_gap=5, short_video="repeat_last")
    np.testing.assert_array_equal(sampler.indices(10, np.random.default_rng(0)), [0, 5, 9, 9])


def test_permute_reorders_the_same_frames():
    plain = clip_sampling.ClipSampler(6, frame_gap=2)
    permuted = clip_sampling.ClipSampler(6, frame_gap=2, permute=True)
    orders = set()
    for seed in range(20):
        p = permuted.indices(50, np.random.default_rng(seed))
        np.testing.assert_array_equal(np.sort(p), plain.indices(50, np.random.default_rng(seed)))
        orders.add(tuple(np.argsort(p)))
    assert len(orders) > 10


def test_same_seed_same_indices():
    sampler = clip_sampling.ClipSampler(8, frame_gap=3, random_gaps=True, permute=True)
    a = [sampler.indices(100, np.random.default_rng(7)) for _ in range(2)]
    np.testing.assert_array_equal(a[0], a[1])


def test_bad_settings_raise():
    with pytest.raises(ValueError, match="ClipSampler.mode"):
        clip_sampling.ClipSampler(4, mode="strided")
    with pytest.raises(ValueError, match="ClipSampler.frame_gap"):
        clip_sampling.ClipSampler(4, frame_gap=0)
    with pytest.raises(ValueError, match="short_video"):
        clip_sampling.ClipSampler(4, short_video="pad")
    with pytest.raises(ValueError, match="at least 1 frame"):
        clip_sampling.ClipSampler(4).indices(0, np.random.default_rng(0))
