"""Tests of INO's projection head: shapes, a numpy reference, weight normalisation, validation."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vosjax.methods.ino import head

TINY = {"hidden_dim": 16, "bottleneck_dim": 6, "out_dim": 10}
IN_DIM = 8


def _head(**kwargs) -> head.ProjectionHead:
    return head.ProjectionHead(IN_DIM, **{**TINY, **kwargs}, rngs=nnx.Rngs(0))


def _np(x) -> np.ndarray:
    return np.asarray(x[...], np.float64)


_erf = np.vectorize(math.erf)


def _gelu(x: np.ndarray) -> np.ndarray:
    """Exact GELU, x * Phi(x)."""
    return 0.5 * x * (1.0 + _erf(x / math.sqrt(2.0)))


def _reference(module: head.ProjectionHead, x: np.ndarray) -> np.ndarray:
    """The head in float64 numpy from the module's own parameters."""
    h = np.asarray(x, np.float64)
    for i, layer in enumerate(module.mlp):
        h = h @ _np(layer.kernel) + _np(layer.bias)
        if i < len(module.mlp) - 1:
            h = _gelu(h)
    h = h / np.maximum(np.linalg.norm(h, axis=-1, keepdims=True), 1e-12)
    v = _np(module.v)
    w = v / np.linalg.norm(v, axis=0, keepdims=True)
    if module.g is not None:
        w = w * _np(module.g)[None, :]
    return h @ w


def _randomise_biases(module: head.ProjectionHead, seed: int) -> None:
    """Non-zero biases, so that the reference also checks where the biases enter."""
    rng = np.random.default_rng(seed)
    for layer in module.mlp:
        layer.bias[...] = jnp.asarray(rng.normal(0.0, 0.1, layer.bias.shape), jnp.float32)


@pytest.mark.parametrize("shape", [(3, IN_DIM), (2, 5, IN_DIM)])
def test_output_shape(shape):
    out = _head()(jnp.ones(shape))
    assert out.shape == (*shape[:-1], TINY["out_dim"])
    assert out.dtype == jnp.float32


@pytest.mark.parametrize("num_layers", [1, 2, 3])
@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_matches_numpy_reference(num_layers, norm_last_layer):
    module = _head(num_layers=num_layers, norm_last_layer=norm_last_layer)
    assert len(module.mlp) == num_layers
    _randomise_biases(module, seed=num_layers)
    if module.g is not None:
        module.g[...] = jnp.linspace(0.5, 2.0, TINY["out_dim"])
    # Inputs large enough that the MLP output is far from the tiny-init regime.
    x = np.random.default_rng(1).normal(0.0, 5.0, (2, 4, IN_DIM)).astype(np.float32)
    np.testing.assert_allclose(module(jnp.asarray(x)), _reference(module, x), atol=1e-5)


def test_layer_widths_and_init():
    module = _head(num_layers=3)
    widths = [tuple(layer.kernel.shape) for layer in module.mlp]
    assert widths == [(IN_DIM, 16), (16, 16), (16, 6)]
    assert tuple(module.v.shape) == (6, 10)
    for layer in module.mlp:
        np.testing.assert_array_equal(_np(layer.bias), 0.0)
    big = head.ProjectionHead(64, hidden_dim=256, bottleneck_dim=64, out_dim=512, rngs=nnx.Rngs(3))
    kernel = _np(big.mlp[1].kernel)
    # Truncated at 2 std: std 0.02 shrinks by the factor of a normal cut at +-2 (0.8796).
    assert abs(kernel.std() - 0.02 * 0.8796) < 5e-4
    assert np.abs(kernel).max() <= 0.04 + 1e-6


def test_single_layer_is_one_linear():
    module = _head(num_layers=1)
    assert tuple(module.mlp[0].kernel.shape) == (IN_DIM, 6)


def test_norm_last_layer_has_fixed_g_and_ignores_column_scale():
    module = _head(norm_last_layer=True)
    # g is kept (an imported weight_g is honoured) but is not a parameter: no gradient, no EMA.
    assert isinstance(module.g, head.FixedScale) and not isinstance(module.g, nnx.Param)
    np.testing.assert_array_equal(_np(module.g), 1.0)
    params = nnx.state(module, nnx.Param)
    names = {str(k) for path, _ in nnx.to_flat_state(params) for k in path}
    assert "g" not in names and "v" in names
    x = jnp.asarray(np.random.default_rng(2).normal(size=(3, IN_DIM)), jnp.float32)
    before = module(x)
    # Outputs are cosines of unit vectors.
    assert float(jnp.abs(before).max()) <= 1.0 + 1e-6
    scale = jnp.asarray(np.random.default_rng(3).uniform(0.1, 10.0, TINY["out_dim"]), jnp.float32)
    module.v[...] = module.v[...] * scale[None, :]
    np.testing.assert_allclose(module(x), before, atol=1e-6)


def test_trainable_g_scales_output():
    module = _head(norm_last_layer=False)
    assert isinstance(module.g, nnx.Param)
    np.testing.assert_array_equal(_np(module.g), 1.0)
    x = jnp.asarray(np.random.default_rng(4).normal(size=(3, IN_DIM)), jnp.float32)
    before = module(x)
    module.g[...] = 2.0 * module.g[...]
    np.testing.assert_allclose(module(x), 2.0 * before, rtol=1e-6, atol=1e-7)


def test_g_receives_gradients_only_when_trainable():
    x = jnp.asarray(np.random.default_rng(5).normal(size=(3, IN_DIM)), jnp.float32)

    def loss(m: head.ProjectionHead) -> jax.Array:
        return jnp.sum(m(x) ** 2)

    grads = nnx.grad(loss)(_head(norm_last_layer=False))
    assert float(jnp.abs(grads["g"][...]).sum()) > 0.0
    grads = nnx.grad(loss)(_head(norm_last_layer=True))
    assert "g" not in grads


def test_bottleneck_is_unit_norm():
    module = _head()
    z = module.bottleneck(jnp.asarray(np.random.default_rng(6).normal(size=(4, IN_DIM))))
    assert z.shape == (4, 6) and z.dtype == jnp.float32
    np.testing.assert_allclose(np.linalg.norm(np.asarray(z), axis=-1), 1.0, atol=1e-6)


def test_zero_bottleneck_gives_zero_not_nan():
    module = _head(num_layers=1)
    module.mlp[0].kernel[...] = jnp.zeros_like(module.mlp[0].kernel[...])
    out = module(jnp.ones((2, IN_DIM)))
    np.testing.assert_array_equal(np.asarray(out), 0.0)


def test_bfloat16_compute_keeps_float32_params_and_output():
    module = _head(dtype=jnp.bfloat16)
    ref = _head()
    x = jnp.asarray(np.random.default_rng(7).normal(size=(3, IN_DIM)), jnp.float32)
    out = module(x)
    assert out.dtype == jnp.float32
    assert all(p.dtype == jnp.float32 for p in jax.tree.leaves(nnx.state(module, nnx.Param)))
    np.testing.assert_allclose(out, ref(x), atol=3e-2)


def test_jit():
    module = _head()
    x = jnp.ones((2, 3, IN_DIM))
    np.testing.assert_allclose(nnx.jit(lambda m, y: m(y))(module, x), module(x), atol=1e-6)


@pytest.mark.parametrize("shape", [(3, IN_DIM + 1), (IN_DIM - 1,), ()])
def test_bad_input_width_raises(shape):
    with pytest.raises(ValueError, match=rf"ProjectionHead.*\[\.\.\., {IN_DIM}\]"):
        _head()(jnp.ones(shape))


@pytest.mark.parametrize(
    "kwargs", [{"num_layers": 0}, {"out_dim": 0}, {"hidden_dim": 0}, {"bottleneck_dim": -1}]
)
def test_bad_config_raises(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=f"ProjectionHead {name}"):
        _head(**kwargs)
