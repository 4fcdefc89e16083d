"""Mean, recall and decay (the toolkit's db_statistics) with hand-computed answers."""

import math
import warnings

import numpy as np
import pytest

from vosjax.metrics import statistics


def test_decay_bins_n5():
    # linspace(1, 5, 5) - 1 = [0, 1, 2, 3, 4]; bins share their end frame.
    assert statistics.decay_bins(5) == [(0, 2), (1, 3), (2, 4), (3, 5)]


def test_decay_bins_n48():
    # linspace(1, 48, 5) = [1, 12.75, 24.5, 36.25, 48]; the + 1e-10 rounds 24.5 up to 25
    # (numpy alone rounds half to even: 24), so ids = [0, 12, 24, 35, 47].
    assert statistics.decay_bins(48) == [(0, 13), (12, 25), (24, 36), (35, 48)]


def test_decay_bins_wrap_like_the_toolkit_above_256_frames():
    # ids are cast to uint8 by the toolkit: 299 wraps to 43, so the last bin is empty (NaN).
    assert statistics.decay_bins(300)[-1] == (224, 44)
    assert math.isnan(statistics.decay(np.ones(300)))


def test_statistics_by_hand():
    values = np.array([1.0, 0.5, 0.6, 0.2, 0.0])
    assert statistics.mean(values) == pytest.approx(0.46)
    assert statistics.recall(values) == pytest.approx(0.4)  # 0.5 is not > 0.5
    # bin 0 = [1, 0.5] -> 0.75, bin 3 = [0.2, 0] -> 0.1.
    assert statistics.decay(values) == pytest.approx(0.65)
    assert statistics.db_statistics(values) == pytest.approx((0.46, 0.4, 0.65))


def test_decay_n48_by_hand():
    values = np.zeros(48)
    values[:13] = 1.0  # exactly bin 0
    values[35:] = 0.25  # exactly bin 3
    assert statistics.decay(values) == pytest.approx(0.75)
    values[13] = 1.0  # frame 13 is in bins 1 and 2 only
    assert statistics.decay(values) == pytest.approx(0.75)
    values[12] = 0.0  # frame 12 is the shared end of bin 0
    assert statistics.decay(values) == pytest.approx(12 / 13 - 0.25)


def test_nan_values_are_ignored():
    values = np.array([1.0, np.nan, 0.0, 1.0, 1.0])
    assert statistics.mean(values) == pytest.approx(0.75)
    # Recall is the nanmean of (v > 0.5): NaN > 0.5 is False, so it counts as a miss.
    assert statistics.recall(values) == pytest.approx(0.6)
    assert statistics.decay(values) == pytest.approx(1.0 - 1.0)


def test_empty_input_is_nan_without_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert all(math.isnan(v) for v in statistics.db_statistics(np.zeros(0)))
