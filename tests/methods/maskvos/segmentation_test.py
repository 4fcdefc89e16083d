"""Tests of Mask-VOS's segmentation loss (teacher forcing over a clip)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vosjax.methods.maskvos import mask_model, segmentation

B, T, S, K = 2, 3, 32, 2
H = S // 8


@pytest.fixture(scope="module")
def head():
    return mask_model.MaskHead(
        "resnet18", embed_dim=16, value_dim=16, decoder_widths=(16, 16, 8), rngs=nnx.Rngs(0)
    )


def _features(rng, identity_keys=False):
    if identity_keys:
        # One-hot position codes: each position matches itself in every frame and nothing else.
        eye = np.eye(H * H, dtype=np.float32).reshape(H, H, H * H)
        keys = np.broadcast_to(eye, (B, T, H, H, H * H)).copy()
    else:
        keys = rng.normal(size=(B, T, H, H, 8)).astype(np.float32)
        keys /= np.linalg.norm(keys, axis=-1, keepdims=True)
    return {
        "key": jnp.asarray(keys),
        "res4": jnp.asarray(rng.normal(size=(B, T, H, H, 16)), jnp.float32),
        "f3": jnp.asarray(rng.normal(size=(B, T, H, H, 128)), jnp.float32),
        "f2": jnp.asarray(rng.normal(size=(B, T, 2 * H, 2 * H, 64)), jnp.float32),
    }


def _inputs(seed=0, identity_keys=False):
    rng = np.random.default_rng(seed)
    frames = jnp.asarray(rng.normal(size=(B, T, S, S, 3)), jnp.float32)
    labels = np.zeros((B, T, H, H), np.int32)
    labels[:, :, :2, :2] = 1
    labels[:, :, 2:, 1:3] = 2
    return frames, _features(rng, identity_keys), jnp.asarray(labels)


def test_memory_affinity_against_numpy():
    rng = np.random.default_rng(0)
    mem, query = rng.normal(size=(2, 6, 4)), rng.normal(size=(2, 5, 4))
    affinity = segmentation.memory_affinity(jnp.asarray(mem), jnp.asarray(query), 0.5)
    logits = np.einsum("bmd,bnd->bmn", mem, query) / 0.5
    expected = np.exp(logits - logits.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    np.testing.assert_allclose(affinity, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.sum(affinity, axis=1), 1.0, rtol=1e-5)


def test_object_masks_and_upsampling():
    labels = jnp.array([[0, 1], [2, 2]])
    masks = segmentation.object_masks(labels, 3)
    np.testing.assert_array_equal(masks[0], [[0, 1], [0, 0]])
    np.testing.assert_array_equal(masks[1], [[0, 0], [1, 1]])
    np.testing.assert_array_equal(masks[2], 0)
    up = segmentation.upsample_labels(labels, 2)
    np.testing.assert_array_equal(up, [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]])


def test_loss_shapes_gradients_and_metrics(head):
    frames, features, labels = _inputs()
    graphdef, params, rest = nnx.split(head, nnx.Param, ...)

    def loss_of(params):
        # As vosjax.train: fresh Variables under this trace, so BatchNorm may update them.
        model = nnx.merge(graphdef, params, jax.tree.map(lambda x: x, rest))
        return segmentation.segmentation_loss(
            model, frames, features, labels, jnp.array([2, 1]), max_objects=K, num_queries=2
        )

    (loss, aux), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
    assert np.isfinite(float(loss)) and float(loss) > 0
    # Untrained: the loss is about log(3) (three classes), not a degenerate value.
    assert 0.3 < float(loss) < 5.0
    assert 0.0 <= float(aux["seg_acc"]) <= 1.0 and float(aux["seg_objects"]) == 1.5
    norms = [float(jnp.abs(g).sum()) for g in jax.tree.leaves(grads)]
    assert all(np.isfinite(norms)) and sum(n > 0 for n in norms) > 0.9 * len(norms)


def test_no_object_means_zero_loss(head):
    frames, features, labels = _inputs()
    labels = jnp.zeros_like(labels)
    loss, aux = segmentation.segmentation_loss(
        head,
        frames,
        features,
        labels,
        jnp.array([0, 0]),
        max_objects=K,
        num_queries=2,
        train=False,
    )
    # Absent objects get probability ~1e-7: background is certain, and right.
    assert float(loss) < 1e-5 and float(aux["seg_acc"]) == 1.0


def test_teacher_forcing_uses_only_earlier_frames(head):
    frames, features, labels = _inputs()
    kwargs = dict(max_objects=K, num_queries=1, train=False)
    objects = jnp.array([2, 2])
    loss, _ = segmentation.segmentation_loss(head, frames, features, labels, objects, **kwargs)
    # Frame 2 is neither memory nor query when Q = 1.
    changed_late = labels.at[:, 2].set(0)
    same, _ = segmentation.segmentation_loss(
        head, frames, features, changed_late, objects, **kwargs
    )
    assert float(same) == float(loss)
    # The memory frame's mask (frame 0) matters.
    changed_memory = labels.at[:, 0].set(0)
    other, _ = segmentation.segmentation_loss(
        head, frames, features, changed_memory, objects, **kwargs
    )
    assert abs(float(other) - float(loss)) > 1e-4


def test_soft_and_argmax_coarse_agree_when_affinity_is_the_identity(head):
    # Position-coded keys at a low temperature: A copies each memory position to itself, so the
    # warped masks are already one-hot and both coarse modes give the same coarse mask.
    frames, features, labels = _inputs(identity_keys=True)
    args = (head, frames, features, labels, jnp.array([2, 2]))
    kwargs = dict(max_objects=K, num_queries=2, temperature=0.01, train=False)
    soft, _ = segmentation.segmentation_loss(*args, coarse="soft", **kwargs)
    hard, _ = segmentation.segmentation_loss(*args, coarse="argmax", **kwargs)
    np.testing.assert_allclose(float(soft), float(hard), rtol=1e-5)
    # With random keys the soft warp is blurred and the two modes differ.
    frames, features, labels = _inputs(seed=3)
    args = (head, frames, features, labels, jnp.array([2, 2]))
    kwargs["temperature"] = 1.0
    soft, _ = segmentation.segmentation_loss(*args, coarse="soft", **kwargs)
    hard, _ = segmentation.segmentation_loss(*args, coarse="argmax", **kwargs)
    assert abs(float(soft) - float(hard)) > 1e-5


def test_bad_arguments_are_named(head):
    frames, features, labels = _inputs()
    objects = jnp.array([1, 1])
    with pytest.raises(ValueError, match="num_queries=3"):
        segmentation.segmentation_loss(
            head, frames, features, labels, objects, max_objects=K, num_queries=3
        )
    with pytest.raises(ValueError, match="coarse='hard'"):
        segmentation.segmentation_loss(
            head, frames, features, labels, objects, max_objects=K, num_queries=1, coarse="hard"
        )
    with pytest.raises(ValueError, match="labels of shape"):
        segmentation.segmentation_loss(
            head, frames, features, labels[:, :, :2], objects, max_objects=K, num_queries=1
        )


def test_full_resolution_labels_follow_the_released_forward(head):
    """Labels at the frames' size: V reads them as they are, the coarse propagation reads the
    one-hot labels sampled to the keys' grid with align_corners=True, the loss is at full size.
    """
    frames, features, _ = _inputs(seed=4)
    rng = np.random.default_rng(5)
    full = rng.integers(0, K + 1, size=(B, T, S, S)).astype(np.int32)
    kwargs = dict(max_objects=K, num_queries=2, coarse="argmax", train=False, with_outputs=True)
    objects = jnp.array([2, 2])
    loss, aux = segmentation.segmentation_loss(
        head, frames, features, jnp.asarray(full), objects, **kwargs
    )
    assert aux["seg_logits"].shape == (2, B, K + 1, S, S)
    assert aux["seg_coarse"].shape == (2, B, H, H)
    np.testing.assert_allclose(float(loss), float(np.mean(aux["seg_query_losses"])), rtol=1e-6)
    # The coarse labels of query 1 by hand: one-hot (background included) sampled at the
    # align_corners grid, propagated by the affinity of frame 0 to frame 1, argmax.
    one_hot = (full[:, 0, None] == np.arange(K + 1)[None, :, None, None]).astype(np.float32)
    src = np.arange(H) * (S - 1) / (H - 1)
    lo, frac = np.floor(src).astype(int), src - np.floor(src)
    hi = np.minimum(lo + 1, S - 1)
    rows = one_hot[:, :, lo] * (1 - frac)[:, None] + one_hot[:, :, hi] * frac[:, None]
    small = rows[..., lo] * (1 - frac) + rows[..., hi] * frac  # [B, K + 1, H, H]
    keys = np.asarray(features["key"])
    affinity = segmentation.memory_affinity(
        jnp.asarray(keys[:, 0].reshape(B, H * H, -1)),
        jnp.asarray(keys[:, 1].reshape(B, H * H, -1)),
        0.05,
    )
    propagated = np.einsum("bmn,bkm->bkn", np.asarray(affinity), small.reshape(B, K + 1, -1))
    np.testing.assert_array_equal(aux["seg_coarse"][0], propagated.argmax(1).reshape(B, H, H))
    # The loss compares with the full-resolution labels.
    log_probs = jax.nn.log_softmax(aux["seg_logits"][0], axis=1)
    picked = np.take_along_axis(np.asarray(log_probs), full[:, 1, None], axis=1)
    np.testing.assert_allclose(
        float(aux["seg_query_losses"][0]), -picked.mean(), rtol=1e-5, atol=1e-6
    )
    # Labels at /8 that are constant on 8 x 8 cells give the same targets as their full-size
    # repetition; the two paths differ only in what V and the coarse step read.
    small_labels = full[:, :, ::8, ::8]
    coarse_loss, _ = segmentation.segmentation_loss(
        head, frames, features, jnp.asarray(small_labels), objects, **kwargs
    )
    assert np.isfinite(float(coarse_loss))
