"""Boundary accuracy F, exactly as the official DAVIS toolkit's `db_eval_boundary` computes it.

- Boundary map (`seg2bmap`): pixel p is on the boundary when it differs from its east, south or
  south-east neighbour; on the last row only the east neighbour counts, on the last column only
  the south one, and the bottom-right pixel is never a boundary.
- Tolerance: both boundaries are dilated with a disk of radius
  `ceil(0.008 * ||(H, W)||)` pixels (8 at 480x854, 9 at 480x910), the set of offsets (i, j) with
  i^2 + j^2 <= r^2 (scikit-image's `disk`), using `cv2.dilate` like the toolkit.
- precision = |B_pred & dil(B_gt)| / |B_pred|, recall = |B_gt & dil(B_pred)| / |B_gt|;
  no boundary on either side gives P = R = 1; only a ground-truth boundary gives P = 1, R = 0;
  only a predicted one P = 0, R = 1. F = 2PR / (P + R), or 0 when P + R = 0.

Speed without changing a number: every boundary pixel of a mask lies in the mask's bounding box
grown by one pixel up and left, and dilation is only read at boundary pixels, so each object is
scored on the crop that holds both of its masks instead of the whole frame.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np

BOUND_TH = 0.008


@functools.lru_cache(maxsize=16)
def disk(radius: int) -> np.ndarray:
    """The disk structuring element of scikit-image (`skimage.morphology.disk`).

    Args:
      radius: r >= 0.

    Returns:
      uint8 [2r + 1, 2r + 1]: 1 where i^2 + j^2 <= r^2 for offsets i, j in -r..r.
    """
    offsets = np.arange(-radius, radius + 1)
    element = (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2).astype(np.uint8)
    element.flags.writeable = False
    return element


def boundary_radius(height: int, width: int, bound_th: float = BOUND_TH) -> int:
    """Dilation radius in pixels: `bound_th` itself if >= 1, else ceil(bound_th * ||(H, W)||)."""
    if bound_th >= 1:
        return int(bound_th)
    return int(np.ceil(bound_th * np.linalg.norm((height, width))))


def seg2bmap(mask: np.ndarray) -> np.ndarray:
    """Boundary map of a binary mask, the toolkit's `_seg2bmap`.

    Args:
      mask: [H, W]; any non-zero value is foreground.

    Returns:
      bool [H, W]: True on boundary pixels (see the module docstring for the rule).
    """
    seg = np.asarray(mask).astype(bool)
    if seg.ndim != 2:
        raise ValueError(f"seg2bmap: expected a [H, W] mask, got shape {seg.shape}")
    bmap = np.zeros_like(seg)
    here = seg[:-1, :-1]
    bmap[:-1, :-1] = (here ^ seg[:-1, 1:]) | (here ^ seg[1:, :-1]) | (here ^ seg[1:, 1:])
    bmap[-1, :-1] = seg[-1, :-1] ^ seg[-1, 1:]
    bmap[:-1, -1] = seg[:-1, -1] ^ seg[1:, -1]
    return bmap


def f_from_counts(n_pred: int, n_gt: int, pred_matched: int, gt_matched: int) -> float:
    """F from boundary pixel counts, with the toolkit's degenerate cases.

    Args:
      n_pred: |B_pred|, predicted boundary pixels.
      n_gt: |B_gt|, ground-truth boundary pixels.
      pred_matched: |B_pred & dil(B_gt)|.
      gt_matched: |B_gt & dil(B_pred)|.
    """
    if n_pred == 0 and n_gt > 0:
        precision, recall = 1.0, 0.0
    elif n_pred > 0 and n_gt == 0:
        precision, recall = 0.0, 1.0
    elif n_pred == 0 and n_gt == 0:
        precision, recall = 1.0, 1.0
    else:
        precision = pred_matched / float(n_pred)
        recall = gt_matched / float(n_gt)
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def crop_f(gt: np.ndarray, pred: np.ndarray, kernel: np.ndarray) -> float:
    """F of two bool masks [h, w] that hold every boundary pixel of both masks.

    That is the whole frame, or a crop from `object_window`: boundary maps and dilations on
    such a crop equal those of the whole frame at every pixel that is counted.

    Args:
      gt: bool [h, w] ground-truth mask.
      pred: bool [h, w] predicted mask.
      kernel: `disk(radius)` with the radius of the whole frame.
    """
    gt_b = seg2bmap(gt)
    pred_b = seg2bmap(pred)
    n_gt = int(np.count_nonzero(gt_b))
    n_pred = int(np.count_nonzero(pred_b))
    if n_gt == 0 or n_pred == 0:
        return f_from_counts(n_pred, n_gt, 0, 0)
    gt_dil = cv2.dilate(gt_b.view(np.uint8), kernel).view(bool)
    pred_dil = cv2.dilate(pred_b.view(np.uint8), kernel).view(bool)
    pred_matched = int(np.count_nonzero(pred_b & gt_dil))
    gt_matched = int(np.count_nonzero(gt_b & pred_dil))
    return f_from_counts(n_pred, n_gt, pred_matched, gt_matched)


def f_measure(gt: np.ndarray, pred: np.ndarray, bound_th: float = BOUND_TH) -> float:
    """Boundary F of one frame, on the whole frame (the reference computation).

    Args:
      gt: ground-truth mask [H, W]; non-zero is foreground.
      pred: predicted mask [H, W].
      bound_th: tolerance, as a fraction of the image diagonal (< 1) or in pixels (>= 1).

    Returns:
      F in [0, 1].

    Raises:
      ValueError: the shapes differ or are not [H, W].
    """
    gt = np.asarray(gt).astype(bool)
    pred = np.asarray(pred).astype(bool)
    if gt.shape != pred.shape or gt.ndim != 2:
        raise ValueError(
            f"f_measure: expected two [H, W] masks of one shape, got {gt.shape} and {pred.shape}"
        )
    kernel = disk(boundary_radius(*gt.shape, bound_th=bound_th))
    return crop_f(gt, pred, kernel)


def boundary_f(gt: np.ndarray, pred: np.ndarray, bound_th: float = BOUND_TH) -> np.ndarray:
    """Boundary F of every frame of binary mask stacks (the toolkit's `db_eval_boundary`).

    Args:
      gt: ground-truth masks [T, H, W] or [H, W].
      pred: predicted masks of the same shape.
      bound_th: tolerance, as in `f_measure`.

    Returns:
      float64 [T] (or a 0-d array for [H, W] input).
    """
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.ndim == 2:
        return np.asarray(f_measure(gt, pred, bound_th))
    if gt.shape != pred.shape or gt.ndim != 3:
        raise ValueError(
            f"boundary_f: expected two [T, H, W] stacks of one shape, got {gt.shape} and "
            f"{pred.shape}"
        )
    return np.array([f_measure(g, p, bound_th) for g, p in zip(gt, pred, strict=True)])


def object_window(
    gt_ids: np.ndarray, pred_ids: np.ndarray, object_id: int
) -> tuple[slice, slice] | None:
    """The crop of a frame that holds every boundary pixel of object `object_id`.

    Boundary pixels lie in a mask's bounding box or one pixel above or left of it; one more row
    and column below and right supply the (background) neighbours of the box's last row and
    column, so `seg2bmap` of the crop equals that of the frame on the crop.

    Args:
      gt_ids: [H, W] ground-truth ids.
      pred_ids: [H, W] predicted ids.
      object_id: k.

    Returns:
      (rows, columns) slices, or None when k is in neither map.
    """
    present = gt_ids == object_id
    present |= pred_ids == object_id
    left, top, box_width, box_height = cv2.boundingRect(present.view(np.uint8))
    if box_width == 0:
        return None
    height, width = present.shape
    return (
        slice(max(top - 1, 0), min(top + box_height + 1, height)),
        slice(max(left - 1, 0), min(left + box_width + 1, width)),
    )


def object_f(gt_ids: np.ndarray, pred_ids: np.ndarray, num_objects: int, radius: int) -> np.ndarray:
    """Boundary F of objects 1..K between two id maps of one frame.

    Equal to `f_measure(gt_ids == k, pred_ids == k)` for every k, computed on crops.

    Args:
      gt_ids: [H, W] ground-truth ids (ids above K and 255 count as background).
      pred_ids: [H, W] predicted ids.
      num_objects: K.
      radius: dilation radius in pixels (`boundary_radius` of the full frame).

    Returns:
      float64 [K]: F of object k at index k - 1.
    """
    kernel = disk(radius)
    scores = np.ones(num_objects, np.float64)  # absent on both sides: no boundary, F = 1
    for k in range(1, num_objects + 1):
        window = object_window(gt_ids, pred_ids, k)
        if window is not None:
            scores[k - 1] = crop_f(gt_ids[window] == k, pred_ids[window] == k, kernel)
    return scores
