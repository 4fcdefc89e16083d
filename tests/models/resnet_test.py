"""Tests for vosjax.models.resnet: parameter counts, strides, norms, padding, dtype and jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vosjax.models import resnet


def _count(build) -> int:
    """Number of nnx.Param scalars of a model built abstractly (nothing allocated)."""
    model = nnx.eval_shape(build)
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _materialise(build, seed: int = 0) -> nnx.Module:
    """Builds a model with numpy-drawn He-normal kernels (and fresh norms), skipping JAX's init.

    Compiling JAX's random initialisers costs about a second per distinct shape on a 2-core CPU;
    tests of the forward pass need realistic values, not the library's initialisers.
    """
    graphdef, state = nnx.split(nnx.eval_shape(build))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-2].key  # the last entry is the Variable's `.value`
        if name in ("scale", "var"):
            value = np.ones(leaf.shape)
        elif name in ("bias", "mean"):
            value = np.zeros(leaf.shape)
        else:
            value = rng.normal(size=leaf.shape) * np.sqrt(2 / np.prod(leaf.shape[:-1]))
        return jnp.asarray(value, leaf.dtype)

    return nnx.merge(graphdef, jax.tree.map_with_path(fill, state))


# One input shape for most forward tests, so that eager op compilations are shared.
_SHAPE = (2, 32, 32, 3)


def _images(shape, seed=0) -> jnp.ndarray:
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


# BatchNorm channels of ResNet-18: stem 64; layer1 4 x 64; layer2 4 x 128 + downsample 128;
# layer3 4 x 256 + 256; layer4 4 x 512 + 512.
_RESNET18_BN_CHANNELS = 64 + 4 * 64 + 5 * 128 + 5 * 256 + 5 * 512


def test_parameter_counts_match_torchvision():
    assert _count(lambda: resnet.resnet18(num_classes=1000, rngs=nnx.Rngs(0))) == 11_689_512
    assert _count(lambda: resnet.resnet50(num_classes=1000, rngs=nnx.Rngs(0))) == 25_557_032
    # Without the head: minus 512 x 1000 + 1000 and 2048 x 1000 + 1000.
    assert _count(lambda: resnet.resnet18(rngs=nnx.Rngs(0))) == 11_689_512 - 513_000


def test_parameter_counts_of_variants():
    base = 11_689_512 - 513_000
    # A 4th input channel adds one 7 x 7 x 64 slice to conv1.
    assert _count(lambda: resnet.resnet18(in_channels=4, rngs=nnx.Rngs(0))) == base + 49 * 64
    # Frozen BatchNorm holds no parameters: minus scale and bias of every norm.
    frozen = _count(lambda: resnet.resnet18(norm="frozen_batch", rngs=nnx.Rngs(0)))
    assert frozen == base - 2 * _RESNET18_BN_CHANNELS
    # GroupNorm has the same affine parameters as BatchNorm.
    assert _count(lambda: resnet.resnet18(norm="group", rngs=nnx.Rngs(0))) == base
    # Stride and dilation change no parameter.
    assert _count(lambda: resnet.resnet18(output_stride=8, dilation=True, rngs=nnx.Rngs(0))) == base


@pytest.mark.parametrize(
    ("output_stride", "dilation", "strides", "dilations"),
    [
        (32, False, [1, 2, 2, 2], [1, 1, 1, 1]),
        (16, False, [1, 2, 2, 1], [1, 1, 1, 1]),
        (8, False, [1, 2, 1, 1], [1, 1, 1, 1]),
        (16, True, [1, 2, 2, 1], [1, 1, 1, 2]),
        (8, True, [1, 2, 1, 1], [1, 1, 2, 4]),
    ],
)
def test_layer_strides(output_stride, dilation, strides, dilations):
    assert resnet.layer_strides(output_stride, dilation) == (strides, dilations)


def test_dilated_layers_follow_torchvision():
    model = nnx.eval_shape(
        lambda: resnet.resnet50(output_stride=8, dilation=True, rngs=nnx.Rngs(0))
    )
    layer3, layer4 = model.layers[2], model.layers[3]
    # The first block of a layer keeps the previous layer's dilation, the others take the new one.
    assert [b.conv2.kernel_dilation for b in layer3] == [1] + [2] * 5
    assert [b.conv2.kernel_dilation for b in layer4] == [2, 4, 4]
    assert layer3[0].conv2.padding == ((1, 1), (1, 1))
    assert layer4[1].conv2.padding == ((4, 4), (4, 4))
    assert layer3[0].conv2.strides == 1 and layer3[0].downsample.conv.strides == 1


@pytest.mark.parametrize(
    ("output_stride", "sizes"),
    [(32, (16, 8, 4, 2)), (16, (16, 8, 4, 4)), (8, (16, 8, 8, 8))],
)
def test_resnet18_stage_shapes(output_stride, sizes):
    model = _materialise(lambda: resnet.resnet18(output_stride=output_stride, rngs=nnx.Rngs(0)))
    out = model(_images((2, 64, 64, 3)))
    assert out["stem"].shape == (2, 32, 32, 64)
    for i, (size, channels) in enumerate(zip(sizes, (64, 128, 256, 512), strict=True)):
        assert out[f"layer{i + 1}"].shape == (2, size, size, channels)
    assert "logits" not in out


def test_maskvos_value_encoder_shapes():
    # Mask-VOS's V: ResNet-50, RGB + mask input, layer3 stride 1, no layer4, output stride 8.
    model = nnx.eval_shape(
        lambda: resnet.resnet50(in_channels=4, output_stride=8, num_stages=3, rngs=nnx.Rngs(0))
    )
    # Shapes only: trace the forward pass without running it.
    out = nnx.eval_shape(
        lambda m, x: m(x), model, jax.ShapeDtypeStruct((1, 64, 64, 4), jnp.float32)
    )
    assert sorted(out) == ["layer1", "layer2", "layer3", "stem"]
    assert out["layer1"].shape == (1, 16, 16, 256)
    assert out["layer2"].shape == (1, 8, 8, 512)
    assert out["layer3"].shape == (1, 8, 8, 1024)


def test_head_and_odd_input_size():
    model = nnx.eval_shape(lambda: resnet.resnet18(num_classes=7, rngs=nnx.Rngs(0)))
    out = nnx.eval_shape(
        lambda m, x: m(x), model, jax.ShapeDtypeStruct((2, 33, 50, 3), jnp.float32)
    )
    # torch-style symmetric padding: ceil(33 / 2) = 17, pool -> 9, then 5, 3, 2.
    assert out["stem"].shape == (2, 17, 25, 64)
    assert out["layer4"].shape == (2, 2, 2, 512)
    assert out["logits"].shape == (2, 7)


def test_head_init_is_torch_uniform():
    values = np.asarray(resnet._symmetric_uniform(0.25)(jax.random.key(0), (4000,)))
    assert values.min() >= -0.25 and values.max() <= 0.25
    assert values.min() < -0.24 and values.max() > 0.24


def test_stem_pads_symmetrically_like_torch():
    model = _materialise(lambda: resnet.resnet18(rngs=nnx.Rngs(0)))
    # A delta kernel at the centre tap of channel 0: output (i, j) reads input (2i, 2j) with
    # torch's padding 3 (flax 'SAME' would pad (2, 3) and read (2i + 1, 2j + 1)).
    kernel = np.zeros((7, 7, 3, 64), np.float32)
    kernel[3, 3, 0, 0] = 1.0
    model.conv1.kernel[...] = jnp.asarray(kernel)
    x = _images(_SHAPE)
    stem = model(x)["stem"]
    # Fresh BatchNorm in eval mode: mean 0, var 1 -> x / sqrt(1 + eps).
    expected = np.maximum(np.asarray(x)[..., ::2, ::2, 0], 0) / np.sqrt(1 + 1e-5)
    np.testing.assert_allclose(np.asarray(stem)[..., 0], expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(stem)[..., 1:], 0)


def test_batch_stats_update_in_train_mode_only():
    model = _materialise(lambda: resnet.resnet18(rngs=nnx.Rngs(0)))
    x = _images(_SHAPE) + 1.0
    before = jax.tree.map(np.array, nnx.state(model, nnx.BatchStat))
    model(x, train=False)
    after_eval = jax.tree.map(np.array, nnx.state(model, nnx.BatchStat))
    jax.tree.map(np.testing.assert_array_equal, before, after_eval)

    conv_out = np.asarray(model.conv1(x), np.float64)
    model(x, train=True)
    # torch momentum 0.1: running = 0.9 * running + 0.1 * batch; the initial mean is 0 and var 1.
    np.testing.assert_allclose(
        model.norm1.mean[...], 0.1 * conv_out.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(
        model.norm1.var[...], 0.9 + 0.1 * conv_out.var(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6
    )
    after_train = jax.tree.map(np.array, nnx.state(model, nnx.BatchStat))
    changed = jax.tree.leaves(
        jax.tree.map(lambda a, b: not np.array_equal(a, b), before, after_train)
    )
    assert all(changed)


def test_train_mode_normalises_with_batch_statistics():
    model = _materialise(lambda: resnet.resnet18(rngs=nnx.Rngs(0)))
    x = _images(_SHAPE) * 3.0 + 2.0
    pre = np.asarray(model.conv1(x), np.float64)
    normalised = (pre - pre.mean(axis=(0, 1, 2))) / np.sqrt(pre.var(axis=(0, 1, 2)) + 1e-5)
    stem = model(x, train=True)["stem"]
    np.testing.assert_allclose(stem, np.maximum(normalised, 0), rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("norm", ["group", "frozen_batch"])
def test_other_norms_have_no_batch_stats(norm):
    # Two stages are enough to exercise the norm in blocks and in a downsample branch.
    model = _materialise(lambda: resnet.resnet18(norm=norm, num_stages=2, rngs=nnx.Rngs(0)))
    assert not jax.tree.leaves(nnx.state(model, nnx.BatchStat))
    x = _images(_SHAPE)
    out_train, out_eval = model(x, train=True), model(x, train=False)
    assert out_train["layer2"].shape == (2, 4, 4, 128)
    # Neither norm depends on the mode.
    np.testing.assert_array_equal(out_train["layer2"], out_eval["layer2"])


def test_bfloat16_compute_keeps_float32_params():
    abstract = nnx.eval_shape(
        lambda: resnet.resnet18(dtype=jnp.bfloat16, num_classes=10, rngs=nnx.Rngs(0))
    )
    params = jax.tree.leaves(nnx.state(abstract, nnx.Param))
    assert {p.dtype for p in params} == {jnp.dtype(jnp.float32)}
    shapes = nnx.eval_shape(lambda m, x: m(x), abstract, jax.ShapeDtypeStruct(_SHAPE, jnp.float32))
    assert {v.dtype for v in shapes.values()} == {jnp.dtype(jnp.bfloat16)}
    # Real values on two stages: bf16 compute stays close to float32 compute.
    model = _materialise(
        lambda: resnet.resnet18(dtype=jnp.bfloat16, num_stages=2, rngs=nnx.Rngs(0))
    )
    reference = _materialise(lambda: resnet.resnet18(num_stages=2, rngs=nnx.Rngs(0)))
    out, expected = model(_images(_SHAPE))["layer2"], reference(_images(_SHAPE))["layer2"]
    assert out.dtype == jnp.bfloat16
    error = np.abs(np.asarray(out, np.float32) - np.asarray(expected))
    # bf16 keeps 8 mantissa bits: errors of a few % of the activation scale, but not zero.
    assert 0 < error.max() < 0.05 * np.abs(expected).max()


def test_split_merge_under_jit_matches_eager():
    model = _materialise(lambda: resnet.resnet18(output_stride=16, num_classes=7, rngs=nnx.Rngs(0)))
    x = _images(_SHAPE)
    outputs = model(x)
    eager = outputs["layer4"]
    # The head: global average pool, then the linear layer (bias 0 here).
    np.testing.assert_allclose(
        outputs["logits"], eager.mean(axis=(1, 2)) @ model.head.kernel[...], rtol=1e-4, atol=1e-5
    )

    graphdef, state = nnx.split(model)

    @jax.jit
    def pure(state, images):
        return nnx.merge(graphdef, state)(images)["layer4"]

    # Jit fuses and reorders float32 sums over 17 convolutions: errors of order 1e-6 of the
    # activation scale (up to ~40 here), where a split/merge bug would be of order the scale itself.
    np.testing.assert_allclose(pure(state, x), eager, rtol=1e-4, atol=1e-5 * np.abs(eager).max())


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"output_stride": 4}, "output_stride"),
        ({"num_stages": 5}, "num_stages"),
        ({"num_stages": 3, "num_classes": 10}, "num_classes"),
        ({"norm": "layer"}, "norm"),
    ],
)
def test_bad_options_name_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        resnet.resnet18(rngs=nnx.Rngs(0), **kwargs)


def test_stem_bias_adds_a_bias_to_conv1_only():
    """Mask-VOS's released value encoder: a 4-channel conv1 with a bias (torchvision: none)."""
    plain = resnet.resnet18(in_channels=4, num_stages=1, rngs=nnx.Rngs(0))
    biased = resnet.resnet18(in_channels=4, num_stages=1, stem_bias=True, rngs=nnx.Rngs(0))
    assert plain.conv1.bias is None and biased.conv1.bias.shape == (64,)
    biased.conv1.bias[...] = jnp.full((64,), 0.5)
    x = jax.random.normal(jax.random.key(0), (1, 16, 16, 4))
    # The bias shifts the pre-BN stem by 0.5: with eval BN (mean 0, var 1) the stem becomes
    # relu(conv(x) + 0.5) scaled by 1 / sqrt(1 + eps).
    pre = plain.conv1(x)
    expected = jax.nn.relu((pre + 0.5) / jnp.sqrt(1.0 + 1e-5))
    np.testing.assert_allclose(biased(x)["stem"], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fast_variance", [False, True])
def test_train_mode_batch_variance_is_two_pass_like_torch(fast_variance):
    """torch's train-mode BatchNorm variance is mean((x - mean)^2) (fast_variance=False); flax's
    one-pass E[x^2] - E[x]^2 (the default) cancels when |mean| >> std."""
    norm = resnet.make_norm("batch", 3, dtype=None, rngs=nnx.Rngs(0), fast_variance=fast_variance)
    rng = np.random.default_rng(0)
    x = (100.0 + 0.05 * rng.standard_normal((4, 8, 8, 3))).astype(np.float32)
    out = np.asarray(norm(jnp.asarray(x), use_running_average=False), np.float64)
    x64 = x.astype(np.float64)
    mean = x64.mean(axis=(0, 1, 2))
    expected = (x64 - mean) / np.sqrt(np.square(x64 - mean).mean(axis=(0, 1, 2)) + 1e-5)
    error = np.abs(out - expected).max()
    if fast_variance:
        assert error > 1e-2  # the cancellation the default avoids
    else:
        assert error < 1e-3
