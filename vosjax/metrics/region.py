"""Region similarity J (intersection over union), as the official DAVIS toolkit computes it.

`jaccard` is the toolkit's `db_eval_iou` without a void mask (the semi-supervised task passes
none): J = |P & G| / |P | G| per frame, and J = 1 when both masks are empty.
`object_jaccard` gives the same numbers for every object of an id map in one pass over the
pixels, which is what the protocol uses.
"""

from __future__ import annotations

import numpy as np


def jaccard_from_counts(intersection: np.ndarray, union: np.ndarray) -> np.ndarray:
    """J from pixel counts, with the official convention for an empty union.

    Args:
      intersection: integer array [...], |P & G|.
      union: integer array [...] of the same shape, |P | G|.

    Returns:
      float64 array [...]: intersection / union, and 1 where union == 0.
    """
    intersection = np.asarray(intersection, np.float64)
    union = np.asarray(union, np.float64)
    empty = union == 0
    return np.where(empty, 1.0, intersection / np.where(empty, 1.0, union))


def jaccard(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Region similarity of binary masks, reduced over the last two axes.

    Args:
      gt: ground-truth masks [..., H, W]; any non-zero value is foreground.
      pred: predicted masks of the same shape.

    Returns:
      float64 array [...] (a 0-d array for a single [H, W] pair).

    Raises:
      ValueError: the shapes differ or the masks have fewer than two axes.
    """
    gt = np.asarray(gt).astype(bool)
    pred = np.asarray(pred).astype(bool)
    if gt.shape != pred.shape or gt.ndim < 2:
        raise ValueError(
            f"jaccard: expected two masks [..., H, W] of one shape, got {gt.shape} and {pred.shape}"
        )
    intersection = np.count_nonzero(gt & pred, axis=(-2, -1))
    union = np.count_nonzero(gt | pred, axis=(-2, -1))
    return jaccard_from_counts(intersection, union)


def overlap_counts(
    gt_ids: np.ndarray, pred_ids: np.ndarray, num_objects: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-object pixel counts of two id maps, from one joint histogram.

    Ground-truth ids outside 1..num_objects (void 255, objects that are not in the first frame)
    count as background, as the official toolkit's per-object binary masks do.

    Args:
      gt_ids: uint8 [H, W] ground-truth object ids.
      pred_ids: uint8 [H, W] predicted object ids, all in 0..num_objects.
      num_objects: K, the number of objects scored.

    Returns:
      (intersection, gt_area, pred_area), each int64 [K]: for object k (index k - 1)
      |P_k & G_k|, |G_k| and |P_k|.
    """
    width = num_objects + 1
    # One code per (gt, pred) pair; gt ids up to 255 keep their own rows, which are then ignored.
    code = gt_ids.astype(np.uint16) * np.uint16(width) + pred_ids
    table = np.bincount(code.ravel(), minlength=256 * width)[: 256 * width].reshape(256, width)
    ids = np.arange(1, width)
    intersection = table[ids, ids]
    gt_area = table[1:width].sum(axis=1)
    pred_area = table[:, 1:width].sum(axis=0)
    return intersection, gt_area, pred_area


def object_jaccard(gt_ids: np.ndarray, pred_ids: np.ndarray, num_objects: int) -> np.ndarray:
    """J of objects 1..K between two id maps of one frame.

    Args:
      gt_ids: uint8 [H, W] ground-truth ids (ids above K and 255 count as background).
      pred_ids: uint8 [H, W] predicted ids in 0..K.
      num_objects: K.

    Returns:
      float64 [K]: J of object k at index k - 1.
    """
    intersection, gt_area, pred_area = overlap_counts(gt_ids, pred_ids, num_objects)
    return jaccard_from_counts(intersection, gt_area + pred_area - intersection)
