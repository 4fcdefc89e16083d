"""SLIC's connectivity enforcement, pixel-exact with scikit-image's (the SHLS training labels).

scikit-image (`_enforce_label_connectivity_cython`, start_label=0) scans the pixels in raster
order; at every pixel that has no new label yet it runs a breadth-first search over the
4-connected pixels of the same old label that have none either (neighbours looked at in the
order +x, -x, +y, -y), which gives the next new label to at most `max_size` of them. A piece
smaller than `min_size` is instead given the new label of `adjacent`: the last already-labelled
neighbour (with a label other than the piece's own) that the search met, or, with no such
neighbour, the label the next piece will get, so that it joins whatever piece comes next in
raster order, touching or not. A piece that reaches `max_size` stops growing there; the pixels
it left are picked up later in the scan as new pieces.

This port gets the same result without a loop over all pixels: the same-label 4-connected
components are found at once (an OpenCV labelling of a lattice image), a normal-sized component
(min_size <= size < max_size) takes the next label whole, and only components below `min_size`
(to know which neighbour the search meets last) or at `max_size` and above (to know where the
search stops) are searched pixel by pixel, in the same order as scikit-image. Pieces are handled
in the raster order of their first pixel, which is the order in which the scan meets them.
"""

from __future__ import annotations

import heapq

import cv2
import numpy as np


def _check_labels(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.size == 0:
        raise ValueError(f"labels: expected a non-empty [H, W] array, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels: expected an integer array, got dtype {labels.dtype}")
    return labels


def components(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """The same-label 4-connected pieces of a label map, ids 0..n-1 in no particular order.

    A (2H-1) x (2W-1) lattice holds the pixels at even (row, col) positions and, between two
    4-adjacent pixels, a link cell that is on when their labels are equal; one binary
    4-connected labelling of the lattice gives the same-label components.
    """
    labels = _check_labels(labels)
    h, w = labels.shape
    lattice = np.zeros((2 * h - 1, 2 * w - 1), np.uint8)
    lattice[::2, ::2] = 1
    lattice[::2, 1::2] = labels[:, 1:] == labels[:, :-1]
    lattice[1::2, ::2] = labels[1:] == labels[:-1]
    n, ids = cv2.connectedComponents(lattice, connectivity=4, ltype=cv2.CV_32S)
    return ids[::2, ::2] - 1, n - 1


def _search(
    start: int,
    member: np.ndarray,
    out: np.ndarray,
    new_label: int,
    width: int,
    limit: int,
) -> tuple[list[int], int]:
    """scikit-image's breadth-first search from flat pixel `start` over the unlabelled pixels
    with `member` True (one component), stopping at `limit` pixels.

    Returns:
      (the pixels taken, in search order; the last labelled neighbour other than `new_label`
      met, or `new_label` if none). Writes `new_label` into `out` for the pixels taken.
    """
    height = member.size // width
    taken = [start]
    out[start] = new_label
    adjacent = new_label
    visited = 0
    while visited < len(taken) < limit:
        p = taken[visited]
        y, x = divmod(p, width)
        for q, inside in (
            (p + 1, x + 1 < width),
            (p - 1, x > 0),
            (p + width, y + 1 < height),
            (p - width, y > 0),
        ):
            if not inside:
                continue
            if member[q] and out[q] < 0:
                out[q] = new_label
                taken.append(q)
                if len(taken) >= limit:
                    break
            elif out[q] >= 0 and out[q] != new_label:
                adjacent = int(out[q])
        visited += 1
    return taken, adjacent


def enforce_connectivity(labels: np.ndarray, min_size: int, max_size: int) -> np.ndarray:
    """scikit-image's SLIC connectivity enforcement (start_label=0), pixel for pixel.

    Args:
      labels: integer [H, W] label map; negative values are "no label" and stay -1.
      min_size: pieces with fewer pixels take the label of a neighbour (see the module doc).
      max_size: no new label is given to more than this many pixels by one search (>= 1).

    Returns:
      int32 [H, W] labels 0..N-1, numbered in the raster order of the pieces' first pixels.

    Raises:
      ValueError: `labels` is not a non-empty 2-D integer array, or the sizes are bad.
    """
    labels = _check_labels(labels)
    for name, value in (("min_size", min_size), ("max_size", max_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{name}: expected an int >= 0, got {value!r}")
    if max_size < 1:
        raise ValueError(f"max_size: expected an int >= 1, got {max_size}")
    h, w = labels.shape
    comp, n = components(labels)
    comp = comp.ravel()
    valid = labels.ravel() >= 0
    comp = np.where(valid, comp, -1)
    order = np.argsort(comp, kind="stable")  # pixels of each component, in raster order
    bounds = np.searchsorted(comp[order], np.arange(n + 1))
    out = np.full(h * w, -1, np.int64)

    heap = [(int(order[bounds[c]]), c) for c in range(n) if bounds[c + 1] > bounds[c]]
    heap = [item for item in heap if valid[item[0]]]
    heapq.heapify(heap)
    remainder: dict[int, np.ndarray] = {}  # piece id -> its pixels, for split components
    next_id = n
    new_label = 0
    while heap:
        start, piece = heapq.heappop(heap)
        pixels = (
            remainder.pop(piece) if piece in remainder else order[bounds[piece] : bounds[piece + 1]]
        )
        if min_size <= pixels.size < max_size:
            out[pixels] = new_label
            new_label += 1
            continue
        member = np.zeros(h * w, bool)
        member[pixels] = True
        taken, adjacent = _search(start, member, out, new_label, w, max_size)
        if len(taken) < min_size:
            out[taken] = adjacent
            continue
        new_label += 1
        if len(taken) < pixels.size:
            # The search stopped at max_size: the rest of the component splits into pieces
            # that the scan meets later, each at its first pixel.
            rest = np.zeros(h * w, np.uint8)
            rest[pixels[out[pixels] < 0]] = 1
            count, ids = cv2.connectedComponents(rest.reshape(h, w), connectivity=4)
            ids = ids.ravel()
            left = pixels[out[pixels] < 0]
            piece_of = ids[left]
            for k in range(1, count):
                mine = left[piece_of == k]
                remainder[next_id] = mine
                heapq.heappush(heap, (int(mine[0]), next_id))
                next_id += 1
    return out.reshape(h, w).astype(np.int32)


def num_segments(labels: np.ndarray) -> int:
    """The number of distinct non-negative labels in a label map."""
    labels = _check_labels(labels)
    return int(np.unique(labels[labels >= 0]).size)
