"""Tests of the INO losses against numpy references written with explicit loops."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vosjax.methods.ino import losses

B, G, V, K, N, T = 2, 2, 3, 7, 6, 3
TT, TS = 0.04, 0.1


# ---------------------------------------------------------------- numpy references (float64)


def _np_softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _np_ce(q: np.ndarray, s: np.ndarray, temp: float) -> float:
    """-sum_k q_k log softmax(s / temp)_k for one vector pair."""
    z = s / temp
    log_z = np.log(np.sum(np.exp(z - z.max()))) + z.max()
    return float(-sum(q[i] * (z[i] - log_z) for i in range(len(q))))


def _np_out(tg, sg, sl, center, g2g, l2g) -> float:
    terms = []
    for i in range(tg.shape[1]):
        if g2g:
            for j in range(sg.shape[1]):
                if i != j:
                    terms.append(
                        np.mean(
                            [
                                _np_ce(_np_softmax((tg[b, i] - center) / TT), sg[b, j], TS)
                                for b in range(tg.shape[0])
                            ]
                        )
                    )
        if l2g:
            for v in range(sl.shape[1]):
                terms.append(
                    np.mean(
                        [
                            _np_ce(_np_softmax((tg[b, i] - center) / TT), sl[b, v], TS)
                            for b in range(tg.shape[0])
                        ]
                    )
                )
    return float(sum(terms) / len(terms))


def _np_mim(tp, sp, mask, center) -> float:
    per_image = []
    for b in range(tp.shape[0]):
        total, count = 0.0, 0
        for i in range(tp.shape[1]):
            if mask[b, i]:
                total += _np_ce(_np_softmax((tp[b, i] - center) / TT), sp[b, i], TS)
                count += 1
        per_image.append(total / max(count, 1))
    return float(np.mean(per_image))


def _np_unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _np_affinity(tp, sp, mask) -> float:
    """mask [B, N]; the masked sub-matrix is extracted explicitly."""
    values = []
    for b in range(tp.shape[0]):
        idx = np.flatnonzero(mask[b])
        for t in range(tp.shape[1] - 1):
            if len(idx) == 0:
                values.append(0.0)
                continue
            xt = [_np_unit(tp[b, s, idx]) for s in (t, t + 1)]
            xs = [_np_unit(sp[b, s, idx]) for s in (t, t + 1)]
            a_t, a_s = xt[0] @ xt[1].T, xs[0] @ xs[1].T
            rows = [_np_ce(_np_softmax(a_t[r] / TT), a_s[r], TS) for r in range(len(idx))]
            values.append(float(np.mean(rows)))
    return float(np.mean(values))


def _rand(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.normal(size=shape).astype(np.float32)


# ---------------------------------------------------------------- building blocks


def test_cross_entropy_matches_numpy_and_known_answer():
    rng = np.random.default_rng(0)
    q = rng.dirichlet(np.ones(K), size=(B, G)).astype(np.float32)
    s = _rand(rng, B, G, K)
    got = np.asarray(losses.cross_entropy(jnp.asarray(q), jnp.asarray(s), TS))
    want = np.array([[_np_ce(q[b, g], s[b, g], TS) for g in range(G)] for b in range(B)])
    assert got.shape == (B, G) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # Equal logits: a one-hot target costs log K.
    one_hot = jnp.eye(K)[0]
    np.testing.assert_allclose(losses.cross_entropy(one_hot, jnp.zeros(K), 0.5), np.log(K), 1e-6)


def test_teacher_probs_matches_numpy_and_stops_gradient():
    rng = np.random.default_rng(1)
    t, center = _rand(rng, B, N, K), _rand(rng, K)
    got = np.asarray(losses.teacher_probs(jnp.asarray(t), jnp.asarray(center), TT))
    want = np.array([[_np_softmax((t[b, i] - center) / TT) for i in range(N)] for b in range(B)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.sum(-1), 1.0, rtol=1e-6)
    weights = jnp.asarray(_rand(rng, K))
    grad = jax.grad(lambda x: jnp.sum(losses.teacher_probs(x, jnp.asarray(center), TT) * weights))
    np.testing.assert_array_equal(grad(jnp.asarray(t)), 0.0)


@pytest.mark.parametrize("momentum", [0.9, 0.5])
def test_update_center_matches_formula(momentum):
    rng = np.random.default_rng(2)
    center, logits = _rand(rng, K), _rand(rng, B, G, K)
    got = losses.update_center(jnp.asarray(center), jnp.asarray(logits), momentum)
    mean = np.array(
        [np.mean([logits[b, g, k] for b in range(B) for g in range(G)]) for k in range(K)]
    )
    assert got.shape == (K,) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, center * momentum + (1 - momentum) * mean, rtol=1e-5, atol=1e-7)
    jitted = jax.jit(losses.update_center, static_argnames="momentum")
    np.testing.assert_allclose(jitted(center, logits, momentum=momentum), got, rtol=1e-6)


# ---------------------------------------------------------------- out-generative


def _out_inputs(seed: int = 3):
    rng = np.random.default_rng(seed)
    return _rand(rng, B, G, K), _rand(rng, B, G, K), _rand(rng, B, V, K), 0.3 * _rand(rng, K)


@pytest.mark.parametrize("g2g,l2g", [(True, False), (False, True), (True, True)])
def test_out_generative_matches_numpy(g2g, l2g):
    tg, sg, sl, center = _out_inputs()
    got = losses.out_generative_loss(
        *map(jnp.asarray, (tg, sg, sl, center)), global_to_global=g2g, local_to_global=l2g
    )
    assert got.shape == () and got.dtype == jnp.float32
    np.testing.assert_allclose(got, _np_out(tg, sg, sl, center, g2g, l2g), rtol=1e-5)


def test_out_generative_both_is_the_term_weighted_mean():
    tg, sg, sl, center = map(jnp.asarray, _out_inputs(4))
    g2g = losses.out_generative_loss(tg, sg, None, center, local_to_global=False)
    l2g = losses.out_generative_loss(tg, sg, sl, center, global_to_global=False)
    both = losses.out_generative_loss(tg, sg, sl, center)
    # G (G - 1) = 2 global-to-global terms and G V = 6 local-to-global terms.
    np.testing.assert_allclose(both, (2 * g2g + 6 * l2g) / 8, rtol=1e-5)
    assert abs(float(g2g) - float(l2g)) > 1e-3  # the weighting is actually tested


def test_out_generative_gradient_reaches_the_student_only():
    tg, sg, sl, center = map(jnp.asarray, _out_inputs(5))
    grads = jax.grad(losses.out_generative_loss, argnums=(0, 1, 2))(tg, sg, sl, center)
    np.testing.assert_array_equal(grads[0], 0.0)
    assert np.all(np.isfinite(grads[1])) and np.abs(grads[1]).max() > 0
    assert np.all(np.isfinite(grads[2])) and np.abs(grads[2]).max() > 0


# ---------------------------------------------------------------- masked image modelling


def _mim_inputs(seed: int = 6):
    rng = np.random.default_rng(seed)
    return _rand(rng, B, N, K), _rand(rng, B, N, K), 0.3 * _rand(rng, K)


def test_mim_matches_numpy_partial_all_and_none_masked():
    tp, sp, center = _mim_inputs()
    args = tuple(map(jnp.asarray, (tp, sp)))
    partial = np.array([[1, 0, 1, 1, 0, 0], [0, 0, 0, 0, 1, 0]], bool)
    for mask in (partial, np.ones((B, N), bool), np.array([[1, 1, 0, 0, 0, 1], [0] * N], bool)):
        got = losses.mim_loss(*args, jnp.asarray(mask), jnp.asarray(center))
        np.testing.assert_allclose(got, _np_mim(tp, sp, mask, center), rtol=1e-5)
    none = losses.mim_loss(*args, jnp.zeros((B, N), bool), jnp.asarray(center))
    assert float(none) == 0.0


def test_mim_broadcasts_a_shared_mask():
    tp, sp, center = _mim_inputs(7)
    shared = np.array([0, 1, 1, 0, 1, 0], bool)
    tp_j, sp_j = jnp.asarray(tp), jnp.asarray(sp)
    got = losses.mim_loss(tp_j, sp_j, jnp.asarray(shared), jnp.asarray(center))
    want = _np_mim(tp, sp, np.broadcast_to(shared, (B, N)), center)
    np.testing.assert_allclose(got, want, rtol=1e-5)


# ---------------------------------------------------------------- affinity


def _aff_inputs(seed: int = 8):
    rng = np.random.default_rng(seed)
    return _rand(rng, B, T, N, K), _rand(rng, B, T, N, K)


def test_affinity_matches_numpy_with_a_shared_random_mask():
    tp, sp = _aff_inputs()
    mask = np.random.default_rng(9).random(N) < 0.5
    mask[[0, 3]] = True, False  # at least one masked and one unmasked position
    got = losses.affinity_loss(jnp.asarray(tp), jnp.asarray(sp), jnp.asarray(mask))
    assert got.shape == () and got.dtype == jnp.float32
    np.testing.assert_allclose(got, _np_affinity(tp, sp, np.broadcast_to(mask, (B, N))), rtol=1e-5)


def test_affinity_matches_numpy_with_per_image_masks():
    tp, sp = _aff_inputs(10)
    mask = np.array([[1, 0, 1, 1, 0, 1], [0, 1, 0, 0, 1, 0]], bool)
    got = losses.affinity_loss(jnp.asarray(tp), jnp.asarray(sp), jnp.asarray(mask))
    np.testing.assert_allclose(got, _np_affinity(tp, sp, mask), rtol=1e-5)
    # An image without masked tokens contributes 0 to the mean over images.
    mask[1] = False
    got = losses.affinity_loss(jnp.asarray(tp), jnp.asarray(sp), jnp.asarray(mask))
    np.testing.assert_allclose(got, _np_affinity(tp, sp, mask), rtol=1e-5)


def test_affinity_ignores_unmasked_tokens_exactly():
    tp, sp = _aff_inputs(11)
    mask = np.array([1, 1, 0, 1, 0, 0], bool)
    base = losses.affinity_loss(jnp.asarray(tp), jnp.asarray(sp), jnp.asarray(mask))
    tp2, sp2 = tp.copy(), sp.copy()
    tp2[:, :, ~mask] = 1e3 * _rand(np.random.default_rng(12), B, T, int((~mask).sum()), K)
    sp2[:, :, ~mask] = -7.0
    moved = losses.affinity_loss(jnp.asarray(tp2), jnp.asarray(sp2), jnp.asarray(mask))
    assert float(moved) == float(base)


def test_affinity_no_masked_tokens_is_zero_and_gradients_finite():
    tp, sp = map(jnp.asarray, _aff_inputs(13))
    none = jnp.zeros(N, bool)
    assert float(losses.affinity_loss(tp, sp, none)) == 0.0
    grad_none = jax.grad(losses.affinity_loss, argnums=1)(tp, sp, none)
    np.testing.assert_array_equal(grad_none, 0.0)

    mask = jnp.asarray([1, 0, 1, 1, 0, 0], bool)
    grad_t, grad_s = jax.grad(losses.affinity_loss, argnums=(0, 1))(tp, sp, mask)
    np.testing.assert_array_equal(grad_t, 0.0)  # the teacher side is stopped
    assert np.all(np.isfinite(grad_s)) and np.abs(grad_s).max() > 0
    # Only the masked tokens are used, so the unmasked ones get no gradient.
    np.testing.assert_array_equal(np.asarray(grad_s)[:, :, ~np.asarray(mask)], 0.0)
    # A zero head output (L2 norm 0) still gives finite gradients.
    grad_zero = jax.grad(losses.affinity_loss, argnums=1)(tp, sp.at[0, 0, 0].set(0.0), mask)
    assert np.all(np.isfinite(grad_zero))


# ---------------------------------------------------------------- jit, dtypes, arguments


def _all_losses(arrays):
    tg, sg, sl, center, tp, sp, mask_n, tpa, spa, mask_a = arrays
    return jnp.stack(
        [
            losses.out_generative_loss(tg, sg, sl, center),
            losses.mim_loss(tp, sp, mask_n, center),
            losses.affinity_loss(tpa, spa, mask_a),
        ]
    )


def _all_inputs(dtype=jnp.float32):
    tg, sg, sl, center = _out_inputs(14)
    tp, sp, _ = _mim_inputs(15)
    tpa, spa = _aff_inputs(16)
    floats = [jnp.asarray(x, dtype) for x in (tg, sg, sl, center, tp, sp, tpa, spa)]
    mask_n = jnp.asarray([[1, 0, 1, 1, 0, 0], [0, 1, 1, 0, 0, 1]], bool)
    mask_a = jnp.asarray([1, 1, 0, 1, 0, 1], bool)
    return (*floats[:6], mask_n, *floats[6:], mask_a)


def test_jit_matches_eager():
    arrays = _all_inputs()
    eager = _all_losses(arrays)
    jitted = jax.jit(_all_losses)(arrays)
    np.testing.assert_allclose(jitted, eager, rtol=1e-6)


def test_bf16_inputs_give_float32_results():
    low = _all_inputs(jnp.bfloat16)
    got = _all_losses(low)
    assert got.dtype == jnp.float32
    # The math is float32: identical to float32 inputs holding the bf16-rounded values ...
    upcast = tuple(x.astype(jnp.float32) if x.dtype == jnp.bfloat16 else x for x in low)
    np.testing.assert_allclose(got, _all_losses(upcast), rtol=1e-6)
    # ... and close to the float32 inputs (bf16 rounding, amplified by 1 / 0.04).
    np.testing.assert_allclose(got, _all_losses(_all_inputs()), rtol=5e-2)


def _bad_calls():
    tg, sg, sl, center = map(jnp.asarray, _out_inputs())
    tp, sp = jnp.zeros((B, N, K)), jnp.zeros((B, N, K))
    tpa = jnp.zeros((B, T, N, K))
    mask = jnp.ones(N, bool)
    out = losses.out_generative_loss
    return {
        "both switches off": lambda: out(
            tg, sg, sl, center, global_to_global=False, local_to_global=False
        ),
        "no local views": lambda: out(tg, sg, None, center),
        "student_global shape": lambda: out(tg, sg[:, :1], sl, center),
        "student_local K": lambda: out(tg, sg, sl[..., :3], center),
        "student_local B": lambda: out(tg, sg, sl[:1], center),
        "center K": lambda: out(tg, sg, sl, center[:3]),
        "teacher_global ndim": lambda: out(tg[0], sg[0], sl, center),
        "g2g with G = 1": lambda: out(tg[:, :1], sg[:, :1], sl, center, local_to_global=False),
        "teacher_temp": lambda: out(tg, sg, sl, center, teacher_temp=0.0),
        "mim student shape": lambda: losses.mim_loss(tp, sp[:, :3], mask, center),
        "mim mask shape": lambda: losses.mim_loss(tp, sp, jnp.ones(N + 1, bool), center),
        "mim center": lambda: losses.mim_loss(tp, sp, mask, center[:2]),
        "aff ndim": lambda: losses.affinity_loss(tp, sp, mask),
        "aff student shape": lambda: losses.affinity_loss(tpa, tpa[:, :2], mask),
        "aff one frame": lambda: losses.affinity_loss(tpa[:, :1], tpa[:, :1], mask),
        "aff mask shape": lambda: losses.affinity_loss(tpa, tpa, jnp.ones((B + 1, N), bool)),
        "aff student_temp": lambda: losses.affinity_loss(tpa, tpa, mask, student_temp=-1.0),
        "center ndim": lambda: losses.update_center(center[None], tg),
        "momentum": lambda: losses.update_center(center, tg, momentum=1.5),
        "ce last axis": lambda: losses.cross_entropy(tp, sl[..., :3], TS),
        "ce leading axes": lambda: losses.cross_entropy(tp, sl, TS),
    }


@pytest.mark.parametrize("name", list(_bad_calls()))
def test_bad_arguments_raise(name):
    with pytest.raises(ValueError):
        _bad_calls()[name]()


# ------------------------------------------- the released code's call structure (main_VOS)


def _clip_inputs(seed: int, m: int = 2, t: int = 4):
    rng = np.random.default_rng(seed)
    tc, sc = rng.normal(size=(2, B, t, K)).astype(np.float32)
    sl = rng.normal(size=(B, t, m, K)).astype(np.float32)
    center = rng.normal(0.0, 0.3, K).astype(np.float32)
    return tc, sc, sl, center


def test_frame_pairs_per_call_centres_each_pair_with_the_moved_centre():
    tc, sc, sl, center = _clip_inputs(20)
    loss, new = losses.out_generative_frame_pairs(*map(jnp.asarray, (tc, sc, sl, center)))
    # The released calc_cross_frame_dino: one DINOLoss call per pair (n, n + 2), the centre
    # EMA-updated (0.9) at the end of each call from that pair's 2 x B teacher outputs.
    c, want = center.astype(np.float64), []
    for n in (0, 1):
        f = [n, n + 2]
        want.append(_np_out(tc[:, f], sc[:, f], sl[:, f].reshape(B, -1, K), c, True, True))
        c = 0.9 * c + 0.1 * tc[:, f].reshape(-1, K).mean(0)
    np.testing.assert_allclose(loss, np.mean(want), rtol=1e-5)
    np.testing.assert_allclose(new, c, rtol=1e-5, atol=1e-7)
    # The single-update form centres both pairs with the old centre: a different loss.
    step, new_step = losses.out_generative_frame_pairs(
        *map(jnp.asarray, (tc, sc, sl, center)), center_update="per_step"
    )
    want_step = [
        _np_out(tc[:, [n, n + 2]], sc[:, [n, n + 2]], sl[:, [n, n + 2]].reshape(B, -1, K),
                center, True, True)
        for n in (0, 1)
    ]  # fmt: skip
    np.testing.assert_allclose(step, np.mean(want_step), rtol=1e-5)
    np.testing.assert_allclose(new_step, 0.9 * center + 0.1 * tc.reshape(-1, K).mean(0), rtol=1e-5)
    assert abs(float(step) - float(loss)) > 1e-4


def test_frame_pairs_gradient_reaches_the_student_only_and_bad_inputs_are_named():
    tc, sc, sl, center = map(jnp.asarray, _clip_inputs(21))
    grads = jax.grad(lambda *a: losses.out_generative_frame_pairs(*a)[0], argnums=(0, 1, 2))(
        tc, sc, sl, center
    )
    assert float(jnp.abs(grads[0]).max()) == 0.0
    assert float(jnp.abs(grads[1]).max()) > 0.0 and float(jnp.abs(grads[2]).max()) > 0.0
    with pytest.raises(ValueError, match="even number T >= 2"):
        losses.out_generative_frame_pairs(tc[:, :3], sc[:, :3], None, center, local_to_global=False)
    with pytest.raises(ValueError, match=r"student_local must be \[B, T, M, K\]"):
        losses.out_generative_frame_pairs(tc, sc, sl[:, :2], center)
    with pytest.raises(ValueError, match="center_update='per_pair'"):
        losses.out_generative_frame_pairs(tc, sc, sl, center, center_update="per_pair")


def _mim_clip_inputs(seed: int, t: int = 3):
    rng = np.random.default_rng(seed)
    tp, sp = rng.normal(size=(2, B, t, N, K)).astype(np.float32)
    center = rng.normal(0.0, 0.3, K).astype(np.float32)
    return tp, sp, center


def test_mim_frames_one_term_per_frame_and_centre_from_masked_tokens():
    tp, sp, center = _mim_clip_inputs(22)
    mask = np.zeros((B, N), bool)
    mask[0, [1, 4]] = True
    mask[1, [0, 2, 3, 5]] = True  # unequal counts: the pooled and per-image means differ
    got, new = losses.mim_loss_frames(*map(jnp.asarray, (tp, sp, mask, center)))
    c, terms = center.astype(np.float64), []
    for f in range(tp.shape[1]):
        ces = [
            _np_ce(_np_softmax((tp[b, f, i] - c) / TT), sp[b, f, i], TS)
            for b in range(B)
            for i in range(N)
            if mask[b, i]
        ]
        terms.append(np.mean(ces))  # one CE term over the masked tokens of every clip
        c = 0.9 * c + 0.1 * tp[:, f][mask].mean(0)
    np.testing.assert_allclose(got, np.mean(terms), rtol=1e-5)
    np.testing.assert_allclose(new, c, rtol=1e-5, atol=1e-7)

    image, _ = losses.mim_loss_frames(
        *map(jnp.asarray, (tp, sp, mask, center)), average="image", center_update="per_step"
    )
    flat = (tp.reshape(-1, N, K), sp.reshape(-1, N, K), np.repeat(mask, tp.shape[1], 0))
    np.testing.assert_allclose(image, _np_mim(*flat, center), rtol=1e-5)
    assert abs(float(image) - float(got)) > 1e-4


def test_mim_frames_without_masked_tokens_add_no_term_and_keep_the_centre():
    tp, sp, center = _mim_clip_inputs(23)
    mask = np.zeros((B, tp.shape[1], N), bool)
    mask[:, 1, 2] = True  # only frame 1 has masked tokens
    got, new = losses.mim_loss_frames(*map(jnp.asarray, (tp, sp, mask, center)))
    ces = [_np_ce(_np_softmax((tp[b, 1, 2] - center) / TT), sp[b, 1, 2], TS) for b in range(B)]
    np.testing.assert_allclose(got, np.mean(ces), rtol=1e-5)
    np.testing.assert_allclose(new, 0.9 * center + 0.1 * tp[:, 1, 2].mean(0), rtol=1e-5)
    none, same = losses.mim_loss_frames(*map(jnp.asarray, (tp, sp, np.zeros((B, N), bool), center)))
    assert float(none) == 0.0
    np.testing.assert_array_equal(same, center)
    with pytest.raises(ValueError, match="average='clip'"):
        losses.mim_loss_frames(*map(jnp.asarray, (tp, sp, mask, center)), average="clip")


def test_affinity_normalises_tiny_vectors_as_f_normalize():
    # F.normalize divides by max(||x||, 1e-12): a vector of norm 1e-8 still becomes a unit vector.
    x = jnp.asarray([[3e-9, 4e-9]], jnp.float32)
    np.testing.assert_allclose(losses._l2_normalize(x), [[0.6, 0.8]], rtol=1e-5)
    np.testing.assert_array_equal(losses._l2_normalize(jnp.zeros((1, 2))), 0.0)
