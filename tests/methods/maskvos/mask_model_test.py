"""Tests of Mask-VOS's mask embedding: V, D, their blocks, soft aggregation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vosjax.methods.maskvos import mask_model

TINY = {"embed_dim": 8, "value_dim": 16}


@pytest.fixture(scope="module")
def head() -> mask_model.MaskHead:
    """One tiny ResNet-18 head shared by the tests (initialising a ResNet costs seconds on CPU).

    Tests that train (and so update batch statistics) work on `nnx.clone(head)`.
    """
    return mask_model.MaskHead("resnet18", **TINY, decoder_widths=(16, 8, 8), rngs=nnx.Rngs(0))


def _param_count(module: nnx.Module) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def _np(x) -> np.ndarray:
    return np.asarray(x[...], np.float64)


def _conv_same(x: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Stride-1 conv with zero padding (k - 1) / 2: x [B, H, W, I], kernel [k, k, I, O]."""
    k = kernel.shape[0]
    p = (k - 1) // 2
    b, h, w, _ = x.shape
    xp = np.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    out = np.zeros((b, h, w, kernel.shape[3])) + bias
    for i in range(k):
        for j in range(k):
            out += np.einsum("bhwi,io->bhwo", xp[:, i : i + h, j : j + w], kernel[i, j])
    return out


def _upsample_bilinear_numpy(x: np.ndarray, factor: int) -> np.ndarray:
    """torch F.interpolate(scale_factor=factor, mode='bilinear', align_corners=False), [B, h, w]."""

    def weights(n: int) -> np.ndarray:
        src = np.clip((np.arange(n * factor) + 0.5) / factor - 0.5, 0.0, None)
        lo = np.minimum(np.floor(src).astype(int), n - 1)
        hi = np.minimum(lo + 1, n - 1)
        frac = src - lo
        m = np.zeros((n * factor, n))
        m[np.arange(n * factor), lo] += 1.0 - frac
        m[np.arange(n * factor), hi] += frac
        return m

    return np.einsum("Hh,bhw,Ww->bHW", weights(x.shape[1]), x, weights(x.shape[2]))


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def test_resblock_matches_numpy_preactivation(head):
    block = head.decoder.block3  # ResBlock(16 -> 8): a projection shortcut
    assert isinstance(block, mask_model.ResBlock)
    x = np.asarray(jax.random.normal(jax.random.key(1), (2, 4, 5, 16)))
    relu = lambda a: np.maximum(a, 0.0)  # noqa: E731
    r = _conv_same(relu(x), _np(block.conv1.kernel), _np(block.conv1.bias))
    r = _conv_same(relu(r), _np(block.conv2.kernel), _np(block.conv2.bias))
    # The released (STCN) shortcut is a 3x3 conv on the un-activated input.
    assert block.shortcut.kernel.shape == (3, 3, 16, 8)
    shortcut = _conv_same(x, _np(block.shortcut.kernel), _np(block.shortcut.bias))
    out = block(jnp.asarray(x))
    assert out.shape == (2, 4, 5, 8)
    np.testing.assert_allclose(out, shortcut + r, rtol=1e-4, atol=1e-4)
    # Same channels: identity shortcut, no projection.
    same = head.value_encoder.fuser.block2
    assert same.shortcut is None
    y = np.asarray(jax.random.normal(jax.random.key(2), (1, 3, 3, 16)))
    r = _conv_same(relu(y), _np(same.conv1.kernel), _np(same.conv1.bias))
    r = _conv_same(relu(r), _np(same.conv2.kernel), _np(same.conv2.bias))
    np.testing.assert_allclose(same(jnp.asarray(y)), y + r, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="ResBlock"):
        block(jnp.asarray(x[..., :8]))


def test_resblock_pointwise_shortcut_option():
    block = mask_model.ResBlock(6, 4, shortcut_kernel=1, rngs=nnx.Rngs(0))
    assert block.shortcut.kernel.shape == (1, 1, 6, 4)
    x = np.asarray(jax.random.normal(jax.random.key(7), (1, 3, 4, 6)))
    relu = lambda a: np.maximum(a, 0.0)  # noqa: E731
    r = _conv_same(relu(x), _np(block.conv1.kernel), _np(block.conv1.bias))
    r = _conv_same(relu(r), _np(block.conv2.kernel), _np(block.conv2.bias))
    shortcut = x @ _np(block.shortcut.kernel)[0, 0] + _np(block.shortcut.bias)
    np.testing.assert_allclose(block(jnp.asarray(x)), shortcut + r, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="shortcut_kernel"):
        mask_model.ResBlock(6, 4, shortcut_kernel=5, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("pool_order", [("max", "mean"), ("mean", "max")])
def test_cbam_matches_numpy(pool_order):
    cbam = mask_model.ChannelSpatialAttention(32, pool_order=pool_order, rngs=nnx.Rngs(0))
    assert cbam.mlp1.kernel.shape == (32, 2)  # reduction 16
    assert cbam.spatial.kernel.shape == (7, 7, 2, 1)
    x = np.asarray(jax.random.normal(jax.random.key(2), (2, 5, 6, 32)))

    def mlp(v):
        hidden = np.maximum(v @ _np(cbam.mlp1.kernel) + _np(cbam.mlp1.bias), 0.0)
        return hidden @ _np(cbam.mlp2.kernel) + _np(cbam.mlp2.bias)

    gate = _sigmoid(mlp(x.mean(axis=(1, 2))) + mlp(x.max(axis=(1, 2))))
    y = x * gate[:, None, None, :]
    # The released ChannelPool stacks [max, mean] (the default order).
    pools = {"max": y.max(-1), "mean": y.mean(-1)}
    maps = np.stack([pools[p] for p in pool_order], axis=-1)
    expected = y * _sigmoid(_conv_same(maps, _np(cbam.spatial.kernel), _np(cbam.spatial.bias)))
    np.testing.assert_allclose(cbam(jnp.asarray(x)), expected, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="pool_order"):
        mask_model.ChannelSpatialAttention(32, pool_order=("max", "max"), rngs=nnx.Rngs(0))


def test_feature_fusion_block_wiring_and_shape(head):
    block = head.value_encoder.fuser  # FeatureFusionBlock(8 + 16 -> 16)
    assert isinstance(block, mask_model.FeatureFusionBlock)
    assert isinstance(block.attention, mask_model.ChannelSpatialAttention)
    res4 = jax.random.normal(jax.random.key(3), (2, 4, 4, 8))
    feature = jax.random.normal(jax.random.key(4), (2, 4, 4, 16))
    out = block(res4, feature)
    assert out.shape == (2, 4, 4, 16)
    # The released fuser concatenates [V's feature, res4].
    x1 = block.block1(jnp.concatenate([feature, res4], axis=-1))
    expected = block.block2(x1 + block.attention(x1))
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
    res4_first = mask_model.FeatureFusionBlock(24, 16, mask_feature_first=False, rngs=nnx.Rngs(0))
    nnx.update(res4_first, nnx.state(block))
    x1 = block.block1(jnp.concatenate([res4, feature], axis=-1))
    expected = block.block2(x1 + block.attention(x1))
    np.testing.assert_allclose(res4_first(res4, feature), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="FeatureFusionBlock"):
        block(res4, feature[..., :8])


def test_frame_mask_encoder_resnet18_shape_and_mask_matters(head):
    model = head.value_encoder
    assert isinstance(model, mask_model.FrameMaskEncoder)
    frames = jax.random.normal(jax.random.key(5), (2, 64, 64, 3))
    res4 = jax.random.normal(jax.random.key(6), (2, 8, 8, 8))
    left = jnp.zeros((2, 64, 64)).at[:, :, :32].set(1.0)
    out_left = model(frames, left, res4, train=False)
    assert out_left.shape == (2, 8, 8, 16)
    # [B, H, W, 1] masks are the same input as [B, H, W].
    np.testing.assert_allclose(model(frames, left[..., None], res4), out_left, rtol=1e-6)
    out_right = model(frames, 1.0 - left, res4, train=False)
    assert np.abs(np.asarray(out_left - out_right)).max() > 1e-3
    assert model.backbone.conv1.kernel.shape == (7, 7, 4, 64)
    with pytest.raises(ValueError, match="masks"):
        model(frames, left[:, :32], res4)
    with pytest.raises(ValueError, match="res4"):
        model(frames, left, res4[..., :4])


def test_frame_mask_encoder_resnet18_backbone_parameter_count(head):
    model = head.value_encoder
    # torchvision ResNet-18: 11,689,512 with fc; layer4 has 8,393,728 and fc 513,000 parameters.
    layer4 = 512 * 256 * 9 + 2 * 512 + 512 * 512 * 9 + 2 * 512  # first block (no shortcut)
    layer4 += 256 * 512 + 2 * 512  # its 1x1 projection shortcut + BN
    layer4 += 2 * (512 * 512 * 9 + 2 * 512)  # second block
    assert layer4 == 8_393_728
    fc = 512 * 1000 + 1000
    expected = 11_689_512 - layer4 - fc + 64 * 1 * 7 * 7  # the mask channel of conv1
    # + conv1's bias (the released 4-channel conv1 is a plain nn.Conv2d).
    assert _param_count(model.backbone) == expected + 64 == 2_785_984
    assert model.backbone.conv1.bias.shape == (64,)
    assert model.project.kernel.shape == (1, 1, 256, 16)


def test_frame_mask_encoder_resnet50_by_eval_shape():
    def build_and_run():
        model = mask_model.FrameMaskEncoder("resnet50", rngs=nnx.Rngs(0))
        frames = jnp.zeros((1, 128, 96, 3))
        out = model(frames, jnp.zeros((1, 128, 96)), jnp.zeros((1, 16, 12, 512)), train=True)
        return out, model

    out, model = nnx.eval_shape(build_and_run)
    assert out.shape == (1, 16, 12, 512)
    assert model.project.kernel.shape == (1, 1, 1024, 512)
    assert model.fuser.block1.conv1.kernel.shape == (3, 3, 1024, 512)


def _decoder_inputs(key: jax.Array, b: int = 2) -> tuple[jax.Array, ...]:
    keys = jax.random.split(key, 4)
    readout = jax.random.normal(keys[0], (b, 4, 6, 16))
    value = jax.random.normal(keys[1], (b, 4, 6, 16))
    f3 = jax.random.normal(keys[2], (b, 4, 6, 128))
    f2 = jax.random.normal(keys[3], (b, 8, 12, 64))
    return readout, value, f3, f2


def test_mask_decoder_full_resolution_and_skip_features_matter(head):
    decoder = head.decoder
    assert isinstance(decoder, mask_model.MaskDecoder)
    assert decoder.block2.conv2.kernel.shape == (3, 3, 8, 8)
    readout, value, f3, f2 = _decoder_inputs(jax.random.key(7))
    out = decoder(readout, value, f3, f2)
    assert out.shape == (2, 32, 48) and out.dtype == jnp.float32
    assert decoder(readout, value, f3, f2, output_size=(30, 45)).shape == (2, 30, 45)
    changed_f2 = decoder(readout, value, f3, f2 + 1.0)
    changed_f3 = decoder(readout, value, f3 * -1.0, f2)
    assert np.abs(np.asarray(out - changed_f2)).max() > 1e-3
    assert np.abs(np.asarray(out - changed_f3)).max() > 1e-3
    # The last step is torch's x4 bilinear upsample (align_corners=False) of the /4 logits.
    quarter = np.asarray(decoder(readout, value, f3, f2, output_size=(8, 12)), np.float64)
    np.testing.assert_allclose(out, _upsample_bilinear_numpy(quarter, 4), rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="f2"):
        decoder(readout, value, f3, f2[..., :32])


def _head_inputs(b: int = 1, k: int = 2) -> tuple[jax.Array, ...]:
    keys = jax.random.split(jax.random.key(8), 6)
    frames = jax.random.normal(keys[0], (b, 32, 48, 3))
    masks = jax.random.uniform(keys[1], (b, k, 32, 48))
    readout = jax.random.normal(keys[2], (b, k, 4, 6, 16))
    res4 = jax.random.normal(keys[3], (b, 4, 6, 8))
    f3 = jax.random.normal(keys[4], (b, 4, 6, 128))
    f2 = jax.random.normal(keys[5], (b, 8, 12, 64))
    return frames, masks, readout, res4, f3, f2


def test_mask_head_two_objects_equal_per_object_calls(head):
    frames, masks, readout, res4, f3, f2 = _head_inputs()
    logits = head.decode(frames, masks, readout, res4, f3, f2, train=False)
    assert logits.shape == (1, 2, 32, 48)
    for k in range(2):
        value = head.value_encoder(frames, masks[:, k], res4)
        single = head.decoder(readout[:, k], value, f3, f2, output_size=(32, 48))
        np.testing.assert_allclose(logits[:, k], single, rtol=1e-4, atol=1e-4)
    # Coarse masks at /8 are resized bilinearly to the frame before V.
    coarse = head.decode(frames, masks[:, :, ::8, ::8], readout, res4, f3, f2)
    assert coarse.shape == (1, 2, 32, 48)
    with pytest.raises(ValueError, match="readout"):
        head.decode(frames, masks, readout[:, :1], res4, f3, f2)


def _align_corners_numpy(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """torch F.interpolate(size, mode='bilinear', align_corners=True) of x [B, h, w]."""

    def sample(n_in: int, n_out: int) -> np.ndarray:
        m = np.zeros((n_out, n_in))
        for i in range(n_out):
            src = i * (n_in - 1) / (n_out - 1) if n_out > 1 else 0.0
            lo = min(int(np.floor(src)), n_in - 1)
            hi = min(lo + 1, n_in - 1)
            m[i, lo] += 1.0 - (src - lo)
            m[i, hi] += src - lo
        return m

    return np.einsum("Hh,bhw,Ww->bHW", sample(x.shape[1], height), x, sample(x.shape[2], width))


def test_resize_align_corners_known_answers():
    x = np.asarray(jax.random.uniform(jax.random.key(12), (2, 3, 4)), np.float64)
    up = mask_model.resize_align_corners(jnp.asarray(x, jnp.float32), 24, 32)
    np.testing.assert_allclose(up, _align_corners_numpy(x, 24, 32), rtol=1e-5, atol=1e-6)
    # Corners coincide; a 2-sample ramp upsampled to 5 samples is exactly linear.
    np.testing.assert_allclose(up[:, 0, 0], x[:, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(up[:, -1, -1], x[:, -1, -1], rtol=1e-6)
    ramp = mask_model.resize_align_corners(jnp.array([[[0.0, 1.0]]]), 1, 5)
    np.testing.assert_allclose(ramp[0, 0], [0.0, 0.25, 0.5, 0.75, 1.0], atol=1e-7)
    # Shrinking samples without antialiasing (the released one-hot labels to /8).
    big = np.asarray(jax.random.uniform(jax.random.key(13), (1, 16, 24)), np.float64)
    down = mask_model.resize_align_corners(jnp.asarray(big, jnp.float32), 2, 3)
    np.testing.assert_allclose(down, _align_corners_numpy(big, 2, 3), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mask_resize", ["align_corners", "half_pixel"])
def test_mask_head_coarse_masks_resize(head, mask_resize):
    frames, masks, readout, res4, f3, f2 = _head_inputs()
    coarse = np.asarray(masks[:, :, ::8, ::8], np.float64)  # [1, 2, 4, 6]
    other = mask_model.MaskHead(
        "resnet18",
        **TINY,
        decoder_widths=(16, 8, 8),
        mask_resize=mask_resize,
        rngs=nnx.Rngs(0),
    )
    nnx.update(other, nnx.state(head))
    values = other.encode(frames, jnp.asarray(coarse, jnp.float32), res4)
    if mask_resize == "align_corners":
        full = _align_corners_numpy(coarse[0], 32, 48)
    else:
        full = _upsample_bilinear_numpy(coarse[0], 8)
    for k in range(2):
        expected = head.value_encoder(frames, jnp.asarray(full[k : k + 1], jnp.float32), res4)
        np.testing.assert_allclose(values[:, k], expected, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="mask_resize"):
        mask_model.MaskHead("resnet18", **TINY, mask_resize="nearest", rngs=nnx.Rngs(0))


@pytest.mark.parametrize("object_batches", [True, False])
def test_mask_head_train_mode_batch_statistics_per_object(head, object_batches):
    frames, masks, readout, res4, f3, f2 = _head_inputs(b=2, k=2)
    res4 = jnp.concatenate([res4, res4], axis=0)[:2]
    model = nnx.clone(head)
    model.object_batches = object_batches
    values = model.encode(frames, masks, res4, train=True)
    if object_batches:  # the released code: one V call (one BatchNorm batch) per object
        for k in range(2):
            alone = nnx.clone(head).value_encoder(frames, masks[:, k], res4, train=True)
            np.testing.assert_allclose(values[:, k], alone, rtol=1e-4, atol=1e-4)
    else:
        folded = nnx.clone(head).value_encoder(
            jnp.repeat(frames, 2, axis=0),
            masks.reshape(4, 32, 48),
            jnp.repeat(res4, 2, axis=0),
            train=True,
        )
        np.testing.assert_allclose(
            values.reshape(4, *values.shape[2:]), folded, rtol=1e-4, atol=1e-4
        )
        alone = nnx.clone(head).value_encoder(frames, masks[:, 0], res4, train=True)
        assert np.abs(np.asarray(values[:, 0] - alone)).max() > 1e-3


def test_gradients_reach_every_parameter(head):
    head = nnx.clone(head)
    frames, masks, readout, res4, f3, f2 = _head_inputs()
    weights = jax.random.normal(jax.random.key(9), (1, 2, 32, 48))

    def loss_fn(model: mask_model.MaskHead) -> jax.Array:
        logits = model.decode(frames, masks, readout, res4, f3, f2, train=True)
        return jnp.sum(logits * weights)

    grads = nnx.jit(nnx.grad(loss_fn))(head)
    leaves = jax.tree_util.tree_leaves_with_path(nnx.state(grads, nnx.Param))
    assert len(leaves) > 50
    dead = [jax.tree_util.keystr(path) for path, g in leaves if not np.any(np.asarray(g) != 0)]
    assert not dead, dead


def _soft_aggregate_numpy(probs: np.ndarray) -> np.ndarray:
    bg = np.prod(1.0 - probs, axis=1, keepdims=True)
    # The module clamps in float32, where 1 - 1e-7 rounds to 1 - 2^-23.
    q = np.clip(np.concatenate([bg, probs], axis=1), 1e-7, float(np.float32(1 - 1e-7)))
    return np.log(q / (1.0 - q))


def test_soft_aggregate_matches_numpy_and_softmax_is_normalised_odds():
    probs = np.asarray(jax.random.uniform(jax.random.key(10), (2, 3, 4, 5)), np.float64)
    probs[0, :, 0, 0] = [0.0, 1.0, 0.5]  # exercises both clamps
    logits = mask_model.soft_aggregate(jnp.asarray(probs, jnp.float32))
    assert logits.shape == (2, 4, 4, 5) and logits.dtype == jnp.float32
    np.testing.assert_allclose(logits, _soft_aggregate_numpy(probs), rtol=1e-4, atol=1e-4)
    # Known answer: one object at p = 0.8 -> q = [0.2, 0.8] -> logits [log 1/4, log 4].
    one = mask_model.soft_aggregate(jnp.full((1, 1, 1, 1), 0.8))
    np.testing.assert_allclose(one[0, :, 0, 0], [np.log(0.25), np.log(4.0)], rtol=1e-5)
    # softmax over the K + 1 classes = q / (1 - q) normalised; its argmax is argmax q.
    inner = (slice(None), slice(None), slice(1, None), slice(1, None))  # away from the clamps
    q = np.concatenate([np.prod(1 - probs, axis=1, keepdims=True), probs], axis=1)[inner]
    odds = q / (1 - q)
    softmax = jax.nn.softmax(logits, axis=1)[inner]
    np.testing.assert_allclose(softmax, odds / odds.sum(1, keepdims=True), rtol=1e-4)
    np.testing.assert_array_equal(np.argmax(softmax, 1), np.argmax(q, 1))


def test_aggregate_objects_absent_objects_are_inert():
    object_logits = jax.random.normal(jax.random.key(11), (2, 3, 4, 5)) * 3.0
    valid = jnp.array([[True, False, True], [True, True, True]])
    out = mask_model.aggregate_objects(object_logits, valid)
    assert out.shape == (2, 4, 4, 5)
    probs = np.asarray(jax.nn.sigmoid(object_logits), np.float64)
    # Example 0 equals aggregating its two present objects only: bg and their logits unchanged.
    present = _soft_aggregate_numpy(probs[:1, [0, 2]])
    np.testing.assert_allclose(out[0, [0, 1, 3]], present[0], rtol=1e-4, atol=1e-4)
    # The absent object sits at the clamp floor, ~0 probability, never the argmax.
    np.testing.assert_allclose(out[0, 2], np.log(1e-7 / (1 - 1e-7)), rtol=1e-5)
    softmax = np.asarray(jax.nn.softmax(out, axis=1))
    assert softmax[0, 2].max() < 1e-6
    assert not np.any(np.argmax(softmax[0], 0) == 2)
    np.testing.assert_allclose(out[1], _soft_aggregate_numpy(probs[1:])[0], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="valid_objects"):
        mask_model.aggregate_objects(object_logits, valid[:, :2])
