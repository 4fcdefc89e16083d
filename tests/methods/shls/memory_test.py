"""The released memory clusterer: convex hulls, outlier filtering, boxes, k-means, predict."""

import jax
import jax.numpy as jnp
import numpy as np

from vosjax.methods.shls import memory
from vosjax.ops import memory_clustering


def test_convex_hull_mask_of_pixel_diamonds():
    mask = np.zeros((3, 4), bool)
    mask[0, 0] = mask[2, 0] = mask[2, 2] = True
    hull = memory.convex_hull_mask(mask)
    expected = np.zeros((3, 4), bool)
    expected[0, 0] = expected[1, :2] = expected[2, :3] = True
    np.testing.assert_array_equal(hull, expected)
    line = np.zeros((3, 6), bool)
    line[1, 0] = line[1, 5] = True
    expected_line = np.broadcast_to(np.arange(3)[:, None] == 1, (3, 6))
    np.testing.assert_array_equal(memory.convex_hull_mask(line), expected_line)
    assert not memory.convex_hull_mask(np.zeros((4, 4), bool)).any()


def test_filter_outliers_keeps_components_overlapping_5_percent_of_the_last_mask():
    lastseg = np.ones((20, 20), np.int32)
    lastseg[2:12, 2:12] = 2  # 100 pixels of object 2
    seg = np.ones((20, 20), np.int32)
    seg[4:8, 4:8] = 2  # overlaps the last mask by 16 px: kept
    seg[10:20, 11:13] = 2  # 20 px, 2 of them in the last mask: 2% of 100 -> removed
    seg[16:18, 0:3] = 2  # far away: removed
    seg[9, 8] = 2  # a lone pixel: 1% of the last mask, outside the kept component's hull
    out = memory.filter_outliers(seg, lastseg, 2, u=0.05)
    expected = seg.copy()
    expected[10:20, 11:13] = 0
    expected[16:18, 0:3] = 0
    expected[9, 8] = 0
    np.testing.assert_array_equal(out, expected)
    # The fraction is of the LAST MASK's area: 6 px of overlap out of 100 keeps a component
    # although most of its pixels are outside.
    seg2 = np.ones((20, 20), np.int32)
    seg2[10:20, 10:13] = 2  # 30 px, of which rows 10-11 x cols 10-11 in the last mask
    seg2[10:12, 9] = 2  # 2 more there: 6 px of overlap = 6% of the last mask
    out2 = memory.filter_outliers(seg2, lastseg, 2, u=0.05)
    np.testing.assert_array_equal(out2, seg2)
    # Background (label 1) is never filtered; with no component kept, the object is emptied.
    assert (memory.filter_outliers(seg, np.ones_like(lastseg), 2) != 2).all()


def test_roi_and_min_box_size_are_the_released_integer_rules():
    mask = np.zeros((48, 80), bool)
    mask[10:21, 30:41] = True  # rows 10..20, cols 30..40: an 11 x 11 box
    assert memory.roi(mask, r=0) == (10, 21, 30, 41)
    assert memory.roi(mask, r=0.5) == (8, 23, 28, 43)  # int(11 * 0.5 / 2) = 2
    assert memory.roi(mask, r=0.3) == (9, 22, 29, 42)  # int(1.65) = 1
    assert memory.roi(np.zeros((48, 80), bool)) == (0, 48, 0, 80)
    thin = np.zeros((48, 80), bool)
    thin[5, 10:50] = True  # 1 row < 5% of 48: spans all rows
    assert memory.roi(thin, r=0) == (0, 48, 10, 50)
    assert memory.min_box_size((10, 20, 30, 60), (0, 30, 0, 20), 48, 80) == (0, 30, 30, 60)
    assert memory.min_box_size((40, 45, 0, 5), (0, 20, 0, 20), 48, 80) == (33, 48, 0, 12)


def test_fit_kmeans_from_given_centroids_is_spherical_lloyd():
    rng = np.random.default_rng(0)
    points = np.abs(rng.normal(size=(30, 5))).astype(np.float32)
    init = points[[0, 1]] / np.linalg.norm(points[[0, 1]], axis=1, keepdims=True)
    unit = points / np.linalg.norm(points, axis=1, keepdims=True)
    centers = init.astype(np.float64)
    for _ in range(50):
        assign = np.argmax(unit @ centers.T, 1)
        for k in range(2):
            if (assign == k).any():
                mean = unit[assign == k].mean(0)
                centers[k] = mean / np.linalg.norm(mean)
    out = memory.fit_kmeans(points, init, num_iters=50)
    np.testing.assert_allclose(out, centers, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1, atol=1e-6)


def test_spherical_kmeans_init_centers_option_ignores_the_key():
    rng = np.random.default_rng(1)
    points = jnp.asarray(rng.normal(size=(20, 4)), jnp.float32)
    init = points[:3] / jnp.linalg.norm(points[:3], axis=1, keepdims=True)
    valid = jnp.ones(20, bool)
    a, _ = memory_clustering.spherical_kmeans(jax.random.key(0), points, valid, 3, 10, 4, init)
    b, _ = memory_clustering.spherical_kmeans(jax.random.key(5), points, valid, 3, 10, 1, init)
    np.testing.assert_array_equal(a, b)


def test_predict_paints_labels_similarities_and_boxes():
    # 4 superpixels in a 6 x 8 frame; the memory: one feature per class, orthogonal.
    spx = np.array([[1] * 4 + [2] * 4] * 3 + [[3] * 4 + [4] * 4] * 3, np.int32)
    x_mem = np.eye(3, 4, dtype=np.float32)
    y_mem = np.array([1, 2, 3])
    mem = memory.ReleasedMemory()
    centroids = np.stack([np.stack([x_mem[c], x_mem[c]]) for c in range(3)])
    mem.fit(x_mem, y_mem, 3, centroids=centroids)
    x = np.array([[1, 0, 0, 0], [0, 1, 0.5, 0], [0, 0, 1, 0], [0, 1, 0, 0]], np.float32)
    gt = np.where(spx == 2, 2, np.where(spx == 3, 3, 1)).astype(np.int32)
    pred = mem.predict(x, spx, gt, gt=gt)
    np.testing.assert_array_equal(pred.knn_pred, [1, 2, 3, 2])
    # Row 2: neighbours (class 2, sim 0.894), (class 3, sim 0.447): each class's v sorted
    # first -> both get weight 1: 0.894 / 1.5 and 0.447 / 1.5.
    np.testing.assert_allclose(
        pred.knn_sim[1], [0, 2 / np.sqrt(5) / 1.5, 1 / np.sqrt(5) / 1.5], atol=1e-6
    )
    np.testing.assert_allclose(pred.cent_sim[1], [0, 2 / np.sqrt(5), 1 / np.sqrt(5)], atol=1e-6)
    np.testing.assert_array_equal(pred.preseg_raw, np.array([1, 2, 3, 2])[spx - 1])
    # gt boxes with margin 0.5: columns 4..7 grow by int(4 * 0.5 / 2) = 1 on each end.
    assert pred.boxes == [(0, 3, 3, 8), (3, 6, 0, 5)]
    att = pred.attmaps[0]  # object label 2: rows 0-2, column 3 (superpixel 1) and 4-7 (2)
    assert att.shape == (4, 3, 5)
    np.testing.assert_allclose(att[0, :, 1:], pred.knn_sim[1, 1], atol=1e-7)
    np.testing.assert_allclose(att[0, :, 0], pred.knn_sim[0, 1], atol=1e-7)
    others = max(pred.knn_sim[1, 0], pred.knn_sim[1, 2])
    np.testing.assert_allclose(att[1, :, 1:], others, atol=1e-7)
    np.testing.assert_allclose(att[2, :, 1:], pred.cent_sim[1, 1], atol=1e-7)
    np.testing.assert_allclose(
        att[3, :, 1:], max(pred.cent_sim[1, 0], pred.cent_sim[1, 2]), atol=1e-7
    )
    # Without gt: the box comes from the filtered pre-segmentation (margin 0.3), grown to the
    # first predicted frame's box of the object (here the last segmentation's, r = 0).
    second = mem.predict(x, spx, gt)
    assert second.boxes[0] == (0, 6, 4, 8)  # superpixels 2 and 4 (kNN label 2), r=0.3 adds 0


def test_spx_pools_merge_follows_the_label_borders():
    spx = np.array([[1, 1, 2, 2]] * 4, np.int32)
    label = np.array([[1, 2, 2, 2]] * 4, np.int32)
    np.testing.assert_array_equal(memory.spx_pools(spx, label), [1, 2])  # tie -> smallest
    pools, merged = memory.spx_pools(spx, label, merge=True)
    # Column 1 (object pixels in a background superpixel) becomes its own superpixel.
    np.testing.assert_array_equal(merged, [[1, 3, 2, 2]] * 4)
    np.testing.assert_array_equal(pools, [1, 2, 2])
    np.testing.assert_array_equal(memory.reorder_labels(np.array([[0, 4, 9], [4, 2, 0]])),
                                  [[0, 2, 3], [2, 1, 0]])  # fmt: skip


def test_confident_pools_compare_superpixel_means_with_class_means():
    spx = np.array([[1, 1, 2, 2]], np.int32)
    seg = np.array([[1, 1, 2, 2]], np.int32)
    pred = np.array([[[3.0, 1.0, -2.0, -4.0]], [[-3.0, -1.0, 2.0, 4.0]]], np.float32)
    # Background: pixels below its maximum (1.0) -> 0.4; superpixel 1's mean 2 >= 0.4.
    # Object: mean 3 -> 1.2; superpixel 2's mean 3 >= 1.2.
    np.testing.assert_array_equal(memory.confident_pools(spx, seg, pred, 2), [1, 1])
    # One background pixel: nothing is below its maximum, the mean is NaN and no superpixel
    # passes for the background; superpixel 1 (mean -2) fails the object's 0.4 x 5 / 3.
    seg2 = np.array([[1, 2, 2, 2]], np.int32)
    np.testing.assert_array_equal(memory.confident_pools(spx, seg2, pred, 2), [0, 1])
    assert memory.confident_pools(spx, np.full_like(seg, 2), pred, 2) is None  # no background
