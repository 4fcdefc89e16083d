"""Tests of the Mask-VOS encoder E: shapes, stride 8, L2-normalised keys, parameter count."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vosjax.methods.maskvos import encoder


def _param_count(module: nnx.Module) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def test_resnet18_shapes_stride_and_unit_keys():
    model = encoder.MaskVOSEncoder("resnet18", rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(1), (2, 64, 72, 3))
    out = model(x, train=False)
    assert out["key"].shape == (2, 8, 9, 128)
    assert out["res4"].shape == (2, 8, 9, 512)
    assert out["f3"].shape == (2, 8, 9, 128)
    assert out["f2"].shape == (2, 16, 18, 64)
    assert out["key"].dtype == jnp.float32
    np.testing.assert_allclose(jnp.linalg.norm(out["key"], axis=-1), 1.0, rtol=1e-5)
    # Sides that are not multiples of 8 round up, as the backbone's convs do.
    assert model(x[:, :60, :67], train=False)["key"].shape == (2, 8, 9, 128)


def test_resnet18_parameter_count():
    model = encoder.MaskVOSEncoder("resnet18", rngs=nnx.Rngs(0))
    # torchvision ResNet-18 minus layer4 and fc: 11,689,512 - 8,393,728 - 513,000 = 2,782,784;
    # down_dim 256*512 + 512 + BN 1,024; emb_q 512*512 + 512 + BN 1,024 + 512*128 + 128 (the
    # released convs have biases); skip heads layer2 128*128 + 128 + BN 256, layer1 64*64 + 64
    # + BN 128.
    head = 256 * 512 + 512 + 1024 + 512 * 512 + 512 + 1024 + 512 * 128 + 128
    skips = 128 * 128 + 128 + 256 + 64 * 64 + 64 + 128
    assert _param_count(model) == 2_782_784 + head + skips
    plain = encoder.MaskVOSEncoder("resnet18", head_bias=False, skip_heads=False, rngs=nnx.Rngs(0))
    assert _param_count(plain) == 2_782_784 + head - 2 * 512


def test_skip_heads_are_conv_bn_relu_of_layer2_and_layer1():
    model = encoder.MaskVOSEncoder("resnet18", embed_dim=32, key_dim=16, rngs=nnx.Rngs(0))
    model.f3_conv.bias[...] = jnp.linspace(-1.0, 1.0, 128)
    model.f3_norm.mean[...] = jnp.full((128,), 0.25)
    model.f3_norm.var[...] = jnp.full((128,), 4.0)
    x = jax.random.normal(jax.random.key(3), (1, 32, 32, 3))
    out = model(x, train=False)
    layer2 = np.asarray(model.backbone(x)["layer2"], np.float64)
    kernel = np.asarray(model.f3_conv.kernel[...], np.float64)[0, 0]
    pre = layer2 @ kernel + np.asarray(model.f3_conv.bias[...])
    expected = np.maximum((pre - 0.25) / np.sqrt(4.0 + 1e-5), 0.0)
    np.testing.assert_allclose(out["f3"], expected, rtol=1e-4, atol=1e-4)
    plain = encoder.MaskVOSEncoder(
        "resnet18", embed_dim=32, key_dim=16, skip_heads=False, rngs=nnx.Rngs(0)
    )
    np.testing.assert_allclose(plain(x)["f2"], plain.backbone(x)["layer1"], rtol=0, atol=0)


@pytest.mark.parametrize("in_backbone", [True, False])
def test_down_dim_follows_the_frozen_backbone(in_backbone):
    model = encoder.MaskVOSEncoder(
        "resnet18", embed_dim=16, key_dim=8, down_dim_in_backbone=in_backbone, rngs=nnx.Rngs(0)
    )
    before = np.asarray(model.down_norm.mean[...]).copy()
    x = jax.random.normal(jax.random.key(4), (2, 32, 32, 3))

    def loss(m):
        return jnp.sum(m(x, train=True, train_backbone=False)["key"][..., 0])

    grads = nnx.grad(loss)(model)
    down_grad = float(jnp.abs(grads["down_conv"]["kernel"][...]).max())
    key_grad = float(jnp.abs(grads["key_conv1"]["kernel"][...]).max())
    assert key_grad > 0
    if in_backbone:  # the released code: down_dim4 sits in the no_grad, eval-mode backbone
        assert down_grad == 0.0
        np.testing.assert_array_equal(model.down_norm.mean[...], before)
    else:
        assert down_grad > 0
        assert not np.allclose(model.down_norm.mean[...], before)


def test_resnet50_shapes_by_eval_shape():
    def build_and_run():
        model = encoder.MaskVOSEncoder("resnet50", rngs=nnx.Rngs(0))
        return model(jnp.zeros((1, 256, 256, 3)), train=True), model

    out, model = nnx.eval_shape(build_and_run)
    assert out["key"].shape == (1, 32, 32, 128)
    assert out["res4"].shape == (1, 32, 32, 512)
    assert out["f3"].shape == (1, 32, 32, 512)
    assert out["f2"].shape == (1, 64, 64, 256)
    # down_dim reads layer3's 1024 channels, as the released code's down_dim4.
    assert model.down_conv.kernel.shape == (1, 1, 1024, 512)


def test_train_mode_updates_batch_statistics():
    model = encoder.MaskVOSEncoder("resnet18", embed_dim=32, key_dim=16, rngs=nnx.Rngs(0))
    before = np.asarray(model.key_norm.mean[...]).copy()
    model(jax.random.normal(jax.random.key(2), (2, 32, 32, 3)), train=True)
    assert not np.allclose(before, model.key_norm.mean[...])


@pytest.mark.parametrize(
    "kwargs, field",
    [({"backbone": "vit"}, "backbone"), ({"backbone": "resnet18", "output_stride": 32}, "stride")],
)
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=field):
        encoder.MaskVOSEncoder(**kwargs, rngs=nnx.Rngs(0))
