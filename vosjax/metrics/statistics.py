"""Mean, recall and decay of a per-frame measure, the official DAVIS `db_statistics`.

- mean: nanmean over frames.
- recall: fraction of frames whose value is strictly above 0.5 (nanmean of v > 0.5).
- decay: the frames are split into 4 bins at `ids = uint8(round(linspace(1, n, 5) + 1e-10) - 1)`;
  bin i is `v[ids[i] : ids[i + 1] + 1]` (neighbouring bins share their end frame), and
  decay = mean(bin 0) - mean(bin 3). The uint8 cast is the toolkit's, kept for equal numbers:
  above 256 scored frames the ids wrap around, as there.
"""

from __future__ import annotations

import warnings

import numpy as np

RECALL_THRESHOLD = 0.5
NUM_DECAY_BINS = 4


def _nanmean(values: np.ndarray) -> float:
    # An empty or all-NaN input is NaN, as in the toolkit, without numpy's warning.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        return float(np.nanmean(values))


def mean(values: np.ndarray) -> float:
    """Mean of per-frame values [N], NaNs ignored."""
    return _nanmean(np.asarray(values, np.float64))


def recall(values: np.ndarray, threshold: float = RECALL_THRESHOLD) -> float:
    """Fraction of the frames [N] whose value is strictly above `threshold`."""
    return _nanmean(np.asarray(values, np.float64) > threshold)


def decay_bins(n: int) -> list[tuple[int, int]]:
    """The frame ranges of the 4 decay bins for a sequence of n scored frames.

    Args:
      n: number of per-frame values.

    Returns:
      4 (start, stop) pairs: bin i is `values[start:stop]`.
    """
    with warnings.catch_warnings():
        # n > 256 overflows uint8 exactly as in the toolkit; numpy may warn about the cast.
        warnings.simplefilter("ignore", category=RuntimeWarning)
        ids = (np.round(np.linspace(1, n, NUM_DECAY_BINS + 1) + 1e-10) - 1).astype(np.uint8)
    return [(int(ids[i]), int(ids[i + 1]) + 1) for i in range(NUM_DECAY_BINS)]


def decay(values: np.ndarray) -> float:
    """Mean of the first decay bin minus mean of the last one (see `decay_bins`)."""
    values = np.asarray(values, np.float64)
    bins = decay_bins(len(values))
    first, last = bins[0], bins[-1]
    return _nanmean(values[first[0] : first[1]]) - _nanmean(values[last[0] : last[1]])


def db_statistics(values: np.ndarray) -> tuple[float, float, float]:
    """(mean, recall, decay) of per-frame values [N], the toolkit's `db_statistics`."""
    return mean(values), recall(values), decay(values)
