"""Connectivity enforcement for superpixel label maps.

`relabel_connected` turns any integer label map into one where every label is a single
4-connected region, regions smaller than `min_size` pixels are merged into a neighbour, and the
labels are 0..N-1 numbered by first appearance in raster order.

How, without a loop over pixels:
1. Split labels into 4-connected pieces. A (2H-1) x (2W-1) "lattice" image holds the pixels at
   even (row, col) positions and, between two 4-adjacent pixels, a link cell that is on when
   their labels are equal (diagonal cells stay off). One binary 4-connected labelling of the
   lattice (OpenCV) then gives exactly the same-label 4-connected components.
2. Merge small pieces on the region adjacency graph (pairs of touching pieces, weighted by the
   length of their shared border), never on the image again. Each round, every piece smaller
   than `min_size` moves into the neighbour with the longest shared border among the neighbours
   that rank higher in (size, first appearance); ranking strictly upwards means the moves form no
   cycle, and the smallest piece always has a higher-ranked neighbour, so every round makes
   progress. A piece only ever joins a piece it touches, so merged regions stay 4-connected.
"""

from __future__ import annotations

import cv2
import numpy as np


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.size == 0:
        raise ValueError(f"labels: expected a non-empty [H, W] array, got shape {labels.shape}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == np.bool_):
        raise ValueError(f"labels: expected an integer array, got dtype {labels.dtype}")
    return labels


def num_segments(labels: np.ndarray) -> int:
    """The number of distinct labels in a label map.

    Args:
      labels: integer [H, W].

    Returns:
      How many different values `labels` holds.

    Raises:
      ValueError: `labels` is not a non-empty 2-D integer array.
    """
    return int(np.unique(_check_labels(labels)).size)


def _components(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """The same-label 4-connected pieces, numbered 0..n-1 by first appearance in raster order."""
    h, w = labels.shape
    lattice = np.zeros((2 * h - 1, 2 * w - 1), np.uint8)
    lattice[::2, ::2] = 1
    lattice[::2, 1::2] = labels[:, 1:] == labels[:, :-1]
    lattice[1::2, ::2] = labels[1:] == labels[:-1]
    n, lattice_ids = cv2.connectedComponents(lattice, connectivity=4, ltype=cv2.CV_32S)
    comp = lattice_ids[::2, ::2] - 1  # lattice label 0 is the off cells
    n -= 1
    # OpenCV's numbering need not follow raster order (its parallel labelling numbers stripes),
    # so rank the pieces by their first pixel. That pixel differs from its upper and left
    # neighbours (both come earlier in raster order), which leaves few candidates to look at.
    starts = np.ones((h, w), bool)
    starts[1:] = comp[1:] != comp[:-1]
    starts[:, 1:] &= comp[:, 1:] != comp[:, :-1]
    at = np.flatnonzero(starts)  # ascending
    first_comp, first_at = np.unique(comp.ravel()[at], return_index=True)
    first = np.empty(n, np.int64)
    first[first_comp] = at[first_at]
    rank = np.empty(n, np.int32)
    rank[np.argsort(first, kind="stable")] = np.arange(n, dtype=np.int32)
    return rank[comp], n


def _adjacency(
    comp: np.ndarray, n: int, small: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (a, b) of touching pieces with `small[a]`, with their shared border length."""
    horizontal = comp[:, :-1] != comp[:, 1:]
    vertical = comp[:-1] != comp[1:]
    a = np.concatenate([comp[:, :-1][horizontal], comp[:-1][vertical]]).astype(np.int64)
    b = np.concatenate([comp[:, 1:][horizontal], comp[1:][vertical]]).astype(np.int64)
    a, b = np.concatenate([a, b]), np.concatenate([b, a])
    keep = small[a]
    pairs, counts = np.unique(a[keep] * n + b[keep], return_counts=True)
    return pairs // n, pairs % n, counts


def _merge_small(comp: np.ndarray, n: int, min_size: int) -> np.ndarray:
    """Maps every piece to the piece it is merged into (identity for pieces that stay)."""
    sizes0 = np.bincount(comp.ravel(), minlength=n)
    if n == 1 or sizes0.min() >= min_size:
        return np.arange(n)
    # Only pieces that start small can ever be in a small group (groups only grow), so only
    # their borders are needed.
    pair_a, pair_b, pair_len = _adjacency(comp, n, sizes0 < min_size)
    ids = np.arange(n, dtype=np.int64)
    group = np.arange(n)  # piece -> the group (named by one of its pieces) it belongs to
    while True:
        sizes = np.bincount(group, weights=sizes0, minlength=n)
        live = sizes > 0
        small = live & (sizes < min_size)
        if not small.any() or np.count_nonzero(live) <= 1:
            return group
        # Strict total order: bigger first, then earlier first appearance (smaller id).
        key = sizes.astype(np.int64) * n + (n - 1 - ids)
        ga, gb = group[pair_a], group[pair_b]
        keep = (ga != gb) & small[ga]
        ga, gb, length = ga[keep], gb[keep], pair_len[keep]
        keep = key[gb] > key[ga]
        ga, gb, length = ga[keep], gb[keep], length[keep]
        merged, inverse = np.unique(ga * n + gb, return_inverse=True)
        border = np.bincount(inverse, weights=length)
        src, dst = merged // n, merged % n
        order = np.lexsort((border, src))
        src, dst = src[order], dst[order]
        best = np.r_[src[1:] != src[:-1], True]  # the longest border of each source
        target = np.arange(n)
        target[src[best]] = dst[best]
        while True:  # follow chains a -> b -> c; keys increase along them, so no cycles
            jumped = target[target]
            if np.array_equal(jumped, target):
                break
            target = jumped
        group = target[group]


def relabel_connected(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Makes every label one 4-connected region and merges regions below `min_size` pixels.

    Args:
      labels: integer [H, W] label map (any values; a label may cover several disjoint regions).
      min_size: regions with fewer pixels are merged into the touching region with which they
        share the longest border, among those that are larger (or as large and appear earlier);
        0 or 1 merges nothing. A region only stays smaller than this when it is the whole image.

    Returns:
      int32 [H, W] labels 0..N-1, each one 4-connected region, numbered by first appearance in
      raster order.

    Raises:
      ValueError: `labels` is not a non-empty 2-D integer array, or `min_size` < 0.
    """
    labels = _check_labels(labels)
    if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 0:
        raise ValueError(f"min_size: expected an int >= 0, got {min_size!r}")
    comp, n = _components(labels)
    group = _merge_small(comp, n, int(min_size))
    # A merged region is named by its earliest piece, which is where the region first appears.
    first = np.full(n, n, np.int64)
    np.minimum.at(first, group, np.arange(n))
    new_id = np.searchsorted(np.unique(first[group]), first[group]).astype(np.int32)
    return new_id[comp]
