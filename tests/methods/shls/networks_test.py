"""Tests of SHLS's networks: backbone strides, masked batch norm of the superfeature head, the
segmenter's memory-select gate, numpy references, parameter counts, jit and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vosjax.methods.shls import backbone, segmenter_net, superfeatures

# Tiny sizes: width 8 backbone on 32 x 32 images; head and segmenter on few channels.
WIDTH = 8
L1_DIM, L4_DIM, DIM, ATT, HIDDEN = 5, 7, 4, 4, 16
B, H, W = 2, 32, 32


def _count(build) -> int:
    """nnx.Param scalars of a model built abstractly (nothing allocated)."""
    model = nnx.eval_shape(build)
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _materialise(build, seed: int = 0) -> nnx.Module:
    """Builds a model with numpy-drawn parameters, skipping JAX's (slow to compile) initialisers.

    Kernels are He-normal, biases N(0, 0.1), norm scales 1 + N(0, 0.1); running statistics start
    at mean 0 and var 1 as a fresh BatchNorm.
    """
    graphdef, state = nnx.split(nnx.eval_shape(build))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-2].key
        if name == "var":
            value = np.ones(leaf.shape)
        elif name == "mean":
            value = np.zeros(leaf.shape)
        elif name == "scale":
            value = 1.0 + 0.1 * rng.normal(size=leaf.shape)
        elif name == "bias":
            value = 0.1 * rng.normal(size=leaf.shape)
        else:
            value = rng.normal(size=leaf.shape) * np.sqrt(2 / np.prod(leaf.shape[:-1]))
        return jnp.asarray(value, leaf.dtype)

    return nnx.merge(graphdef, jax.tree.map_with_path(fill, state))


def _normal(shape, seed=0, scale=1.0) -> jnp.ndarray:
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape) * scale, jnp.float32)


def _backbone(**kwargs) -> backbone.SHLSBackbone:
    return _materialise(lambda: backbone.SHLSBackbone(width=WIDTH, rngs=nnx.Rngs(0), **kwargs))


def _head() -> superfeatures.SuperfeatureHead:
    return _materialise(
        lambda: superfeatures.SuperfeatureHead(L1_DIM, L4_DIM, dim=DIM, rngs=nnx.Rngs(0)), seed=1
    )


def _segmenter(seed=2) -> segmenter_net.SegmentationNet:
    return _materialise(
        lambda: segmenter_net.SegmentationNet(
            L1_DIM, L4_DIM, attention_dim=ATT, hidden=HIDDEN, rngs=nnx.Rngs(0)
        ),
        seed=seed,
    )


def _segmenter_inputs(seed=0) -> dict[str, jnp.ndarray]:
    return {
        "cur_l4": _normal((B, H // 4, W // 4, L4_DIM), seed),
        "prev_l4": _normal((B, H // 4, W // 4, L4_DIM), seed + 1),
        "l1": _normal((B, H // 2, W // 2, L1_DIM), seed + 2),
        "attention": _normal((B, H, W, ATT), seed + 3),
        "prev_mask": jnp.asarray(np.random.default_rng(seed + 4).uniform(size=(B, H, W))),
    }


# ---------------------------------------------------------------- backbone


def test_backbone_parameter_count():
    # stem 7*7*3*64 + BN 2*64; layer1 2 x (2*9*64*64 + 4*64);
    # layer2 (9*64*128 + 9*128*128 + 4*128 + 64*128 + 2*128) + (2*9*128*128 + 4*128);
    # layer3 (9*128*256 + 9*256*256 + 4*256 + 128*256 + 2*256) + (2*9*256*256 + 4*256);
    # layer4 2 x (2*9*256*256 + 4*256) (no projection: 256 -> 256, stride 1).
    expected = 9_536 + 147_968 + 525_568 + 2_099_712 + 2_361_344
    assert expected == 5_144_128
    assert _count(lambda: backbone.SHLSBackbone(rngs=nnx.Rngs(0))) == expected


def test_backbone_strides_and_channels():
    model = _backbone()
    out = model(_normal((B, H, W, 3)))
    expected = {
        "stem": (B, 16, 16, WIDTH),
        "layer1": (B, 16, 16, WIDTH),
        "layer2": (B, 8, 8, 2 * WIDTH),
        "layer3": (B, 8, 8, 4 * WIDTH),
        "layer4": (B, 8, 8, 4 * WIDTH),
    }
    assert {k: v.shape for k, v in out.items()} == expected
    assert {v.dtype for v in out.values()} == {jnp.dtype(jnp.float32)}
    assert (model.layer1_features, model.layer4_features) == (WIDTH, 4 * WIDTH)
    # Post-ReLU residual outputs.
    assert float(jnp.min(out["layer4"])) >= 0.0 and float(jnp.max(out["layer4"])) > 0.0
    # Only layer2's first block strides; layer3's first block projects 2w -> 4w at stride 1.
    assert model.layers[1][0].conv1.strides == 2
    assert model.layers[2][0].conv1.strides == 1
    assert model.layers[2][0].downsample.conv.strides == 1
    assert model.layers[3][0].downsample is None


def test_backbone_sides_round_up_and_blocks_option():
    model = nnx.eval_shape(
        lambda: backbone.SHLSBackbone(width=WIDTH, blocks=(1, 1, 1, 3), rngs=nnx.Rngs(0))
    )
    assert [len(layer) for layer in model.layers] == [1, 1, 1, 3]
    out = nnx.eval_shape(
        lambda m, x: m(x), model, jax.ShapeDtypeStruct((1, 30, 37, 3), jnp.float32)
    )
    assert out["layer1"].shape == (1, 15, 19, WIDTH)
    assert out["layer4"].shape == (1, 8, 10, 4 * WIDTH)


def test_backbone_stem_batch_norm_is_torch_like():
    model = _backbone()
    x = _normal((B, H, W, 3)) + 1.0
    before = jax.tree.map(np.array, nnx.state(model, nnx.BatchStat))
    model(x, train=False)
    after = jax.tree.map(np.array, nnx.state(model, nnx.BatchStat))
    jax.tree.map(np.testing.assert_array_equal, before, after)
    conv = np.asarray(model.conv1(x), np.float64)
    stem = model(x, train=True)["stem"]
    mean, var = conv.mean(axis=(0, 1, 2)), conv.var(axis=(0, 1, 2))
    scale, bias = np.asarray(model.norm1.scale[...]), np.asarray(model.norm1.bias[...])
    expected = np.maximum((conv - mean) / np.sqrt(var + 1e-5) * scale + bias, 0)
    np.testing.assert_allclose(stem, expected, rtol=1e-3, atol=1e-4)
    # torch momentum 0.1 from mean 0 / var 1.
    np.testing.assert_allclose(model.norm1.mean[...], 0.1 * mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(model.norm1.var[...], 0.9 + 0.1 * var, rtol=1e-4, atol=1e-6)


def test_backbone_group_norm_has_no_batch_stats():
    model = _backbone(norm="group", blocks=(1, 1, 1, 1))
    assert not jax.tree.leaves(nnx.state(model, nnx.BatchStat))
    x = _normal((1, 16, 16, 3))
    np.testing.assert_array_equal(model(x, train=True)["layer4"], model(x)["layer4"])


def test_backbone_bfloat16_compute_keeps_float32_params():
    model = nnx.eval_shape(
        lambda: backbone.SHLSBackbone(width=WIDTH, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    )
    assert {p.dtype for p in jax.tree.leaves(nnx.state(model, nnx.Param))} == {
        jnp.dtype(jnp.float32)
    }
    out = nnx.eval_shape(lambda m, x: m(x), model, jax.ShapeDtypeStruct((1, H, W, 3), jnp.float32))
    assert {v.dtype for v in out.values()} == {jnp.dtype(jnp.bfloat16)}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"width": 0}, "width"), ({"blocks": (2, 2, 2)}, "blocks"), ({"norm": "layer"}, "norm")],
)
def test_backbone_bad_options_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        backbone.SHLSBackbone(rngs=nnx.Rngs(0), **kwargs)


def test_backbone_rejects_non_rgb():
    with pytest.raises(ValueError, match="images"):
        _backbone()(jnp.zeros((1, 8, 8, 4)))


# ---------------------------------------------------------------- superfeature head


def _head_inputs(seed=0):
    rng = np.random.default_rng(seed)
    l1 = rng.normal(size=(B, 6, L1_DIM)) + 0.5
    l4 = rng.normal(size=(B, 6, L4_DIM)) * 2.0
    valid = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]], bool)
    return l1, l4, valid


def _np(x) -> np.ndarray:
    return np.asarray(x[...], np.float64)


def _head_reference(head, l1, l4, valid):
    """The head in float64 numpy, train mode: batch statistics over the valid rows only."""

    def branch(x, proj, norm):
        y = x @ _np(proj.kernel) + _np(proj.bias)
        rows = y[valid]
        mean, var = rows.mean(axis=0), rows.var(axis=0)
        y = (y - mean) / np.sqrt(var + 1e-5) * _np(norm.scale) + _np(norm.bias)
        return np.maximum(y, 0), mean, var

    a, mean1, var1 = branch(l1, head.l1_proj, head.l1_norm)
    b, mean4, var4 = branch(l4, head.l4_proj, head.l4_norm)
    w = _np(head.fuse.kernel)[:, 0]
    out = np.maximum(w[0] * a + w[1] * b + _np(head.fuse.bias)[0], 0)
    return np.where(valid[..., None], out, 0), (mean1, var1, mean4, var4)


def test_head_parameter_count():
    # Linear 67 -> 32, Linear 259 -> 32 (kernels + biases), two BN (scale + bias), 1x1 conv 2 -> 1.
    expected = (67 * 32 + 32) + (259 * 32 + 32) + 2 * 2 * 32 + 3
    assert expected == 10_627
    assert _count(lambda: superfeatures.SuperfeatureHead(67, 259, rngs=nnx.Rngs(0))) == expected


def test_head_matches_numpy_reference_and_updates_running_stats():
    head = _head()
    l1, l4, valid = _head_inputs()
    out = head(jnp.asarray(l1), jnp.asarray(l4), jnp.asarray(valid), train=True)
    assert out.shape == (B, 6, DIM) and out.dtype == jnp.float32
    expected, (mean1, var1, mean4, var4) = _head_reference(head, l1, l4, valid)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    assert np.count_nonzero(expected) > 0
    np.testing.assert_allclose(head.l1_norm.mean[...], 0.1 * mean1, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(head.l1_norm.var[...], 0.9 + 0.1 * var1, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(head.l4_norm.mean[...], 0.1 * mean4, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(head.l4_norm.var[...], 0.9 + 0.1 * var4, rtol=1e-4, atol=1e-6)


def test_head_ignores_garbage_in_invalid_rows():
    l1, l4, valid = _head_inputs()
    clean_head, dirty_head = _head(), _head()
    # More padding (6 -> 9 rows) filled with garbage: neither the statistics nor the valid rows
    # may change.
    pad = ((0, 0), (0, 3), (0, 0))
    l1_dirty, l4_dirty = np.pad(l1, pad), np.pad(l4, pad)
    valid_dirty = np.pad(valid, ((0, 0), (0, 3)))
    l1_dirty[~valid_dirty] = 1e4
    l4_dirty[~valid_dirty] = np.nan
    clean = clean_head(jnp.asarray(l1), jnp.asarray(l4), jnp.asarray(valid), train=True)
    dirty = dirty_head(
        jnp.asarray(l1_dirty), jnp.asarray(l4_dirty), jnp.asarray(valid_dirty), train=True
    )
    np.testing.assert_allclose(dirty[:, :6], clean, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(dirty)[~valid_dirty], 0)
    np.testing.assert_array_equal(np.asarray(clean)[~valid], 0)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
        nnx.state(clean_head, nnx.BatchStat),
        nnx.state(dirty_head, nnx.BatchStat),
    )
    # NaN padding must not reach the gradients either.
    grads = nnx.grad(
        lambda m: jnp.sum(
            m(jnp.asarray(l1_dirty), jnp.asarray(l4_dirty), jnp.asarray(valid_dirty), train=True)
        )
    )(dirty_head)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_head_eval_mode_uses_running_averages():
    head = _head()
    l1, l4, valid = _head_inputs()
    out = head(jnp.asarray(l1), jnp.asarray(l4), jnp.asarray(valid), train=False)
    # Fresh running averages (mean 0, var 1): the norm is x / sqrt(1 + eps) * scale + bias.
    a = l1 @ _np(head.l1_proj.kernel) + _np(head.l1_proj.bias)
    a = np.maximum(a / np.sqrt(1 + 1e-5) * _np(head.l1_norm.scale) + _np(head.l1_norm.bias), 0)
    b = l4 @ _np(head.l4_proj.kernel) + _np(head.l4_proj.bias)
    b = np.maximum(b / np.sqrt(1 + 1e-5) * _np(head.l4_norm.scale) + _np(head.l4_norm.bias), 0)
    w = _np(head.fuse.kernel)[:, 0]
    expected = np.maximum(w[0] * a + w[1] * b + _np(head.fuse.bias)[0], 0) * valid[..., None]
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(head.l1_norm.mean[...], 0)


def test_head_batch_without_valid_rows_keeps_running_stats():
    head = _head()
    l1, l4, _ = _head_inputs()
    valid = jnp.zeros((B, 6), bool)

    def loss(model):
        return jnp.sum(model(jnp.asarray(l1), jnp.asarray(l4), valid, train=True) ** 2)

    out = head(jnp.asarray(l1), jnp.asarray(l4), valid, train=True)
    np.testing.assert_array_equal(out, 0)
    np.testing.assert_array_equal(head.l1_norm.mean[...], 0)
    np.testing.assert_array_equal(head.l4_norm.var[...], 1)
    grads = nnx.grad(loss)(head)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


@pytest.mark.parametrize(
    ("shapes", "field"),
    [
        (((B, 6, L1_DIM + 1), (B, 6, L4_DIM), (B, 6)), "l1_pooled"),
        (((B, 6, L1_DIM), (B, 5, L4_DIM), (B, 6)), "l4_pooled"),
        (((B, 6, L1_DIM), (B, 6, L4_DIM), (B, 6, 1)), "valid"),
    ],
)
def test_head_bad_shapes_name_the_argument(shapes, field):
    l1, l4, valid = (jnp.zeros(s) for s in shapes)
    with pytest.raises(ValueError, match=field):
        _head()(l1, l4, valid.astype(bool))


# ---------------------------------------------------------------- segmenter


def test_segmenter_parameter_count():
    # gate: conv3x3 (67 + 5 -> 32), conv3x3 (32 -> 32), conv1x1 (32 -> 2);
    # modulator: conv3x3 (259 + 5 -> 128) + ResBlock(128);
    # /2: conv1x1 (128 -> 64), conv3x3 (67 -> 64), ResBlock(64);
    # /1: conv1x1 (64 -> 32), conv3x3 (5 -> 32), ResBlock(32); predictor conv3x3 (32 -> 2).
    def conv(cin, cout, k):
        return k * k * cin * cout + cout

    expected = (
        conv(72, 32, 3)
        + conv(32, 32, 3)
        + conv(32, 2, 1)
        + conv(264, 128, 3)
        + 2 * conv(128, 128, 3)
        + conv(128, 64, 1)
        + conv(67, 64, 3)
        + 2 * conv(64, 64, 3)
        + conv(64, 32, 1)
        + conv(5, 32, 3)
        + 2 * conv(32, 32, 3)
        + conv(32, 2, 3)
    )
    assert expected == 772_900
    assert _count(lambda: segmenter_net.SegmentationNet(67, 259, rngs=nnx.Rngs(0))) == expected


def test_segmenter_shapes_and_gate_is_a_distribution():
    net = _segmenter()
    inputs = _segmenter_inputs()
    logits = net(**inputs, train=True)
    assert logits.shape == (B, H, W, 2) and logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all()
    gate = net.memory_gate(inputs["l1"], inputs["attention"], inputs["prev_mask"])
    assert gate.shape == (B, H // 4, W // 4, 2) and gate.dtype == jnp.float32
    np.testing.assert_allclose(jnp.sum(gate, axis=-1), 1.0, rtol=1e-6)
    assert float(jnp.min(gate)) > 0 and float(jnp.std(gate[..., 0])) > 0


def test_gate_is_a_convex_combination_of_current_and_previous():
    inputs = _segmenter_inputs()
    net, other_gate = _segmenter(seed=2), _segmenter(seed=2)
    # A different gate (other conv weights), the rest of the network equal.
    for name in ("gate1", "gate2", "gate_out"):
        layer = getattr(other_gate, name)
        layer.kernel[...] = layer.kernel[...] * -1.5
        layer.bias[...] = layer.bias[...] + 0.3
    same = {**inputs, "prev_l4": inputs["cur_l4"]}
    # With previous == current, g0 cur + g1 prev = cur whatever the gate.
    np.testing.assert_allclose(net(**same), other_gate(**same), rtol=1e-5, atol=1e-5)
    g_net = net.memory_gate(inputs["l1"], inputs["attention"], inputs["prev_mask"])
    g_other = other_gate.memory_gate(inputs["l1"], inputs["attention"], inputs["prev_mask"])
    assert float(jnp.max(jnp.abs(g_net - g_other))) > 0.01
    assert float(jnp.max(jnp.abs(net(**inputs) - other_gate(**inputs)))) > 1e-3
    # A saturated gate picks one side: channel 0 weighs the current frame, channel 1 the previous.
    bias = np.zeros(2, np.float32)
    for side, key in ((0, "cur_l4"), (1, "prev_l4")):
        bias[:] = 0
        bias[side] = 1e3
        net.gate_out.bias[...] = jnp.asarray(bias)
        picked = {**inputs, "cur_l4": inputs[key], "prev_l4": inputs[key]}
        np.testing.assert_allclose(net(**inputs), net(**picked), rtol=1e-5, atol=1e-5)


def test_segmenter_pool_and_upsample_known_values():
    x = jnp.arange(16.0).reshape(1, 4, 4, 1)
    np.testing.assert_allclose(segmenter_net._avg_pool(x, 2)[0, ..., 0], [[2.5, 4.5], [10.5, 12.5]])
    # torch's bilinear x2 with align_corners=False: [0, 1] -> [0, 0.25, 0.75, 1].
    up = segmenter_net._upsample2(jnp.asarray([[0.0, 1.0]]).reshape(1, 1, 2, 1))
    np.testing.assert_allclose(up[0, 0, :, 0], [0.0, 0.25, 0.75, 1.0])


@pytest.mark.parametrize(
    ("field", "shape"),
    [
        ("cur_l4", (B, H // 4, W // 4, L4_DIM + 1)),
        ("prev_l4", (B, H // 2, W // 2, L4_DIM)),
        ("l1", (B, H // 4, W // 4, L1_DIM)),
        ("prev_mask", (B, H, W, 1)),
        ("attention", (B, H, W, ATT + 1)),
    ],
)
def test_segmenter_bad_shapes_name_the_argument(field, shape):
    inputs = {**_segmenter_inputs(), field: jnp.zeros(shape)}
    with pytest.raises(ValueError, match=field):
        _segmenter()(**inputs)


def test_segmenter_needs_sides_multiple_of_4():
    net = _segmenter()
    with pytest.raises(ValueError, match="multiples of 4"):
        net.memory_gate(
            jnp.zeros((1, 3, 3, L1_DIM)), jnp.zeros((1, 6, 6, ATT)), jnp.zeros((1, 6, 6))
        )
    with pytest.raises(ValueError, match="hidden"):
        segmenter_net.SegmentationNet(L1_DIM, L4_DIM, hidden=3, rngs=nnx.Rngs(0))


# ---------------------------------------------------------------- jit and gradients


def _pipeline(encoder, head, net, images, valid):
    """Backbone -> toy superpixel pooling (4 x 4 cells) -> head; backbone -> segmenter."""
    features = encoder(images, train=True)
    l1, l4 = features["layer1"], features["layer4"]  # [B, 16, 16, w], [B, 8, 8, 4w]
    l1_cells = segmenter_net._avg_pool(l1, 4).reshape(B, 16, WIDTH)
    l4_cells = segmenter_net._avg_pool(l4, 2).reshape(B, 16, 4 * WIDTH)
    superfeats = head(l1_cells, l4_cells, valid, train=True)
    attention = jnp.concatenate([images, images[..., :1] ** 2], axis=-1)  # ATT = 4 maps
    prev_mask = jax.nn.sigmoid(images[..., 0])
    # The previous frame's L4: the current one flipped, so that the gate matters.
    logits = net(l4, jnp.flip(l4, axis=1), l1, attention, prev_mask, train=True)
    return superfeats, logits


def _pipeline_models():
    encoder = _materialise(
        lambda: backbone.SHLSBackbone(width=WIDTH, blocks=(1, 1, 1, 1), rngs=nnx.Rngs(0))
    )
    head = _materialise(
        lambda: superfeatures.SuperfeatureHead(WIDTH, 4 * WIDTH, dim=DIM, rngs=nnx.Rngs(0)), seed=1
    )
    net = _materialise(
        lambda: segmenter_net.SegmentationNet(
            WIDTH, 4 * WIDTH, attention_dim=ATT, hidden=HIDDEN, rngs=nnx.Rngs(0)
        ),
        seed=2,
    )
    return encoder, head, net


def test_train_mode_jit_matches_eager_and_updates_batch_stats():
    images = _normal((B, H, W, 3))
    valid = jnp.asarray(np.arange(16)[None, :] < np.array([[12], [7]]))
    eager_models, jit_models = _pipeline_models(), _pipeline_models()
    eager = _pipeline(*eager_models, images, valid)
    jitted = nnx.jit(_pipeline)(*jit_models, images, valid)
    for a, b in zip(eager, jitted, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    for a, b in zip(eager_models, jit_models, strict=True):
        jax.tree.map(
            lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-6),
            nnx.state(a, nnx.BatchStat),
            nnx.state(b, nnx.BatchStat),
        )
    # The stats moved away from their initial values (mean 0) in train mode.
    assert float(jnp.max(jnp.abs(jit_models[1].l4_norm.mean[...]))) > 0


def test_gradient_reaches_every_parameter():
    encoder, head, net = _pipeline_models()
    images = _normal((B, H, W, 3), seed=5)
    valid = jnp.asarray(np.arange(16)[None, :] < np.array([[12], [7]]))
    weights = _normal((B, H, W, 2), seed=6)

    def loss(models):
        superfeats, logits = _pipeline(*models, images, valid)
        return jnp.sum(superfeats * jnp.arange(DIM)) + jnp.mean(logits * weights)

    grads = nnx.jit(nnx.grad(loss))((encoder, head, net))
    leaves = jax.tree.leaves_with_path(nnx.state(grads, nnx.Param))
    assert len(leaves) == len(jax.tree.leaves(nnx.state((encoder, head, net), nnx.Param)))
    dead = [jax.tree_util.keystr(p) for p, g in leaves if not np.any(np.asarray(g))]
    assert not dead, dead
