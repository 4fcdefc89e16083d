"""Tests of the released infer_mask.py protocol (vosjax/methods/maskvos/released_inference.py)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vosjax.methods.maskvos import encoder, mask_model, released_inference


def test_pad_amounts_split_as_pad_divide_by():
    # 854 -> 856: one column on each side; 70 -> 72: 1 top, 1 bottom; 61 -> 64: 1 top, 2 bottom.
    assert released_inference.pad_amounts(480, 854) == (0, 0, 1, 1)
    assert released_inference.pad_amounts(70, 61) == (1, 1, 1, 2)
    assert released_inference.pad_amounts(64, 64) == (0, 0, 0, 0)


def test_radius_bias_is_euclidean_and_strict():
    bias = released_inference.radius_bias(5, 6, 2.0)
    assert bias.shape == (30, 30)
    q = 2 * 6 + 2  # cell (2, 2)
    inside = bias[q].reshape(5, 6) == 0
    ii, jj = np.meshgrid(np.arange(5), np.arange(6), indexing="ij")
    np.testing.assert_array_equal(inside, (ii - 2) ** 2 + (jj - 2) ** 2 < 4)  # distance 2 is out
    assert bias.min() == np.float32(-1e10)


def test_top_k_match_against_numpy_without_max_subtraction():
    rng = np.random.default_rng(0)
    s, n, c, k = 3, 12, 4, 5
    mem = rng.normal(size=(s, n, c)).astype(np.float32)
    query = rng.normal(size=(n, c)).astype(np.float32)
    bias = released_inference.radius_bias(3, 4, 1.5)
    weights, indices = released_inference.top_k_match(
        jnp.asarray(mem), jnp.asarray(query), jnp.asarray(bias), top_k=k, temperature=0.5
    )
    sim = np.einsum("nc,smc->nsm", query, mem)
    sim[:, 1:] += bias[:, None]  # every slot but the first is restricted
    sim = sim.reshape(n, s * n) / 0.5
    order = np.argsort(-sim, axis=1)[:, :k]
    top = np.take_along_axis(sim, order, axis=1)
    expected = np.exp(top) / np.exp(top).sum(1, keepdims=True)
    np.testing.assert_array_equal(np.sort(indices, 1), np.sort(order, 1))
    np.testing.assert_allclose(np.sort(weights, 1), np.sort(expected, 1), rtol=1e-5)
    # Slot 0 is never restricted: far positions of slot 0 stay candidates.
    assert np.any(np.asarray(indices) < n)


def test_top_k_match_diagnostics_keep_the_same_selection():
    rng = np.random.default_rng(1)
    s, n, c, k = 3, 12, 4, 3
    mem = jnp.asarray(rng.normal(size=(s, n, c)).astype(np.float32))
    query = jnp.asarray(rng.normal(size=(n, c)).astype(np.float32))
    bias = jnp.asarray(released_inference.radius_bias(3, 4, 1.5))
    content = jnp.asarray(rng.uniform(size=(s * n, 2)).astype(np.float32))
    kwargs = dict(top_k=k, temperature=0.5)
    weights, indices = released_inference.top_k_match(mem, query, bias, **kwargs)
    w2, i2, ambiguous, gap = released_inference.top_k_match(
        mem, query, bias, content=content, margin=1e9, **kwargs
    )
    np.testing.assert_array_equal(w2, weights)
    np.testing.assert_array_equal(i2, indices)
    sim = np.einsum("nc,smc->nsm", np.asarray(query), np.asarray(mem))
    sim[:, 1:] += np.asarray(bias)[:, None]
    sim = -np.sort(-sim.reshape(n, s * n) / 0.5, axis=1)
    np.testing.assert_allclose(gap, sim[:, k - 1] - sim[:, k], rtol=1e-5, atol=1e-5)
    assert ambiguous.all()  # everything within the margin, random contents differ
    _, _, none, _ = released_inference.top_k_match(
        mem, query, bias, content=content, margin=0.0, **kwargs
    )
    assert not none.any()


def test_ambiguous_selection_needs_a_near_tie_between_different_contents():
    # top_k 2 over 6 memory positions; content: positions 0-3 carry 0, 4 carries 1, 5 carries
    # 0.5e-4. Each row: its scores over the 6 positions.
    content = jnp.array([[0.0], [0.0], [0.0], [0.0], [1.0], [0.5e-4]])
    low = -50.0
    scores = jnp.array(
        [
            [5.0, 3.0, 1.0, low, 2.0, low],  # clear gap: kept 3.0, dropped 2.0
            [5.0, 3.0, 1.0, low, 3.0 - 1e-5, low],  # near-tie with other content: ambiguous
            [5.0, 3.0, 3.0 - 1e-5, low, 1.0, low],  # near-tie with the same content: harmless
            [5.0, 3.0, 1.0, low, low, 3.0 - 1e-5],  # content differs by 5e-5
            [5.0, 3.0, 1.0, low, 2.5, low],  # kept and dropped exactly the margin apart
        ]
    )
    kept_scores, indices = jax.lax.top_k(scores, 2)
    np.testing.assert_array_equal(indices[:, 1], 1)
    ambiguous = released_inference.ambiguous_selection
    found, gap = ambiguous(scores, kept_scores, indices, content, margin=0.5)
    np.testing.assert_array_equal(found, [0, 1, 0, 1, 0])
    np.testing.assert_allclose(gap, [1.0, 1e-5, 1e-5, 1e-5, 0.5], rtol=2e-3)
    found, _ = ambiguous(scores, kept_scores, indices, content, margin=0.5, tolerance=1e-4)
    np.testing.assert_array_equal(found, [0, 1, 0, 0, 0])
    # The bound weighs the trade: the 2nd candidate's weight is e^3 / (e^5 + e^3) = 0.119, so
    # trading it for content 1 moves the result by 0.119; a tolerance above that passes it.
    weight = float(np.exp(3.0) / (np.exp(5.0) + np.exp(3.0)))
    row = (scores[1:2], kept_scores[1:2], indices[1:2], content)
    assert not ambiguous(*row, margin=0.5, tolerance=weight + 1e-3)[0][0]
    assert ambiguous(*row, margin=0.5, tolerance=weight - 1e-3)[0][0]


def test_unresolved_cells_inherit_through_the_kept_memory_positions():
    memory_unresolved = jnp.array([[False, False, False], [False, True, False]])  # [S 2, n 3]
    ambiguous = jnp.array([True, False, False])
    indices = jnp.array([[0, 1], [2, 4], [3, 5]])  # slot-major: 4 is slot 1, position 1
    np.testing.assert_array_equal(
        released_inference.unresolved_cells(ambiguous, indices, memory_unresolved),
        [True, True, False],
    )


def test_gather_weighted():
    memory = jnp.arange(12.0).reshape(1, 6, 2)
    weights = jnp.array([[0.25, 0.75]])
    indices = jnp.array([[1, 4]])
    out = released_inference.gather_weighted(weights, indices, memory)
    np.testing.assert_allclose(out, [[[0.25 * 2 + 0.75 * 8, 0.25 * 3 + 0.75 * 9]]])


@pytest.fixture(scope="module")
def tiny():
    rngs = nnx.Rngs(0)
    e = encoder.MaskVOSEncoder("resnet18", embed_dim=16, key_dim=8, rngs=rngs)
    head = mask_model.MaskHead(
        "resnet18", embed_dim=16, value_dim=8, decoder_widths=(8, 8, 8), rngs=rngs
    )
    return e, head


def test_protocol_frame_zero_is_the_mask_and_coarse_maps_are_convex(tiny):
    e, head = tiny
    config = released_inference.ReleasedDecodingConfig(top_k=4, radius=3.0, num_recent=2)
    decoder = released_inference.ReleasedMaskDecoder(e, head, config)
    frames = np.asarray(jax.random.normal(jax.random.key(0), (4, 30, 46, 3)))
    mask = np.zeros((30, 46), np.int64)
    mask[5:20, 10:30] = 1
    mask[20:, 30:] = 2
    results = list(decoder.run(frames, mask, 2))
    assert len(results) == 4
    first = released_inference.unpad_and_resize(results[0].output, (30, 46), (30, 46))
    np.testing.assert_array_equal(np.argmax(first, 0), mask)
    assert results[0].coarse is None
    for r in results[1:]:
        assert r.output.shape == (3, 32, 48) and r.coarse.shape == (3, 4, 6)
        # Top-k weights sum to 1 and the memory masks are convex maps at /8 (padding included:
        # there all channels are 0, as the released zero padding of the one-hot mask).
        assert r.coarse.min() >= 0 and r.coarse.sum(0).max() <= 1 + 1e-5
        coarse_up = mask_model.resize_align_corners(jnp.asarray(r.coarse), 32, 48)
        np.testing.assert_allclose(r.output, (r.agg_logits + coarse_up) / 2, rtol=1e-5, atol=1e-5)


def test_protocol_diagnostics_leave_the_outputs_unchanged(tiny):
    e, head = tiny
    config = released_inference.ReleasedDecodingConfig(top_k=4, radius=3.0, num_recent=2)
    decoder = released_inference.ReleasedMaskDecoder(e, head, config)
    frames = np.asarray(jax.random.normal(jax.random.key(1), (4, 30, 46, 3)))
    mask = np.zeros((30, 46), np.int64)
    mask[5:20, 10:30] = 1
    plain = list(decoder.run(frames, mask, 1))
    none = list(decoder.run(frames, mask, 1, tie_margin=0.0))
    every = list(decoder.run(frames, mask, 1, tie_margin=1e9))
    assert plain[0].top_k_gap is None and none[0].top_k_gap is None
    for p, a, b in zip(plain[1:], none[1:], every[1:], strict=True):
        np.testing.assert_array_equal(a.output, p.output)
        np.testing.assert_array_equal(a.coarse, p.coarse)
        assert p.top_k_gap is None and a.top_k_gap.shape == (4, 6)
        assert np.all(a.top_k_gap >= 0)
        assert not a.ambiguous.any() and not a.unresolved.any()  # margin 0: no near-tie
        assert b.ambiguous.all() and b.unresolved.all()  # everything within the margin
    # Frame 1's memory holds frame 0 only: nothing to inherit.
    middle = float(np.median(none[1].top_k_gap)) + 1e-6
    some = list(decoder.run(frames, mask, 1, tie_margin=middle))
    np.testing.assert_array_equal(some[1].unresolved, some[1].ambiguous)
    for r in some[2:]:
        assert np.all(r.unresolved >= r.ambiguous)


def test_wide_frames_are_halved():
    config = released_inference.ReleasedDecodingConfig()
    frames = np.ones((1, 8, 960, 3), np.float32)
    small, mask = released_inference.prepare(frames, np.zeros((8, 960), np.int64), config)
    assert small.shape == (1, 4, 480, 3) and mask.shape == (4, 480)
    narrow, _ = released_inference.prepare(frames[:, :, :959], np.zeros((8, 959)), config)
    assert narrow.shape == (1, 8, 959, 3)
    with pytest.raises(ValueError, match="top_k"):
        released_inference.ReleasedDecodingConfig(top_k=0)
