"""Tests of the Mask-VOS correspondence method: transform, batch layout, loss_fn, segmenter."""

import cv2
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs.maskvos import corr_r18, corr_r50
from vosjax import train
from vosjax.data import image_io
from vosjax.data import sequence as sequence_lib
from vosjax.methods.maskvos import correspondence


def _batch(config, rng: np.random.Generator, batch_size: int = 2) -> dict[str, np.ndarray]:
    """A batch as the grain pipeline would build it from random 80 x 96 clips."""
    transform = correspondence.Correspondence(config).make_transform()
    t = config.data.clip_len
    examples = [
        transform(rng.integers(0, 256, (t, 80, 96, 3), dtype=np.uint8), rng)
        for _ in range(batch_size)
    ]
    batch = {k: np.stack([e[k] for e in examples]) for k in ("clip", "view", "affine")}
    batch["video"] = batch.pop("clip")
    batch["frame_indices"] = np.tile(np.arange(t, dtype=np.int32) * 2, (batch_size, 1))
    return batch


def test_transform_outputs_and_view_matches_affine():
    config = corr_r18.get_config("smoke")
    rng = np.random.default_rng(0)
    # A smooth image so that bilinear reads are easy to predict.
    ys, xs = np.meshgrid(np.arange(80), np.arange(96), indexing="ij")
    frame = np.stack([xs * 2, ys * 3, xs + ys], -1).astype(np.uint8)
    clip = np.stack([frame, frame[::-1], frame])
    out = correspondence.Correspondence(config).make_transform()(clip, rng)
    assert out["clip"].shape == (3, 64, 64, 3) and out["clip"].dtype == np.uint8
    assert out["view"].shape == (64, 64, 3) and out["view"].dtype == np.uint8
    assert out["affine"].shape == (2, 3) and out["affine"].dtype == np.float32
    # The view's pixel p shows frame 0 of the clip at affine @ p.
    ref = out["clip"][0].astype(np.float32)
    checked = 0
    for x, y in [(5, 7), (20, 30), (40, 12), (60, 60)]:
        xi, yi = out["affine"] @ np.array([x, y, 1.0])
        if not (0 <= xi <= 62 and 0 <= yi <= 62):
            continue
        x0, y0 = int(xi), int(yi)
        ax, ay = xi - x0, yi - y0
        expected = (
            ref[y0, x0] * (1 - ax) * (1 - ay)
            + ref[y0, x0 + 1] * ax * (1 - ay)
            + ref[y0 + 1, x0] * (1 - ax) * ay
            + ref[y0 + 1, x0 + 1] * ax * ay
        )
        np.testing.assert_allclose(out["view"][y, x], expected, atol=1.5)
        checked += 1
    assert checked >= 2


def test_partner_frames():
    near, far, gap = correspondence.partner_frames(jnp.array([[0, 2, 4], [10, 2, 30], [8, 6, 0]]))
    np.testing.assert_array_equal(near, [1, 1, 1])
    np.testing.assert_array_equal(far, [2, 2, 2])
    np.testing.assert_array_equal(gap, [4, 20, 8])


@pytest.mark.parametrize("arg", ["smoke", "smoke,code"])
def test_loss_fn_jitted_finite_with_param_gradients(arg):
    config = corr_r18.get_config(arg)
    method = correspondence.Correspondence(config)
    model = method.build_model(config, nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    batch = _batch(config, np.random.default_rng(1))
    if "code" in arg:
        # Consecutive frames 0, 1, 2: the farthest is 2 < 3 frames away, too close for the
        # long-term term, which must then contribute nothing.
        config.loss.long_min_gap = 3
        batch["frame_indices"] //= 2
    batch = jax.tree.map(jnp.asarray, batch)

    @jax.jit
    def step(params, rest, batch):
        def loss_of(p):
            # As vosjax.train: fresh Variables under this trace, so BatchNorm may update them.
            m = nnx.merge(graphdef, p, jax.tree.map(lambda x: x, rest))
            loss, aux = method.loss_fn(m, batch, jax.random.key(0), jnp.int32(0))
            return loss, (aux, nnx.state(m, nnx.Not(nnx.Param)))

        return jax.value_and_grad(loss_of, has_aux=True)(params)

    (loss, (aux, new_rest)), grads = step(params, rest, batch)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    leaves = jax.tree.leaves(grads)
    assert all(bool(jnp.all(jnp.isfinite(g))) for g in leaves)
    assert sum(float(jnp.abs(g).sum()) for g in leaves) > 0
    assert np.isfinite(float(loss))
    w = config.loss
    expected = w.short_weight * aux["short_loss"] + w.long_weight * aux["long_loss"]
    if "code" in arg:
        expected = expected + w.temp_weight * aux["temp_loss"]
        assert float(aux["long_fraction"]) == 0.0 and float(aux["long_loss"]) == 0.0
    else:
        assert "temp_loss" not in aux
        # Smoke clips are frames 0, 2, 4: the farthest partner is 4 >= long_min_gap = 2 away.
        assert float(aux["long_fraction"]) == 1.0
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    # Random features: the InfoNCE losses start near log(number of grid points) = log 16.
    assert 1.0 < float(aux["short_loss"]) < 10.0
    # BatchNorm statistics were updated in training mode.
    assert jax.tree.structure(new_rest) == jax.tree.structure(rest)
    old, new = rest["key_norm"]["mean"][...], new_rest["key_norm"]["mean"][...]
    assert not np.allclose(old, new)


def test_segmenter_propagates_a_static_video(tmp_path):
    config = corr_r18.get_config("smoke")
    method = correspondence.Correspondence(config)
    model = method.build_model(config, nnx.Rngs(0))
    rng = np.random.default_rng(3)
    frame = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 8:40] = 1
    paths = []
    for i in range(3):
        path = tmp_path / f"{i:05d}.png"
        cv2.imwrite(str(path), frame[..., ::-1])
        paths.append(path)
    image_io.write_mask(tmp_path / "mask.png", mask)
    sequence = sequence_lib.frame_folder_sequence("static", paths, {0: tmp_path / "mask.png"})
    masks = list(method.make_segmenter(model).segment(sequence))
    assert len(masks) == 3
    assert all(m.shape == (64, 64) for m in masks)
    # Three identical frames: every position matches itself best, so the first mask comes back
    # (up to the /8 grid's bilinear round trip).
    for m in masks[1:]:
        iou = np.logical_and(m == 1, mask == 1).sum() / np.logical_or(m == 1, mask == 1).sum()
        assert iou > 0.8


def test_configs_and_bad_fields():
    r50 = corr_r50.get_config()
    assert r50.model.backbone == "resnet50" and r50.model.key_dim == 128
    assert (r50.batch_size, r50.data.clip_len, r50.data.crop) == (16, 5, 256)
    assert (r50.optim.lr, r50.optim.b1, r50.optim.weight_decay) == (1e-4, 0.5, 5e-4)
    assert r50.eval.propagation.preset == "crw"
    # The epoch-based fields follow steps_per_epoch (YouTube-VOS by default).
    assert (r50.num_train_steps, r50.optim.step_every) == (500 * 5911, 100 * 5911)
    r50.steps_per_epoch = 130
    assert (r50.num_train_steps, r50.optim.step_every, r50.eval_every_steps) == (65000, 13000, 1300)
    r50.optim.step_every = 7  # still overridable on its own
    assert (r50.num_train_steps, r50.optim.step_every) == (65000, 7)
    smoke = corr_r18.get_config("smoke")
    assert smoke.batch_size % 8 == 0 and smoke.num_train_steps == 2 and smoke.data.path == ""
    with pytest.raises(ValueError, match="config argument"):
        corr_r18.get_config("smok")
    smoke.loss.short_term = "both"
    with pytest.raises(ValueError, match="config.loss.short_term"):
        correspondence.Correspondence(smoke)


def test_mixed_precision_train_step_close_to_fp32():
    config = corr_r18.get_config("smoke")
    method = correspondence.Correspondence(config)
    model = method.build_model(config, nnx.Rngs(0))
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    batch = jax.tree.map(jnp.asarray, _batch(config, np.random.default_rng(1)))
    tx = optax.adam(1e-4)
    state = train.TrainState(params, rest, tx.init(params), *(jnp.zeros((), jnp.int32),) * 3)
    losses = {}
    for mixed in (False, True):
        step = jax.jit(train.make_train_step(graphdef, method, tx, mixed_precision=mixed))
        new_state, step_metrics = step(state, batch, jax.random.key(0))
        losses[mixed] = float(step_metrics.compute()["loss"])
        assert int(new_state.nonfinite_total) == 0
        kernel = new_state.params["key_conv2"]["kernel"][...]
        assert kernel.dtype == jnp.float32
    # bf16 activations change the InfoNCE losses by about 1 %, not more.
    assert losses[True] != losses[False]
    np.testing.assert_allclose(losses[True], losses[False], rtol=3e-2)
