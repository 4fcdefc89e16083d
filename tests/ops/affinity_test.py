"""Tests of the chunked top-k affinity propagation against a dense numpy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vosjax.ops import affinity, propagation


def dense_reference(
    query: np.ndarray,
    context_features: np.ndarray,
    context_labels: np.ndarray,
    valid: np.ndarray,
    top_k: int,
    temperature: float,
    radius: float | None,
    neighbourhood: str,
    restrict_anchor: bool,
    keep_ties: bool = False,
    pad_with_anchor: bool = False,
) -> np.ndarray:
    """The textbook computation: full (hw x M hw) affinity, dense neighbourhood mask, top-k.

    Context frame 0 is the anchor; `valid` [M] says which context frames count (with
    `pad_with_anchor` the others are copies of the anchor). `keep_ties`: DINO's
    `aff[aff < kth] = 0` then renormalise.
    """
    h, w, c = query.shape
    m = context_features.shape[0]
    if pad_with_anchor:
        copies = ~np.asarray(valid, bool)
        copies[0] = False
        context_features = np.where(
            copies[:, None, None, None], context_features[:1], context_features
        )
        context_labels = np.where(copies[:, None, None, None], context_labels[:1], context_labels)
        valid = np.ones_like(valid)
    sim = query.reshape(-1, c).astype(np.float64) @ context_features.reshape(-1, c).T
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    dy = yy.ravel()[None, :] - yy.ravel()[:, None]
    dx = xx.ravel()[None, :] - xx.ravel()[:, None]
    if radius is None:
        near = np.ones(dy.shape, bool)
    elif neighbourhood == "square":
        near = (np.abs(dy) <= radius) & (np.abs(dx) <= radius)
    else:
        near = dy**2 + dx**2 < radius**2
    allowed = np.tile(near, (1, m))
    if not restrict_anchor:
        allowed[:, : h * w] = True
    allowed &= np.repeat(valid, h * w)[None, :]
    sim = np.where(allowed, sim, -np.inf)
    labels = context_labels.reshape(-1, context_labels.shape[-1])
    if keep_ties:
        kth = -np.sort(-sim, axis=1)[:, top_k - 1 : top_k]
        weights = np.where(sim >= kth, np.exp((sim - sim.max(1, keepdims=True)) / temperature), 0)
        weights /= weights.sum(1, keepdims=True)
        return (weights @ labels).reshape(h, w, -1)
    idx = np.argsort(-sim, axis=1, kind="stable")[:, :top_k]
    top = np.take_along_axis(sim, idx, 1) / temperature
    weights = np.exp(top - top.max(1, keepdims=True))
    weights /= weights.sum(1, keepdims=True)
    return np.einsum("qk,qkc->qc", weights, labels[idx]).reshape(h, w, -1)


def _random_problem(rng, h, w, c, n, k):
    def unit(*shape):
        x = rng.normal(size=(*shape, c))
        return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)

    labels = rng.dirichlet(np.ones(k), size=(n + 1, h, w)).astype(np.float32)
    return unit(h, w), unit(n + 1, h, w), labels


def _run(query, feats, labels, valid, block_size, **kw):
    return np.asarray(
        affinity.propagate_jit(
            query,
            feats[0],
            labels[0],
            feats[1:],
            labels[1:],
            valid[1:],
            block_size=block_size,
            **kw,
        )
    )


@pytest.mark.parametrize("preset", sorted(propagation.PRESETS))
@pytest.mark.parametrize("block_size", [None, 5, (4, 7)])
def test_matches_dense_reference_for_presets(preset, block_size):
    cfg = propagation.PRESETS[preset]
    rng = np.random.default_rng(0)
    h, w, c, n, k = 30, 33, 16, 3, 4
    query, feats, labels = _random_problem(rng, h, w, c, n, k)
    valid = np.array([True, True, False, True])  # anchor, then ring slots; slot 2 empty
    kw = dict(
        top_k=cfg.top_k,
        temperature=cfg.temperature,
        radius=cfg.radius,
        neighbourhood=cfg.neighbourhood,
        restrict_anchor=cfg.restrict_first_frame,
        keep_ties=cfg.keep_ties,
        pad_with_anchor=cfg.pad_with_anchor,
    )
    got = _run(query, feats, labels, valid, block_size, **kw)
    want = dense_reference(query, feats, labels, valid, **kw)
    np.testing.assert_allclose(got, want, atol=1e-5)


@pytest.mark.parametrize(
    "radius,neighbourhood,restrict_anchor",
    [(2.0, "circle", False), (3.0, "circle", True), (2.0, "square", True), (None, "square", True)],
)
def test_matches_dense_reference_small_radii(radius, neighbourhood, restrict_anchor):
    # Small radii on a small grid: many windows are clamped at the border, few candidates.
    rng = np.random.default_rng(1)
    h, w, c, n, k = 9, 14, 8, 2, 3
    query, feats, labels = _random_problem(rng, h, w, c, n, k)
    valid = np.ones(n + 1, bool)
    kw = dict(
        top_k=4,
        temperature=0.07,
        radius=radius,
        neighbourhood=neighbourhood,
        restrict_anchor=restrict_anchor,
    )
    want = dense_reference(query, feats, labels, valid, **kw)
    for block_size, per_step in ((1, 1), ((2, 5), 1), (32, 1), (3, 4)):
        got = _run(query, feats, labels, valid, block_size, blocks_per_step=per_step, **kw)
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=f"{block_size}, {per_step}")


@pytest.mark.parametrize("keep_ties", [False, True])
def test_ties_at_the_kth_place(keep_ties):
    # Seven context positions identical to the query (3 labelled 1, 4 labelled 2), the rest
    # dissimilar. DINO keeps all seven (>= the 5th largest): (3 * e1 + 4 * e2) / 7; exactly
    # five (CRW's torch.topk) gives a mix of five of them.
    h, w, c = 4, 6, 8
    rng = np.random.default_rng(7)
    anchor = -np.abs(rng.normal(size=(h, w, c))).astype(np.float32)
    anchor /= np.linalg.norm(anchor, axis=-1, keepdims=True)
    query = np.zeros((h, w, c), np.float32)
    query[..., 0] = 1.0  # every query is e0; the anchor has negative cosines with it ...
    labels = np.zeros((h, w, 3), np.float32)
    labels[..., 0] = 1.0
    for i, (y, x) in enumerate([(0, 0), (0, 5), (1, 2), (2, 3), (3, 0), (3, 4), (2, 1)]):
        anchor[y, x] = query[0, 0]  # ... except these seven, identical to it
        labels[y, x] = (0.0, 1.0, 0.0) if i < 3 else (0.0, 0.0, 1.0)
    ring = np.zeros((1, h, w, c), np.float32)
    got = affinity.propagate_jit(
        query, anchor, labels, ring, np.zeros((1, h, w, 3), np.float32), np.array([False]),
        top_k=5, temperature=0.1, keep_ties=keep_ties,
    )  # fmt: skip
    got = np.asarray(got)
    if keep_ties:
        np.testing.assert_allclose(got, np.broadcast_to([0, 3 / 7, 4 / 7], got.shape), atol=1e-6)
    else:
        counts = got * 5  # five equal weights: counts of each label among the five
        np.testing.assert_allclose(counts, np.round(counts), atol=1e-5)
        np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-6)
        assert (got[..., 0] == 0).all()


def test_padding_with_anchor_copies_is_nearest_neighbour_at_frame_1():
    # CRW at frame 1: 20 copies of frame 0 (restricted) + frame 0 itself (unrestricted). Where a
    # query's best key lies inside the radius it has 21 copies, which fill the top 10: the
    # prediction is that key's label (1-NN). Without the padding it is a top-10 average.
    rng = np.random.default_rng(8)
    h, w, c, k, n = 10, 12, 16, 3, 20
    query, feats, _ = _random_problem(rng, h, w, c, 0, k)
    anchor = feats[0]
    labels = rng.dirichlet(np.ones(k), size=(h, w)).astype(np.float32)
    ring = np.zeros((n, h, w, c), np.float32)
    ring_labels = np.zeros((n, h, w, k), np.float32)
    kw = dict(top_k=10, temperature=0.05, radius=12.0, neighbourhood="circle",
              restrict_anchor=False)  # fmt: skip
    args = (query, anchor, labels, ring, ring_labels, np.zeros(n, bool))
    padded = np.asarray(affinity.propagate_jit(*args, pad_with_anchor=True, **kw))
    plain = np.asarray(affinity.propagate_jit(*args, pad_with_anchor=False, **kw))
    sim = query.reshape(-1, c) @ anchor.reshape(-1, c).T
    best = np.argmax(sim, axis=1)  # the 12-cell circle holds the whole 10 x 12 grid's ...
    yy, xx = np.divmod(best, w)
    qy, qx = np.divmod(np.arange(h * w), w)
    inside = (yy - qy) ** 2 + (xx - qx) ** 2 < 144  # ... except far corners
    assert inside.mean() > 0.9
    want = labels.reshape(-1, k)[best]
    np.testing.assert_allclose(padded.reshape(-1, k)[inside], want[inside], atol=1e-6)
    assert np.abs(plain.reshape(-1, k)[inside] - want[inside]).max() > 0.05
    dense = dense_reference(query, anchor[None], labels[None], np.ones(1, bool), 10, 0.05,
                            12.0, "circle", False)  # fmt: skip
    np.testing.assert_allclose(plain, dense, atol=1e-5)


def test_first_frame_exemption_reaches_beyond_the_radius():
    # The query at (0, 0) is identical to the anchor's feature at (19, 19), 27 cells away,
    # labelled 1; everything else is labelled 0 and dissimilar. With top_k = 1 the exempt
    # anchor (CRW) gives label 1, the restricted one (DINO) label 0.
    h = w = 20
    c = h * w + 1
    eye = np.eye(c, dtype=np.float32)
    anchor = eye[1:].reshape(h, w, c)
    query = -anchor  # dissimilar to everything ...
    query[0, 0] = anchor[19, 19]  # ... except this one
    labels = np.zeros((h, w, 2), np.float32)
    labels[..., 0] = 1.0
    labels[19, 19] = (0.0, 1.0)
    ring = np.zeros((1, h, w, c), np.float32)
    ring_labels = np.zeros((1, h, w, 2), np.float32)
    kw = dict(top_k=1, temperature=0.05, radius=12.0, neighbourhood="circle")
    args = (query, anchor, labels, ring, ring_labels, np.array([False]))
    exempt = affinity.propagate_jit(*args, restrict_anchor=False, **kw)
    restricted = affinity.propagate_jit(*args, restrict_anchor=True, **kw)
    np.testing.assert_allclose(exempt[0, 0], [0.0, 1.0])
    np.testing.assert_allclose(restricted[0, 0], [1.0, 0.0])


def test_neighbourhood_boundaries():
    dy = jnp.array([0, 0, 11, 8, 12, 13, 0])
    dx = jnp.array([12, 11, 0, 8, 12, 0, 0])
    circle = affinity.in_neighbourhood(dy, dx, 12.0, "circle")
    square = affinity.in_neighbourhood(dy, dx, 12.0, "square")
    # CRW: Euclidean distance < 12 (strict); DINO: |d| <= 12 on both axes.
    np.testing.assert_array_equal(circle, [False, True, True, True, False, False, True])
    np.testing.assert_array_equal(square, [True, True, True, True, True, False, True])
    assert affinity.window_radius(12.0, "circle") == 11
    assert affinity.window_radius(12.0, "square") == 12
    assert affinity.window_radius(12.5, "circle") == 12
    assert affinity.window_radius(None, "circle") is None
    with pytest.raises(ValueError, match="neighbourhood"):
        affinity.window_radius(3.0, "diamond")


@pytest.mark.parametrize("n,k,group", [(1000, 5, 32), (8192, 10, 32), (777, 3, 16), (40, 5, 32)])
def test_top_k_grouped_equals_lax_top_k(n, k, group):
    values = jax.random.normal(jax.random.key(n), (17, n))
    got_v, got_i = affinity.top_k_grouped(values, k, group)
    want_v, want_i = jax.lax.top_k(values, k)
    np.testing.assert_array_equal(got_v, want_v)
    np.testing.assert_array_equal(got_i, want_i)  # no ties among random normals


def test_blocks_cover_the_grid_exactly_once():
    for grid, block, half in [((60, 107), (10, 9), 12), ((7, 5), (3, 2), None), ((4, 9), 8, 1)]:
        plan = affinity.plan_blocks(grid, block, half)
        bh, bw = plan.block
        # Each block writes its own coordinates; assembling must give every position back.
        ys = plan.starts[:, 0, None, None] + np.arange(bh)[None, :, None]
        xs = plan.starts[:, 1, None, None] + np.arange(bw)[None, None, :]
        blocks = np.stack(np.broadcast_arrays(ys, xs), -1)
        got = affinity._assemble(jnp.asarray(blocks), plan)
        want = np.stack(np.meshgrid(np.arange(grid[0]), np.arange(grid[1]), indexing="ij"), -1)
        np.testing.assert_array_equal(got, want)
        # Every block's window holds the whole neighbourhood of every query of the block.
        r = grid[0] + grid[1] if half is None else half
        ws = plan.window_starts
        assert (ws[:, 0] <= np.maximum(plan.starts[:, 0] - r, 0)).all()
        assert (ws[:, 1] <= np.maximum(plan.starts[:, 1] - r, 0)).all()
        assert (ws[:, 0] + plan.window[0] >= np.minimum(plan.starts[:, 0] + bh + r, grid[0])).all()
        assert (ws[:, 1] + plan.window[1] >= np.minimum(plan.starts[:, 1] + bw + r, grid[1])).all()


@pytest.mark.parametrize("channels", [384, 1024])
@pytest.mark.parametrize("preset", sorted(propagation.PRESETS))
def test_1080p_step_memory_is_bounded(preset, channels):
    # Compile (not run) one propagation step on the 1080p grid at stride 8 with 21 context
    # frames, and read XLA's own figure for its temporary buffers.
    cfg = propagation.PRESETS[preset]
    h, w, c, k, n = 135, 240, channels, 5, 20
    kw = dict(
        top_k=cfg.top_k,
        temperature=cfg.temperature,
        radius=cfg.radius,
        neighbourhood=cfg.neighbourhood,
        restrict_anchor=cfg.restrict_first_frame,
        keep_ties=cfg.keep_ties,
        pad_with_anchor=cfg.pad_with_anchor,
    )
    f32 = jnp.float32
    shapes = [
        jax.ShapeDtypeStruct(s, d)
        for s, d in [
            ((h, w, c), f32),
            ((h, w, c), f32),
            ((h, w, k), f32),
            ((n, h, w, c), f32),
            ((n, h, w, k), f32),
            ((n,), bool),
        ]
    ]
    compiled = jax.jit(lambda *a: affinity.propagate(*a, **kw)).lower(*shapes).compile()
    temp = compiled.memory_analysis().temp_size_in_bytes
    half = affinity.window_radius(cfg.radius, cfg.neighbourhood)
    plan = affinity.plan_blocks(
        (h, w), affinity.choose_block((h, w), half, n, cfg.restrict_first_frame), half
    )
    estimate = affinity.step_bytes(plan, n, cfg.restrict_first_frame, c, k, keep_ties=cfg.keep_ties)
    dense_affinity = (h * w) ** 2 * (n + 1) * 4  # 88 GB: what a dense computation would need
    assert temp <= estimate + 16 * 2**20, (temp, estimate)
    assert temp < 1 * 2**30
    assert temp * 100 < dense_affinity
