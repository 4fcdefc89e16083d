"""The full Mask-VOS method: one sharded training step of L_seg + L_short + L_long."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.maskvos import corr_r18, r18, r50
from vosjax import sharding, train
from vosjax.methods.maskvos import correspondence, method


def _config(**loss):
    config = corr_r18.get_config("smoke")
    method.add_config_fields(config, smoke=True)
    config.loss.update(loss)
    return config


def _batch(config, seed=0):
    rng = np.random.default_rng(seed)
    b, t, s = config.batch_size, config.data.clip_len, config.data.crop
    labels = np.zeros((b, t, s // 8, s // 8), np.uint8)
    labels[:, :, : s // 16] = 1
    labels[:, :, s // 16 :, : s // 16] = 2
    affine = np.tile(np.array([[0.5, 0, 8], [0, 0.5, 8]], np.float32), (b, 1, 1))
    return {
        "video": rng.integers(0, 256, (b, t, s, s, 3), dtype=np.uint8),
        "view": rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8),
        "affine": affine,
        "labels": labels,
        "num_objects": np.full((b,), 2, np.int32),
        "frame_indices": np.tile(np.arange(t, dtype=np.int32) * 2, (b, 1)),
    }


def _subtree(tree, path):
    for key in path:
        tree = tree[key]
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def _changed(old, new, path):
    a, b = _subtree(old, path), _subtree(new, path)
    assert a, path
    return [not np.array_equal(x, y) for x, y in zip(a, b, strict=True)]


def test_one_sharded_step_of_the_full_loss():
    config = _config()
    trainer = train.Trainer(config, method.MaskVOS(config))
    state = trainer.init_state()
    batch = sharding.shard_batch(_batch(config), trainer.mesh)
    old_params = jax.tree.map(np.asarray, state.params)  # the step donates `state`
    assert len(batch["labels"].sharding.device_set) == 8
    new_state, step_metrics = trainer.train_step(state, batch, trainer.train_rng)
    values = step_metrics.compute()
    assert int(new_state.nonfinite_total) == 0
    expected = values["short_loss"] + values["long_loss"] + values["seg_loss"]
    np.testing.assert_allclose(values["loss"], expected, rtol=1e-5)
    # Three classes, untrained: L_seg near log 3, not degenerate.
    assert 0.3 < float(values["seg_loss"]) < 5.0
    assert float(values["seg_objects"]) == 2.0
    # Both E and (V, D) were updated.
    for path in (("encoder", "key_conv2", "kernel"), ("head", "decoder")):
        assert any(_changed(old_params, new_state.params, path)), path


def _one_step(config):
    trainer = train.Trainer(config, method.MaskVOS(config))
    state = trainer.init_state()
    old = jax.tree.map(np.asarray, (state.params, state.model_state))  # the step donates it
    batch = sharding.shard_batch(_batch(config), trainer.mesh)
    new_state, step_metrics = trainer.train_step(state, batch, trainer.train_rng)
    new = jax.tree.map(np.asarray, (new_state.params, new_state.model_state))
    return old, new, step_metrics.compute()


def test_a_frozen_encoder_keeps_weights_and_statistics_and_seg_alone_is_trained():
    """The released mask stage with all of E frozen and no correspondence term."""
    config = _config(short_weight=0.0, long_weight=0.0)
    config.optim.frozen = ("encoder",)
    (old_params, old_stats), (new_params, new_stats), values = _one_step(config)
    assert not any(_changed(old_params, new_params, ("encoder",)))
    assert not any(_changed(old_stats, new_stats, ("encoder",)))  # running statistics used
    assert any(_changed(old_params, new_params, ("head", "decoder")))
    assert any(_changed(old_stats, new_stats, ("head",)))  # V's BatchNorm still trains
    # No view encoded, no correspondence metric: the loss is L_seg.
    assert "short_loss" not in values and "long_loss" not in values
    np.testing.assert_allclose(values["loss"], values["seg_loss"], rtol=1e-6)
    assert 0.3 < float(values["seg_loss"]) < 5.0


def test_a_frozen_backbone_keeps_its_statistics_while_the_key_head_trains():
    """The 'code' setting: the backbone and its down_dim frozen (torch.no_grad, .eval()), emb_q
    and the skip heads train."""
    config = _config()
    config.optim.frozen = r18.get_config("smoke,code").optim.frozen
    assert "encoder/down_conv" in config.optim.frozen
    (old_params, old_stats), (new_params, new_stats), values = _one_step(config)
    assert not any(_changed(old_params, new_params, ("encoder", "backbone")))
    assert not any(_changed(old_stats, new_stats, ("encoder", "backbone")))
    assert any(_changed(old_params, new_params, ("encoder", "key_conv2")))
    assert any(_changed(old_params, new_params, ("encoder", "f3_conv")))
    # down_dim belongs to the released backbone: eval mode (running statistics), no update.
    assert not any(_changed(old_params, new_params, ("encoder", "down_conv")))
    assert not any(_changed(old_stats, new_stats, ("encoder", "down_norm")))
    assert any(_changed(old_stats, new_stats, ("encoder", "key_norm")))
    assert float(values["short_loss"]) > 0 and float(values["seg_loss"]) > 0


def test_without_seg_it_is_the_correspondence_loss():
    config = _config(seg_weight=0.0)
    full = method.MaskVOS(config)
    model = full.build_model(config, nnx.Rngs(0))
    batch = jax.tree.map(jnp.asarray, _batch(config, seed=1))
    loss, aux = full.loss_fn(model, batch, jax.random.key(0), jnp.int32(0))
    corr_loss, _ = correspondence.Correspondence(config).loss_fn(
        model.encoder, batch, jax.random.key(0), jnp.int32(0)
    )
    np.testing.assert_allclose(float(loss), float(corr_loss), rtol=1e-5)
    assert float(aux["seg_loss"]) > 0  # computed, weighted 0


def test_bad_fields_are_named():
    with pytest.raises(ValueError, match="config.loss.seg_queries=3"):
        method.MaskVOS(_config(seg_queries=3))
    with pytest.raises(ValueError, match="config.loss.coarse='hard'"):
        method.MaskVOS(_config(coarse="hard"))
    with pytest.raises(ValueError, match="config.loss.seg_weight=-1"):
        method.MaskVOS(_config(seg_weight=-1.0))


def test_resnet50_variant_traces_with_the_expected_shapes():
    """configs/maskvos/r50.py's E and V are ResNet-50s; the full loss traces (no compilation)."""
    config = r50.get_config("smoke")
    full = method.MaskVOS(config)
    model = nnx.eval_shape(lambda: full.build_model(config, nnx.Rngs(0)))
    assert model.encoder.output_stride == 8
    batch = jax.tree.map(jnp.asarray, _batch(config))

    def loss(model):
        return full.loss_fn(model, batch, jax.random.key(0), jnp.int32(0))

    graphdef, state = nnx.split(model)
    out, aux = jax.eval_shape(lambda s: loss(nnx.merge(graphdef, s)), state)
    assert out.shape == () and aux["seg_loss"].shape == ()
    # V's first convolution takes RGB + the object mask; its layer3 has ResNet-50's 1024 channels.
    v = model.head.value_encoder
    assert v.backbone.conv1.kernel.shape[2] == 4
    assert v.backbone.num_features == 1024 and v.project.kernel.shape[2:] == (1024, 32)
