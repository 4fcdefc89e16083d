"""Tests of the optimisers and schedules built from config.optim."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vosjax import optimizers


def _optim(**fields):
    optim = optimizers.default_config()
    optim.update(fields)
    return optim


def test_warmup_cosine_schedule_values():
    schedule = optimizers.make_schedule(
        _optim(lr=1.0, schedule="warmup_cosine", warmup_steps=10, end_lr=0.1), 110
    )
    assert math.isclose(float(schedule(0)), 0.0, abs_tol=1e-7)
    assert math.isclose(float(schedule(5)), 0.5, rel_tol=1e-6)
    assert math.isclose(float(schedule(10)), 1.0, rel_tol=1e-6)
    # Half way through the cosine (50 of 100 steps): (1 + 0.1) / 2.
    assert math.isclose(float(schedule(60)), 0.55, rel_tol=1e-5)
    assert math.isclose(float(schedule(110)), 0.1, rel_tol=1e-5)


def test_step_decay_schedule_values():
    schedule = optimizers.make_schedule(
        _optim(lr=0.1, schedule="step", step_every=30, gamma=0.5), 100
    )
    np.testing.assert_allclose(
        [float(schedule(s)) for s in (0, 29, 30, 59, 60, 95)],
        [0.1, 0.1, 0.05, 0.05, 0.025, 0.0125],
        rtol=1e-6,
    )


def test_bad_schedule_names_the_field():
    with pytest.raises(ValueError, match="config.optim.schedule"):
        optimizers.make_schedule(_optim(schedule="linear"), 10)
    with pytest.raises(ValueError, match="config.optim.step_every"):
        optimizers.make_schedule(_optim(schedule="step"), 10)
    with pytest.raises(ValueError, match="config.optim.name"):
        optimizers.make_optimizer(_optim(name="lamb"), 10)


def test_adam_b1_matches_numpy_reference():
    tx = optimizers.make_optimizer(_optim(name="adam", lr=0.1, b1=0.5, b2=0.999, eps=1e-8), 10)
    params = {"w": jnp.array([1.0, -1.0])}
    state = tx.init(params)
    grads = [np.array([0.5, -2.0]), np.array([1.0, 1.0])]
    m = v = np.zeros(2)
    w = np.array([1.0, -1.0])
    for t, g in enumerate(grads, 1):
        updates, state = tx.update({"w": jnp.asarray(g)}, state, params)
        params = optax.apply_updates(params, updates)
        m = 0.5 * m + 0.5 * g
        v = 0.999 * v + 0.001 * g**2
        w = w - 0.1 * (m / (1 - 0.5**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
    np.testing.assert_allclose(params["w"], w, rtol=1e-5)


def test_adamw_cosine_weight_decay():
    # Zero gradients: AdamW's update is -lr * wd(step) * w, wd from 0.04 to 0.4 over 10 steps.
    tx = optimizers.make_optimizer(
        _optim(name="adamw", lr=1.0, weight_decay=0.04, weight_decay_end=0.4), 10
    )
    params = {"w": jnp.array([1.0])}
    state = tx.init(params)
    zeros = {"w": jnp.zeros(1)}
    decays = []
    for _ in range(11):
        updates, state = tx.update(zeros, state, params)
        decays.append(-float(updates["w"][0]))
    assert math.isclose(decays[0], 0.04, rel_tol=1e-5)
    assert math.isclose(decays[5], 0.22, rel_tol=1e-5)
    assert math.isclose(decays[10], 0.4, rel_tol=1e-5)


def test_sgd_bias_group_and_clipping():
    optim = _optim(
        name="sgd",
        lr=0.1,
        momentum=0.0,
        weight_decay=0.5,
        bias_lr_mult=2.0,
        bias_no_weight_decay=True,
        grad_clip_norm=1.0,
    )
    tx = optimizers.make_optimizer(optim, 10)
    params = {"conv": {"kernel": jnp.array([2.0]), "bias": jnp.array([2.0])}}
    # Global norm 5 -> clipped to 1: each gradient scaled by 1/5.
    grads = {"conv": {"kernel": jnp.array([3.0]), "bias": jnp.array([4.0])}}
    updates, _ = tx.update(grads, tx.init(params), params)
    # kernel: -0.1 * (0.6 + 0.5 * 2); bias: -0.2 * 0.8 and no decay.
    np.testing.assert_allclose(updates["conv"]["kernel"], [-0.16], rtol=1e-6)
    np.testing.assert_allclose(updates["conv"]["bias"], [-0.16], rtol=1e-6)
    assert optimizers.bias_labels(params) == {"conv": {"kernel": "default", "bias": "bias"}}


def test_frozen_prefixes_get_zero_updates():
    params = {
        "encoder": {"backbone": {"w": jnp.ones((2,))}, "head": {"w": jnp.ones((2,))}},
        "decoder": {"w": jnp.ones((2,))},
    }
    optim = optimizers.default_config()
    optim.lr = 0.1
    optim.frozen = ("encoder/backbone",)
    tx = optimizers.make_optimizer(optim, 10)
    grads = {
        "encoder": {"backbone": {"w": jnp.ones((2,))}, "head": {"w": jnp.ones((2,))}},
        "decoder": {"w": jnp.ones((2,))},
    }
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_array_equal(updates["encoder"]["backbone"]["w"], [0.0, 0.0])
    # Adam's first step moves every trained parameter by -lr.
    np.testing.assert_allclose(updates["encoder"]["head"]["w"], [-0.1, -0.1], rtol=1e-5)
    np.testing.assert_allclose(updates["decoder"]["w"], [-0.1, -0.1], rtol=1e-5)
    optim.frozen = ("encoder/backbon",)
    with pytest.raises(ValueError, match="config.optim.frozen: 'encoder/backbon'"):
        optimizers.make_optimizer(optim, 10).init(params)


def test_no_decay_1d_spares_norm_scales_and_biases():
    optim = optimizers.default_config()
    optim.update({"name": "adamw", "lr": 0.1, "weight_decay": 0.5, "no_decay_1d": True})
    tx = optimizers.make_optimizer(optim, num_train_steps=10)
    params = {"norm": {"scale": jnp.full((2,), 2.0)}, "dense": {"kernel": jnp.full((1, 2), 2.0)}}
    zeros = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zeros, tx.init(params), params)
    # Zero gradients: the update is the decoupled decay alone, -lr * wd * param, on 2-D only.
    np.testing.assert_allclose(updates["dense"]["kernel"], np.full((1, 2), -0.1), rtol=1e-6)
    np.testing.assert_allclose(updates["norm"]["scale"], np.zeros(2), atol=0)
    assert optimizers.bias_labels(params, include_1d=True) == {
        "norm": {"scale": "bias"},
        "dense": {"kernel": "default"},
    }


def test_per_tensor_clipping_as_dino_clip_gradients():
    optim = _optim(name="sgd", lr=1.0, momentum=0.0, grad_clip_norm=1.0, grad_clip_per_tensor=True)
    tx = optimizers.make_optimizer(optim, 10)
    params = {"a": jnp.zeros(2), "b": jnp.zeros(2)}
    # a has norm 5 (clipped to 1 on its own), b norm 0.5 (kept): the global norm would scale both.
    grads = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([0.3, 0.4])}
    updates, _ = tx.update(grads, tx.init(params), params)
    np.testing.assert_allclose(updates["a"], [-3.0 / (5 + 1e-6), -4.0 / (5 + 1e-6)], rtol=1e-6)
    np.testing.assert_allclose(updates["b"], [-0.3, -0.4], rtol=1e-6)
