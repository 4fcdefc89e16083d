"""Tests of SHLS's networks: backbone strides, the superfeature head's scalar BatchNorm1d(1) and
zero rows, the memory-select channel softmax, SegmenterN, numpy references, parameter counts,
jit and gradients."""

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


def _gate(seed=2) -> segmenter_net.MemorySelect:
    return _materialise(
        lambda: segmenter_net.MemorySelect(L1_DIM, L4_DIM, ATT, hidden=8, rngs=nnx.Rngs(0)),
        seed=seed,
    )


def _segmenter(seed=3) -> segmenter_net.SegmenterN:
    return _materialise(
        lambda: segmenter_net.SegmenterN(L1_DIM, L4_DIM, ATT, width=HIDDEN, rngs=nnx.Rngs(0)),
        seed=seed,
    )


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
    l1_valid = np.array([[1, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]], bool)
    l4_valid = np.array([[1, 0, 1, 1, 0, 0], [1, 1, 0, 0, 0, 0]], bool)  # small ones vanish
    return l1, l4, l1_valid, l4_valid


def _np(x) -> np.ndarray:
    return np.asarray(x[...], np.float64)


def _scalar_bn(y, norm):
    """Eval-mode BatchNorm1d(1): one scalar affine map for all dimensions."""
    mean, var = _np(norm.mean)[0], _np(norm.var)[0]
    return (y - mean) / np.sqrt(var + 1e-5) * _np(norm.scale)[0] + _np(norm.bias)[0]


def _head_reference(head, l1, l4, l1_valid, l4_valid):
    """The released head in float64 numpy, eval mode, with zero rows for absent superpixels."""
    a = np.maximum(_scalar_bn(l1 @ _np(head.l1_proj.kernel) + _np(head.l1_proj.bias),
                              head.l1_norm), 0) * l1_valid[..., None]  # fmt: skip
    b = np.maximum(_scalar_bn(l4 @ _np(head.l4_proj.kernel) + _np(head.l4_proj.bias),
                              head.l4_norm), 0) * l4_valid[..., None]  # fmt: skip
    w = _np(head.fuse.kernel).reshape(2)
    return np.maximum(w[0] * a + w[1] * b + _np(head.fuse.bias)[0], 0), a, b


def _set_stats(head):
    for norm, (m, v) in ((head.l1_norm, (0.3, 2.5)), (head.l4_norm, (-0.2, 0.4))):
        norm.mean[...] = jnp.full((1,), m)
        norm.var[...] = jnp.full((1,), v)


def test_head_parameter_count():
    # Linear 67 -> 32, Linear 259 -> 32 (kernels + biases), two BatchNorm1d(1) (scale + bias:
    # 1 each), 1x1 conv 2 -> 1 (2 + 1).
    expected = (67 * 32 + 32) + (259 * 32 + 32) + 2 * 2 + 3
    assert expected == 10_503
    assert _count(lambda: superfeatures.SuperfeatureHead(67, 259, rngs=nnx.Rngs(0))) == expected


def test_head_batch_norm_is_one_scalar_affine_map():
    head = _head()
    _set_stats(head)
    assert head.l1_norm.scale[...].shape == (1,) and head.l1_norm.mean[...].shape == (1,)
    l1, l4, l1_valid, l4_valid = _head_inputs()
    args = [jnp.asarray(v) for v in (l1, l4, l1_valid, l4_valid)]
    out = head(*args, train=False)
    expected, a, b = _head_reference(head, l1, l4, l1_valid, l4_valid)
    np.testing.assert_allclose(out, expected * l1_valid[..., None], rtol=1e-4, atol=1e-5)
    branches = head.branches(*args, train=False)
    np.testing.assert_allclose(branches[..., 0], a, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(branches[..., 1], b, rtol=1e-4, atol=1e-5)
    # A per-dimension BatchNorm (the former head) would differ: the stats are scalars.
    assert np.count_nonzero(a) > 0 and np.count_nonzero(b) > 0


def test_head_absent_superpixel_gets_a_zero_branch_row_not_relu_of_bn():
    head = _head()
    _set_stats(head)
    # Make ReLU(BN(bias)) clearly positive: an absent row must still be exactly 0.
    head.l4_norm.bias[...] = jnp.full((1,), 5.0)
    l1, l4, l1_valid, l4_valid = _head_inputs()
    args = [jnp.asarray(v) for v in (l1, l4, l1_valid, l4_valid)]
    branches = np.asarray(head.branches(*args, train=False))
    np.testing.assert_array_equal(branches[0, 1, :, 1], 0)  # in L1, absent from the /4 map
    assert (branches[0, 0, :, 1] > 0).any()
    # Listed rows with both branches zero get ReLU(conv bias); rows after the list are 0.
    head.fuse.bias[...] = jnp.full((1,), 0.25)
    listed = jnp.asarray(np.arange(6)[None, :] <= np.array([[4], [2]]))
    out = np.asarray(head(*args, listed, train=False))
    np.testing.assert_allclose(out[0, 4], 0.25)  # listed, no pixel
    np.testing.assert_array_equal(out[0, 5], 0)  # after the largest id
    np.testing.assert_array_equal(out[1, 3:], 0)


def test_head_train_mode_standardises_each_row_and_updates_per_row():
    head = _head()
    l1, l4, l1_valid, l4_valid = _head_inputs()
    args = [jnp.asarray(v) for v in (l1, l4, l1_valid, l4_valid)]
    branches = np.asarray(head.branches(*args, train=True))
    y = l1 @ _np(head.l1_proj.kernel) + _np(head.l1_proj.bias)  # [B, S, D]
    mean, var = y.mean(-1, keepdims=True), y.var(-1, keepdims=True)
    s, b = _np(head.l1_norm.scale)[0], _np(head.l1_norm.bias)[0]
    expected = np.maximum((y - mean) / np.sqrt(var + 1e-5) * s + b, 0) * l1_valid[..., None]
    np.testing.assert_allclose(branches[..., 0], expected, rtol=1e-4, atol=1e-5)
    # torch runs the head once per superpixel: m <- 0.9 m + 0.1 mean_row, valid rows in order.
    m, v = 0.0, 1.0
    d = y.shape[-1]
    for row_mean, row_var in zip(mean[l1_valid][:, 0], var[l1_valid][:, 0], strict=True):
        m = 0.9 * m + 0.1 * row_mean
        v = 0.9 * v + 0.1 * row_var * d / (d - 1)
    np.testing.assert_allclose(head.l1_norm.mean[...], [m], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(head.l1_norm.var[...], [v], rtol=1e-4, atol=1e-6)


def test_head_ignores_garbage_in_absent_rows():
    l1, l4, l1_valid, l4_valid = _head_inputs()
    l1_dirty, l4_dirty = l1.copy(), l4.copy()
    l1_dirty[~l1_valid] = 1e4
    l4_dirty[~l4_valid] = np.nan
    clean_head, dirty_head = _head(), _head()
    valid = (jnp.asarray(l1_valid), jnp.asarray(l4_valid))
    clean = clean_head(jnp.asarray(l1), jnp.asarray(l4), *valid, train=True)
    dirty = dirty_head(jnp.asarray(l1_dirty), jnp.asarray(l4_dirty), *valid, train=True)
    np.testing.assert_allclose(dirty, clean, rtol=1e-5, atol=1e-6)
    grads = nnx.grad(
        lambda m: jnp.sum(m(jnp.asarray(l1_dirty), jnp.asarray(l4_dirty), *valid, train=True))
    )(dirty_head)
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


@pytest.mark.parametrize(
    ("shapes", "field"),
    [
        (((B, 6, L1_DIM + 1), (B, 6, L4_DIM), (B, 6), (B, 6)), "l1_pooled"),
        (((B, 6, L1_DIM), (B, 5, L4_DIM), (B, 6), (B, 6)), "l4_pooled"),
        (((B, 6, L1_DIM), (B, 6, L4_DIM), (B, 6, 1), (B, 6)), "l1_valid"),
        (((B, 6, L1_DIM), (B, 6, L4_DIM), (B, 6), (B, 5)), "l4_valid"),
    ],
)
def test_head_bad_shapes_name_the_argument(shapes, field):
    l1, l4, v1, v4 = (jnp.zeros(s) for s in shapes)
    with pytest.raises(ValueError, match=field):
        _head()(l1, l4, v1.astype(bool), v4.astype(bool))


# ---------------------------------------------------------------- memory select and segmenter


def _conv(cin, cout, k):
    return k * k * cin * cout + cout


def test_memory_select_and_segmenter_parameter_counts():
    # Mem_select: convAM 4 -> 32, convL2 67 -> 32, gate 32 -> 259 (3x3, bias).
    gate = _conv(4, 32, 3) + _conv(67, 32, 3) + _conv(32, 259, 3)
    assert _count(lambda: segmenter_net.MemorySelect(67, 259, rngs=nnx.Rngs(0))) == gate
    # SegmenterN(69): layer2 = ResidualBlock(69 -> 128, /2, 1x1 projection) + (128 -> 128);
    # convFM 777 -> 256; res_L4 = ResBlock(256) (2 x conv+BN); RF2 = Refine(128, 256),
    # RF1 = Refine(73, 256) (convFS + 2 ResBlocks); pred 256 -> 2.
    bn = lambda c: 2 * c  # noqa: E731
    layer2 = (9 * 69 * 128 + bn(128) + 9 * 128 * 128 + bn(128) + 69 * 128 + bn(128)) + 2 * (
        9 * 128 * 128 + bn(128)
    )
    res = 2 * (_conv(256, 256, 3) + bn(256))
    expected = (
        layer2
        + _conv(777, 256, 3)
        + res
        + _conv(128, 256, 3)
        + 2 * res
        + _conv(73, 256, 3)
        + 2 * res
        + _conv(256, 2, 3)
    )
    count = _count(lambda: segmenter_net.SegmenterN(69, 777, 4, rngs=nnx.Rngs(0)))
    assert count == expected


def test_memory_select_softmax_runs_over_channels_per_position():
    gate = _gate()
    f = 2
    att = _normal((1, f, H, W, ATT), 1)
    l1 = _normal((1, f, H, W, L1_DIM), 2)
    weights = gate.gate_weights(att[0], l1[0])  # [F, H/4, W/4, C]
    assert weights.shape == (f, H // 4, W // 4, L4_DIM)
    np.testing.assert_allclose(jnp.sum(weights, -1), 1.0, rtol=1e-5)
    assert float(jnp.std(jnp.sum(weights, (1, 2)))) > 0  # not a spatial softmax
    # Constant L4 per channel: output = gate x L4, frames folded into channels, frame 0 first.
    l4 = jnp.broadcast_to(jnp.arange(1.0, L4_DIM + 1), (1, f, H // 4, W // 4, L4_DIM))
    out = gate(att, l1, l4)
    assert out.shape == (1, H // 4, W // 4, f * L4_DIM)
    expected = jnp.concatenate([weights[0], weights[1]], -1) * jnp.tile(
        jnp.arange(1.0, L4_DIM + 1), f
    )
    np.testing.assert_allclose(out[0], expected, rtol=1e-5, atol=1e-6)


def test_memory_select_matches_numpy_convolutions():
    gate = _gate()
    att = _normal((1, 1, 8, 8, ATT), 3)
    l1 = _normal((1, 1, 8, 8, L1_DIM), 4)

    def conv_s2(x, layer):  # [H, W, Cin] stride 2, padding 1, 3x3
        k, b = _np(layer.kernel), _np(layer.bias)
        xp = np.pad(np.asarray(x, np.float64), ((1, 1), (1, 1), (0, 0)))
        h, w = x.shape[0] // 2, x.shape[1] // 2
        out = np.zeros((h, w, k.shape[-1]))
        for i in range(h):
            for j in range(w):
                out[i, j] = np.einsum("abc,abco->o", xp[2 * i : 2 * i + 3, 2 * j : 2 * j + 3], k)
        return out + b

    x = conv_s2(l1[0, 0], gate.conv_l2) + conv_s2(att[0, 0], gate.conv_am)
    logits = conv_s2(x, gate.gate)
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(gate.gate_weights(att[0], l1[0])[0], expected, rtol=1e-4, atol=1e-6)


def test_segmenter_shapes_and_bad_inputs():
    net = _segmenter()
    l1 = _normal((B, H, W, L1_DIM), 5)
    l4 = _normal((B, H // 4, W // 4, L4_DIM), 6)
    att = _normal((B, H, W, ATT), 7)
    logits = net(l1, l4, att)
    assert logits.shape == (B, H, W, 2) and logits.dtype == jnp.float32
    assert np.isfinite(np.asarray(logits)).all()
    with pytest.raises(ValueError, match="l4"):
        net(l1, l4[:, :-1], att)
    with pytest.raises(ValueError, match="attention"):
        net(l1, l4, att[..., :-1])
    with pytest.raises(ValueError, match="multiples of 4"):
        net(l1[:, :-2], l4, att[:, :-2])


def test_resblock_is_x_plus_two_conv_bn_relu_of_relu_x():
    block = _materialise(lambda: segmenter_net.ResBlock(3, rngs=nnx.Rngs(0)), seed=8)
    x = _normal((1, 5, 5, 3), 9)

    def cbr(y, part):
        k, b = _np(part.conv.kernel), _np(part.conv.bias)
        yp = np.pad(np.asarray(y, np.float64), ((0, 0), (1, 1), (1, 1), (0, 0)))
        out = np.zeros(y.shape)
        for i in range(5):
            for j in range(5):
                out[0, i, j] = np.einsum("abc,abco->o", yp[0, i : i + 3, j : j + 3], k)
        out += b
        norm = part.norm
        out = (out - _np(norm.mean)) / np.sqrt(_np(norm.var) + 1e-5) * _np(norm.scale)
        return np.maximum(out + _np(norm.bias), 0)

    expected = np.asarray(x) + cbr(cbr(np.maximum(x, 0), block.conv1), block.conv2)
    np.testing.assert_allclose(block(x, train=False), expected, rtol=1e-4, atol=1e-5)


def test_upsample2_is_torch_bilinear():
    # torch's bilinear x2 with align_corners=False: [0, 1] -> [0, 0.25, 0.75, 1].
    up = segmenter_net.upsample2(jnp.asarray([[0.0, 1.0]]).reshape(1, 1, 2, 1))
    np.testing.assert_allclose(up[0, 0, :, 0], [0.0, 0.25, 0.75, 1.0])


# ---------------------------------------------------------------- jit and gradients


def _pipeline(encoder, head, gate, net, images, valid):
    """Backbone -> toy superpixel pooling (4 x 4 cells) -> head; backbone -> segmenter."""
    features = encoder(images, train=True)
    l1, l4 = features["layer1"], features["layer4"]  # [B, 16, 16, w], [B, 8, 8, 4w]
    l1_cells = l1.reshape(B, 4, 4, 4, 4, WIDTH).mean((2, 4)).reshape(B, 16, WIDTH)
    l4_cells = l4.reshape(B, 4, 2, 4, 2, 4 * WIDTH).mean((2, 4)).reshape(B, 16, 4 * WIDTH)
    superfeats = head(l1_cells, l4_cells, valid, valid, train=True)
    l1_full = segmenter_net.upsample2(l1)  # [B, H, W, w]
    attention = jnp.concatenate([images, images[..., :1] ** 2], axis=-1)  # ATT = 4 maps
    pair = lambda x: jnp.stack([x, jnp.flip(x, 1)], 1)  # noqa: E731
    mem = gate(pair(attention), pair(l1_full), pair(l4))
    logits = net(l1_full, jnp.concatenate([l4, mem], -1), attention, train=True)
    return superfeats, logits


def _pipeline_models():
    encoder = _materialise(
        lambda: backbone.SHLSBackbone(width=WIDTH, blocks=(1, 1, 1, 1), rngs=nnx.Rngs(0))
    )
    head = _materialise(
        lambda: superfeatures.SuperfeatureHead(WIDTH, 4 * WIDTH, dim=DIM, rngs=nnx.Rngs(0)), seed=1
    )
    gate = _materialise(
        lambda: segmenter_net.MemorySelect(WIDTH, 4 * WIDTH, ATT, hidden=8, rngs=nnx.Rngs(0)),
        seed=2,
    )
    net = _materialise(
        lambda: segmenter_net.SegmenterN(WIDTH, 12 * WIDTH, ATT, width=HIDDEN, rngs=nnx.Rngs(0)),
        seed=3,
    )
    return encoder, head, gate, net


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
    assert float(jnp.max(jnp.abs(jit_models[1].l4_norm.mean[...]))) > 0


def test_gradient_reaches_every_parameter():
    models = _pipeline_models()
    images = _normal((B, H, W, 3), seed=5)
    valid = jnp.asarray(np.arange(16)[None, :] < np.array([[12], [7]]))
    weights = _normal((B, H, W, 2), seed=6)

    def loss(models):
        superfeats, logits = _pipeline(*models, images, valid)
        return jnp.sum(superfeats * jnp.arange(DIM)) + jnp.mean(logits * weights)

    grads = nnx.jit(nnx.grad(loss))(models)
    leaves = jax.tree.leaves_with_path(nnx.state(grads, nnx.Param))
    assert len(leaves) == len(jax.tree.leaves(nnx.state(models, nnx.Param)))
    dead = [jax.tree_util.keystr(p) for p, g in leaves if not np.any(np.asarray(g))]
    assert not dead, dead


# ---------------------------------------------------------------- embedding (SPX_embedding)


def test_embedding_maps_pool_l4_on_the_nearest_quarter_labels():
    from configs.shls import base
    from vosjax.methods.shls import method
    from vosjax.methods.shls import model as model_lib

    config = base.get_config("smoke")
    model = method.SHLS(config).build_model(config, nnx.Rngs(0))
    h, w = 18, 22  # not multiples of 4: /4 grid ceil(ceil(18/2)/2) x ... = 5 x 6
    labels = np.zeros((h, w), np.int32)
    labels[:, 11:] = 1
    labels[9:, :] = 2
    labels[1, 1] = 3  # one pixel: torch's nearest /4 samples rows 0, 3, 7, ... and misses it
    images = _normal((1, h, w, 3), 11)
    maps = model_lib.embedding_maps(model, images, jnp.asarray(labels[None]), 5, train=False)
    assert maps.l1.shape == (1, h, w, 8 + 3) and maps.l4.shape == (1, 5, 6, 32 + 3)
    np.testing.assert_array_equal(maps.l1_valid[0], [True, True, True, True, False])
    np.testing.assert_array_equal(maps.l4_valid[0], [True, True, True, False, False])
    np.testing.assert_array_equal(maps.listed[0], [True, True, True, True, False])
    rows = np.floor(np.arange(5) * np.float32(h / 5)).astype(int)
    cols = np.floor(np.arange(6) * np.float32(w / 6)).astype(int)
    labels4 = labels[rows][:, cols]
    # The /4 info channels: size / (5 x 6), mean row / 4, mean column / 5 of the /4 labels.
    ys, xs = np.nonzero(labels4 == 2)
    np.testing.assert_allclose(
        maps.l4[0, 4, 0, -3:], [len(ys) / 30, ys.mean() / 4, xs.mean() / 5], rtol=1e-5
    )
    # The L4 mean of superpixel 1 is over its /4 cells.
    np.testing.assert_allclose(
        maps.l4_mean[0, 1], np.asarray(maps.l4[0])[labels4 == 1].mean(0), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(
        maps.l1_mean[0, 3], np.asarray(maps.l1[0, 1, 1]), rtol=1e-5, atol=1e-6
    )


def test_normalize_uses_the_given_statistics():
    from vosjax.methods.shls import model as model_lib

    frames = jnp.asarray(np.array(model_lib.DAVIS_MEAN) * 255 + 0.0)[None, None]
    np.testing.assert_allclose(
        model_lib.normalize(frames, model_lib.DAVIS_MEAN, model_lib.DAVIS_STD), 0, atol=1e-6
    )
    one = model_lib.normalize(jnp.full((1, 3), 255.0), model_lib.MSRA_MEAN, model_lib.MSRA_STD)
    expected = (1 - np.array(model_lib.MSRA_MEAN)) / np.array(model_lib.MSRA_STD)
    np.testing.assert_allclose(one[0], expected, rtol=1e-6)
