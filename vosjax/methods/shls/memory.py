"""The released SHLS memory clusterer (`memoryClusterer` of Models/get_model_LT.py), host side.

Labels are 1-based as in the released code (1 = background, 2..C = objects, 0 = none), and so are
superpixel ids in the label maps (row i of a frame's superfeatures = superpixel i + 1). The math
(cosine kNN, spherical k-means) runs in `vosjax.ops.memory_clustering`; the protocol around it
(painting, outlier filtering, boxes, attention maps, the memory's size rules) is numpy:

- `fit(X, y, C)`: the memory is X with labels y; per class, spherical k-means with 2 centroids.
- `predict(X, spx, lastseg, gt=None)`: kNN label and per-class similarity (`dist_per_class2`)
  and the largest centroid similarity per class of each superfeature, painted on the
  superpixels; `filter_outliers` keeps, for each object, the pre-segmentation's components
  that overlap the object's last mask by more than u = 5% OF THAT MASK's area, and the pixels
  of the object inside their convex hull; per object a box (`roi`: on the given mask with
  margin 0.5, or on the filtered pre-segmentation with margin 0.3, then grown to at least the
  object's box on the first predicted frame, `min_box_size`) and the 4 attention maps inside it:
  [kNN similarity to the object, max kNN similarity to the other classes (background
  included), centroid similarity to the object, max centroid similarity to the others].
- `update(X, y)`: appends rows per class; past 10 x the first frame's superpixels, a class keeps
  its first 5 x (its first-frame rows) and its newest rows; each class's k-means is refitted
  from its previous centroids and the kNN index rebuilt (class by class).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import ndimage, spatial

from vosjax.ops import memory_clustering

Box = tuple[int, int, int, int]  # rmin, rmax, cmin, cmax (end-exclusive)


class Prediction(NamedTuple):
    """What `ReleasedMemory.predict` gives (numpy).

    Attributes:
      knn_pred: int32 [N], the kNN label of each superfeature (1-based).
      knn_sim: float32 [N, C], per-class kNN similarity (column c - 1 = label c).
      cent_sim: float32 [N, C], per-class largest centroid similarity.
      preseg_raw: int32 [H, W], knn_pred painted on the superpixels (0 where none).
      preseg: int32 [H, W], after `filter_outliers` (0 = removed).
      boxes: C - 1 boxes (rmin, rmax, cmin, cmax), objects in label order 2..C.
      attmaps: C - 1 float32 [4, rmax - rmin, cmax - cmin] attention maps.
    """

    knn_pred: np.ndarray
    knn_sim: np.ndarray
    cent_sim: np.ndarray
    preseg_raw: np.ndarray
    preseg: np.ndarray
    boxes: list[Box]
    attmaps: list[np.ndarray]


def to_onehot(labels: np.ndarray, num_cls: int) -> np.ndarray:
    """int [H, W] labels 1..C -> [C, H, W] one-hot (channel k = label k + 1), labels' dtype."""
    return (labels[None] == np.arange(1, num_cls + 1)[:, None, None]).astype(labels.dtype)


def convex_hull_mask(mask: np.ndarray) -> np.ndarray:
    """skimage `convex_hull_image(mask)`: the pixels inside or on the convex hull of the
    pixels' edge midpoints (each pixel offset by +-0.5 along each axis); all False if empty."""
    rows, cols = np.nonzero(mask)
    if not len(rows):
        return np.zeros(mask.shape, bool)
    offsets = np.array([[-0.5, 0.0], [0.5, 0.0], [0.0, -0.5], [0.0, 0.5]])
    points = np.unique((np.stack([rows, cols], 1)[:, None, :] + offsets).reshape(-1, 2), axis=0)
    hull = spatial.ConvexHull(points)
    vertices = points[hull.vertices]  # counter-clockwise in (row, col)
    grid = np.stack(np.meshgrid(*map(np.arange, mask.shape), indexing="ij"), -1).reshape(-1, 2)
    inside = np.ones(len(grid), bool)
    for a, b in zip(vertices, np.roll(vertices, -1, axis=0), strict=True):
        edge, rel = b - a, grid - a
        inside &= edge[0] * rel[:, 1] - edge[1] * rel[:, 0] >= 0  # exact: halves are exact
    return inside.reshape(mask.shape)


def filter_outliers(seg: np.ndarray, lastseg: np.ndarray, num_cls: int, u: float = 0.05):
    """The released `filt_outliers`: for each object label c = 2..C, the 4-connected
    components of seg == c covering more than u x |lastseg == c| pixels of lastseg == c are
    kept, and seg == c is set to 0 outside their convex hull (everywhere if none is kept)."""
    out = seg.copy()
    for c in range(2, num_cls + 1):
        components, _ = ndimage.label(seg == c)  # 4-connectivity, as skimage connectivity=1
        last = (lastseg == c).ravel()
        overlap = np.bincount(components.ravel() * last, minlength=components.max() + 1)
        overlap[0] = 0
        keep = np.nonzero(overlap / max(1, np.count_nonzero(last)) > u)[0]
        hull = convex_hull_mask(np.isin(components, keep) & (components > 0))
        out[(seg == c) & ~hull] = 0
    return out


def roi(mask: np.ndarray, r: float = 0.5, m: float = 0.05) -> Box:
    """The released `get_roi`: the mask's box grown by int(side * r / 2) on each end (clipped
    to the frame); a side shorter than m x the frame's side (or an empty mask) spans it."""
    h, w = mask.shape
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    if not len(rows):
        return 0, h, 0, w
    rmin, rmax, cmin, cmax = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
    radd, cadd = int((rmax - rmin) * r / 2), int((cmax - cmin) * r / 2)
    rmin, rmax = max(0, rmin - radd), min(h, rmax + radd)
    cmin, cmax = max(0, cmin - cadd), min(w, cmax + cadd)
    if rmax - rmin < m * h:
        rmin, rmax = 0, h
    if cmax - cmin < m * w:
        cmin, cmax = 0, w
    return rmin, rmax, cmin, cmax


def min_box_size(box: Box, init_box: Box, h: int, w: int) -> Box:
    """The released `min_bbox_size`: a side shorter than init_box's grows by
    int(|difference| / 2) on each end, clipped to the frame."""
    rmin, rmax, cmin, cmax = box
    dif_h = (rmax - rmin) - (init_box[1] - init_box[0])
    dif_w = (cmax - cmin) - (init_box[3] - init_box[2])
    if dif_h < 0:
        s = int(abs(dif_h / 2))
        rmin, rmax = max(0, rmin - s), min(rmax + s, h)
    if dif_w < 0:
        s = int(abs(dif_w / 2))
        cmin, cmax = max(0, cmin - s), min(cmax + s, w)
    return rmin, rmax, cmin, cmax


def fit_kmeans(points: np.ndarray, init_centers: np.ndarray, num_iters: int = 300) -> np.ndarray:
    """faiss spherical k-means from given centroids (the released `FaissKMeans.fit(X,
    init_centroids=...)`): unit points, `num_iters` Lloyd steps by inner product, centroids
    renormalised; fewer points than centroids are padded with the points' mean (`check_pad`)."""
    unit = np.asarray(jax.device_get(_normalize(points)))
    pad = len(init_centers) - len(unit)
    if pad > 0:
        unit = np.concatenate([unit, np.repeat(unit.mean(0, keepdims=True), pad, 0)])
    centers, _ = memory_clustering.spherical_kmeans(
        jax.random.key(0),
        jnp.asarray(unit),
        jnp.ones(len(unit), bool),
        len(init_centers),
        num_iters,
        init_centers=jnp.asarray(init_centers, jnp.float32),
    )
    return np.asarray(centers)


def _normalize(x: np.ndarray) -> jax.Array:
    x = jnp.asarray(x, jnp.float32)
    return x / jnp.maximum(jnp.sqrt(jnp.sum(x * x, -1, keepdims=True)), 1e-12)


class ReleasedMemory:
    """The released memory clusterer (module docstring); state lives on the host."""

    def __init__(
        self,
        *,
        k: int = 2,
        ratio: float = 0.5,
        clusters_per_class: int = 2,
        kmeans_iters: int = 300,
        kmeans_restarts: int = 10,
        outlier_overlap: float = 0.05,
        roi_margin: float = 0.3,
        gt_margin: float = 0.5,
        init_factor: int = 5,
        capacity_factor: int = 10,
        seed: int = 1234,
    ):
        self.k, self.ratio = k, ratio
        self.clusters_per_class = clusters_per_class
        self.kmeans_iters, self.kmeans_restarts = kmeans_iters, kmeans_restarts
        self.outlier_overlap = outlier_overlap
        self.roi_margin, self.gt_margin = roi_margin, gt_margin
        self.init_factor, self.capacity_factor = init_factor, capacity_factor
        self.seed = seed

    def fit(self, x: np.ndarray, y: np.ndarray, num_cls: int, centroids=None) -> None:
        """The memory is superfeatures x [N, D] with 1-based labels y [N].

        Args:
          x: [N, D] superfeatures.
          y: int [N], labels 1..num_cls.
          num_cls: C.
          centroids: [C, m, D] k-means centroids to use as fitted (e.g. recorded ones), or
            None to fit them (random restarts from `seed`).
        """
        x, y = np.asarray(x, np.float32), np.asarray(y)
        self.num_cls = num_cls
        self.x_mem = [x[y == c + 1] for c in range(num_cls)]
        self.y_mem = [y[y == c + 1] for c in range(num_cls)]
        self.init_size = [self.init_factor * len(v) for v in self.y_mem]
        self.capacity = self.capacity_factor * len(y)
        self.init_boxes: list[Box] | None = None
        self._knn_x, self._knn_y = x, y
        if centroids is not None:
            self.centroids = np.asarray(centroids, np.float32)
        else:
            key = jax.random.key(self.seed)
            fitted = []
            for c in range(num_cls):
                points = self.x_mem[c]
                pad = self.clusters_per_class - len(points)
                unit = np.asarray(_normalize(points)) if len(points) else np.zeros((0, x.shape[1]))
                if pad > 0:
                    fill = unit.mean(0, keepdims=True) if len(unit) else np.zeros((1, x.shape[1]))
                    unit = np.concatenate([unit, np.repeat(fill, pad, 0)])
                centers, _ = memory_clustering.spherical_kmeans(
                    jax.random.fold_in(key, c),
                    jnp.asarray(unit, jnp.float32),
                    jnp.ones(len(unit), bool),
                    self.clusters_per_class,
                    self.kmeans_iters,
                    self.kmeans_restarts,
                )
                fitted.append(np.asarray(centers))
            self.centroids = np.stack(fitted)

    def update(self, x: np.ndarray, y: np.ndarray) -> None:
        """Appends superfeatures x with labels y (the released `update`)."""
        x, y = np.asarray(x, np.float32), np.asarray(y)
        for c in range(self.num_cls):
            xs = np.concatenate([self.x_mem[c], x[y == c + 1]])
            ys = np.concatenate([self.y_mem[c], y[y == c + 1]])
            n = len(ys)
            idx = np.arange(n)
            if n > self.capacity:
                first = self.init_size[c]
                idx = np.concatenate([np.arange(first), np.arange(first + n - self.capacity, n)])
            self.x_mem[c], self.y_mem[c] = xs[idx], ys[idx]
            self.centroids[c] = fit_kmeans(self.x_mem[c], self.centroids[c], self.kmeans_iters)
        self._knn_x, self._knn_y = np.concatenate(self.x_mem), np.concatenate(self.y_mem)

    def _bank(self) -> memory_clustering.MemoryBank:
        n = len(self._knn_y)
        return memory_clustering.MemoryBank(
            features=jnp.asarray(self._knn_x),
            labels=jnp.asarray(self._knn_y - 1, jnp.int32),
            valid=jnp.ones((n,), bool),
            count=jnp.asarray(n, jnp.int32),
        )

    def predict(
        self, x: np.ndarray, spx: np.ndarray, lastseg: np.ndarray, gt: np.ndarray | None = None
    ) -> Prediction:
        """One frame (the released `predict`).

        Args:
          x: [N, D] superfeatures of the frame (row i = superpixel i + 1).
          spx: int [H, W] the frame's superpixels, 1-based.
          lastseg: int [H, W] the last segmentation (labels 1..C).
          gt: int [H, W] a given segmentation (the first frame): boxes come from it.

        Returns:
          A `Prediction`.
        """
        c_all = self.num_cls
        label, knn_sim = memory_clustering.knn_class_similarity(
            jnp.asarray(x, jnp.float32), self._bank(), c_all, self.k, self.ratio
        )
        cent_sim = memory_clustering.centroid_similarity(
            jnp.asarray(x, jnp.float32), jnp.asarray(self.centroids)
        )
        knn_pred = np.asarray(label) + 1
        knn_sim, cent_sim = np.asarray(knn_sim), np.asarray(cent_sim)
        h, w = spx.shape
        last_boxes = [roi(lastseg == c + 2, r=0) for c in range(c_all)]
        if self.init_boxes is None:
            self.init_boxes = last_boxes
        ids = np.where((spx >= 1) & (spx <= len(x)), spx - 1, -1)
        painted = ids >= 0
        preseg_raw = np.where(painted, knn_pred[np.maximum(ids, 0)], 0).astype(np.int32)
        knn_att = np.where(painted[..., None], knn_sim[np.maximum(ids, 0)], 0).astype(np.float32)
        cent_att = np.where(painted[..., None], cent_sim[np.maximum(ids, 0)], 0)
        cent_att = cent_att.astype(np.float32)
        preseg = filter_outliers(preseg_raw, lastseg, c_all, u=self.outlier_overlap)
        boxes, attmaps = [], []
        for c in range(2, c_all + 1):
            others = [i for i in range(c_all) if i != c - 1]
            knn_contrast = knn_att[..., others].max(-1)
            cent_contrast = cent_att[..., others].max(-1)
            if gt is None:
                box = roi(preseg == c, r=self.roi_margin)
                box = min_box_size(box, self.init_boxes[c - 2], h, w)
            else:
                box = roi(gt == c, r=self.gt_margin)
            r0, r1, c0, c1 = box
            maps = [knn_att[..., c - 1], knn_contrast, cent_att[..., c - 1], cent_contrast]
            attmaps.append(np.stack([a[r0:r1, c0:c1] for a in maps]))
            boxes.append(box)
        return Prediction(
            knn_pred.astype(np.int32), knn_sim, cent_sim, preseg_raw, preseg, boxes, attmaps
        )


def _modes(spx: np.ndarray, label: np.ndarray, num_spx: int) -> np.ndarray:
    """int [num_spx]: each superpixel 1..num_spx's most frequent label (torch.mode: the
    smallest on ties); 0 for a superpixel without pixels."""
    label = label.astype(np.int64)
    if label.min(initial=0) < 0:
        raise ValueError("labels must be >= 0")
    width = int(label.max(initial=0)) + 1
    inside = (spx >= 1) & (spx <= num_spx)
    hist = np.bincount(
        (spx[inside].astype(np.int64) - 1) * width + label[inside], minlength=num_spx * width
    ).reshape(num_spx, width)
    return np.where(hist.sum(1) > 0, hist.argmax(1), 0)


def reorder_labels(labels: np.ndarray) -> np.ndarray:
    """The released `reorder_labels`: labels >= 1 renumbered 1..n in order, gaps removed."""
    present = np.unique(labels[labels >= 1])
    lookup = np.zeros(int(labels.max(initial=0)) + 1, labels.dtype)
    lookup[present] = np.arange(1, len(present) + 1)
    return np.where(labels >= 1, lookup[np.maximum(labels, 0)], labels)


def merge_spx_label(spx: np.ndarray, label: np.ndarray, spx2label: np.ndarray) -> np.ndarray:
    """The released `merge_spx_label`: superpixels made to follow the label borders.

    For each label i: pixels of label i inside a superpixel whose majority is i keep the
    superpixel's id; pixels of label i inside other superpixels are regrouped into their
    4-connected components, each a new superpixel (numbered after the ids so far); pixels of
    other labels are handled by their own label's pass. The ids are then made consecutive.
    """
    num_spx = int(spx.max())
    output = np.zeros_like(spx, dtype=np.int64)
    for i in range(1, int(label.max()) + 1):
        own = (label == i) & (spx2label == i)
        foreign = (label == i) & (spx2label != i)
        components, _ = ndimage.label(foreign)  # skimage label(connectivity=1)
        part = np.where(own, spx, 0).astype(np.int64)
        part += np.where(foreign, num_spx + i + components, 0)
        output += part
        num_spx = int(output.max())
    return reorder_labels(output).astype(spx.dtype)


def spx_pools(spx: np.ndarray, label: np.ndarray, merge: bool = False):
    """The released `get_spx_pools` for one frame (1-based superpixels and labels).

    Returns:
      the label (mode) of each superpixel 1..max(spx); with merge=True, (those labels of the
      merged superpixels, the merged superpixel map `merge_spx_label`).
    """
    num_spx = int(spx.max())
    pools = _modes(spx, label, num_spx)
    if not merge:
        return pools
    painted = np.where(spx >= 1, pools[np.clip(spx, 1, num_spx) - 1], 0)
    merged = merge_spx_label(spx, label, painted)
    return _modes(merged, label, int(merged.max())), merged


def confident_pools(
    spx: np.ndarray, seg: np.ndarray, pred: np.ndarray, num_cls: int, r: float = 0.4
) -> np.ndarray | None:
    """The released `get_confident_pools` (one frame): superpixel s (1-based) is confident
    when, for some class c, the mean of pred[c] over s is >= r x the mean of pred[c] over the
    pixels segmented as c (for the background, over its pixels below the background's
    maximum). `pred` is what the released test loop gives it: the log-odds.

    Returns:
      int [max(spx)] of 0 / 1, or None when the background has no pixel or nothing is
      confident (the released code then skips the memory update).
    """
    num_spx = int(spx.max())
    counts = np.bincount(spx.ravel(), minlength=num_spx + 1)[1:]
    val = np.zeros(num_spx, np.int64)
    for c in range(num_cls):
        values = pred[c][seg == c + 1]
        if c == 0:
            if not values.size:
                return None
            below = values[values < values.max()]
            m_cls = below.mean() if below.size else np.nan
        else:
            m_cls = values.mean() if values.size else np.nan
        sums = np.bincount(spx.ravel(), weights=pred[c].ravel(), minlength=num_spx + 1)[1:]
        with np.errstate(invalid="ignore", divide="ignore"):
            m_spx = (sums / counts).astype(np.float32)
            val[m_spx >= np.float32(m_cls) * np.float32(r)] = 1
    return val if val.any() else None
