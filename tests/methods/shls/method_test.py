"""SHLS as a training method: the sharded step, its terms, ROIs, the segmenter's pieces."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.shls import davis2016_frames
from vosjax import sharding, train
from vosjax.data import image_io
from vosjax.data import sequence as sequence_lib
from vosjax.methods.shls import inference, method


def _config(**loss):
    config = davis2016_frames.get_config("smoke")
    config.loss.update(loss)
    return config


def _batch(config, seed=0):
    shls = method.SHLS(config)
    loader = shls.make_train_loader()
    examples = [loader(i, np.random.default_rng(seed + i)) for i in range(config.batch_size)]
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def _params(state):
    return [np.asarray(x) for x in jax.tree.leaves(nnx.to_pure_dict(state))]


def test_batch_holds_pseudo_sequences_with_capped_superpixels():
    config = _config()
    batch = _batch(config)
    b, t, s = config.batch_size, config.data.seq_len, config.data.size
    assert batch["frames"].shape == (b, t, s, s, 3) and batch["frames"].dtype == np.uint8
    assert batch["masks"].shape == batch["superpixels"].shape == (b, t, s, s)
    assert batch["superpixels"].max() < config.data.max_superpixels
    assert (batch["num_objects"] >= 1).all() and (batch["num_objects"] <= 3).all()
    assert batch["masks"].max() <= batch["num_objects"].max()


def test_one_sharded_step_sums_the_weighted_terms_and_updates_the_statistics():
    config = _config()
    trainer = train.Trainer(config, method.SHLS(config))
    state = trainer.init_state()
    batch = sharding.shard_batch(_batch(config), trainer.mesh)
    assert len(batch["frames"].sharding.device_set) == 8
    old_params, old_stats = _params(state.params), _params(state.model_state)
    new_state, step_metrics = trainer.train_step(state, batch, trainer.train_rng)
    values = step_metrics.compute()
    assert int(new_state.nonfinite_total) == 0
    np.testing.assert_allclose(values["loss"], values["ml_loss"] + values["ce_loss"], rtol=1e-5)
    # Cross-entropy over at most 4 classes of a near-uniform untrained prediction.
    assert 0.0 < float(values["ce_loss"]) < 2 * np.log(4)
    assert float(values["ml_loss"]) > 0.0
    assert any(
        not np.array_equal(a, b) for a, b in zip(old_params, _params(new_state.params), strict=True)
    )
    # Batch-norm running statistics are model state and move in training.
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(old_stats, _params(new_state.model_state), strict=True)
    )


def test_switching_a_loss_off_drops_its_term_and_its_gradient():
    config = _config(ce_weight=0.0)
    config.batch_size = 2
    shls = method.SHLS(config)
    model = shls.build_model(config, nnx.Rngs(0))
    # The released sf_conv_1x1 ends in a ReLU: with a negative weight most superfeatures are
    # exactly 0 and the backbone gets no gradient at all. Positive weights, no bias: alive.
    fuse = model.superfeatures.fuse
    fuse.kernel[...] = jnp.abs(fuse.kernel[...]) + 0.1
    fuse.bias[...] = jnp.zeros_like(fuse.bias[...])
    batch = jax.tree.map(jnp.asarray, _batch(config))

    def loss(module):
        return shls.loss_fn(module, batch, jax.random.key(0), 0)

    (value, aux), grads = nnx.value_and_grad(loss, has_aux=True)(model)
    assert set(aux) == {"ml_loss", "superpixels"}
    np.testing.assert_allclose(value, aux["ml_loss"], rtol=1e-6)
    segmenter = jax.tree.leaves(nnx.to_pure_dict(grads)["segmenter"])
    assert all(np.abs(np.asarray(g)).max() == 0 for g in segmenter)
    backbone = jax.tree.leaves(nnx.to_pure_dict(grads)["backbone"])
    assert any(np.abs(np.asarray(g)).max() > 0 for g in backbone)


def test_roi_boxes_enlarge_the_mask_box_by_the_margin():
    mask = np.zeros((1, 20, 20), bool)
    mask[0, 4:8, 10:12] = True  # rows 4..7 (4 px), cols 10..11 (2 px)
    roi = np.asarray(method.roi_boxes(jnp.asarray(mask), 0.5))[0]
    rows, cols = np.nonzero(roi.any(1))[0], np.nonzero(roi.any(0))[0]
    # 4 rows + 50% -> 1 px each side; 2 cols + 50% -> 0.5 px each side (whole pixels inside).
    assert (rows.min(), rows.max()) == (3, 8)
    assert (cols.min(), cols.max()) == (10, 11)
    assert not np.asarray(method.roi_boxes(jnp.zeros((1, 5, 5), bool), 0.3)).any()


def test_inference_roi_keeps_components_touching_the_previous_mask():
    preseg = np.zeros((40, 40), bool)
    preseg[10:20, 10:20] = True  # overlaps the previous mask
    preseg[30:35, 30:35] = True  # an outlier far away
    previous = np.zeros((40, 40), bool)
    previous[12:22, 12:22] = True
    roi = inference.roi_mask(preseg, previous, None, margin=0.0, min_overlap=0.05)
    ys, xs = np.nonzero(roi)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (10, 19, 10, 19)
    # No smaller than the first frame's box (30 x 30, centred on the kept component).
    roi = inference.roi_mask(preseg, previous, (0, 0, 29, 29), margin=0.0, min_overlap=0.05)
    ys, xs = np.nonzero(roi)
    assert ys.max() - ys.min() + 1 == 30 and xs.max() - xs.min() + 1 == 30
    # Nothing kept: the previous mask's box.
    roi = inference.roi_mask(np.zeros_like(preseg), previous, None, margin=0.0, min_overlap=0.05)
    ys, xs = np.nonzero(roi)
    assert (ys.min(), ys.max(), xs.min(), xs.max()) == (12, 21, 12, 21)


def test_working_size_is_a_multiple_of_the_stride():
    assert inference.working_size((480, 854), 480) == (480, 852)
    assert inference.working_size((240, 427), 480) == (480, 852)
    assert inference.working_size((63, 97), None) == (60, 96)
    with pytest.raises(ValueError, match="at least 8 pixels"):
        inference.working_size((6, 100), None)


def test_segmenter_returns_the_given_masks_and_full_size_masks(tmp_path):
    """DAVIS gives every object on frame 0; YouTube-VOS gives object 3 on frame 2 (its given
    mask wins there, and it is tracked from then on)."""
    config = _config()
    shls = method.SHLS(config)
    model = shls.build_model(config, nnx.Rngs(0))
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (4, 32, 44, 3), dtype=np.uint8)
    first = np.zeros((32, 44), np.uint8)
    first[5:15, 8:20] = 1
    first[18:26, 25:40] = 2
    later = np.zeros((32, 44), np.uint8)
    later[20:30, 2:12] = 3
    image_io.write_mask(tmp_path / "00000.png", first)
    image_io.write_mask(tmp_path / "00002.png", later)
    sequence = sequence_lib.VideoSequence(
        name="toy",
        frame_names=tuple(f"{i:05d}" for i in range(4)),
        image_size=(32, 44),
        read_frame_fn=lambda i: frames[i],
        mask_paths={0: tmp_path / "00000.png", 2: tmp_path / "00002.png"},
        output_frames=tuple(range(4)),
        object_starts={1: 0, 2: 0, 3: 2},
    )
    masks = list(shls.make_segmenter(model).segment(sequence))
    assert len(masks) == 4
    assert all(m.shape == (32, 44) and m.dtype == np.uint8 for m in masks)
    np.testing.assert_array_equal(masks[0], first)  # sides already multiples of 4
    assert (masks[2][later == 3] == 3).all()
    assert not (masks[1] == 3).any()  # object 3 does not exist before frame 2
    assert set(np.unique(masks[3])) <= {0, 1, 2, 3}


def test_preseg_output_on_a_static_video_is_the_first_mask_snapped_to_superpixels(tmp_path):
    """With every frame the same, each superpixel's nearest memory entry is itself (its
    frame-0 copy), so the pre-segmentation labels it with the majority of its first-frame
    pixels; the decoder's output differs (a random net)."""
    config = _config()
    config.eval.output = "preseg"
    shls = method.SHLS(config)
    model = shls.build_model(config, nnx.Rngs(0))
    fuse = model.superfeatures.fuse  # no dead superfeatures (see above)
    fuse.kernel[...] = jnp.abs(fuse.kernel[...]) + 0.1
    fuse.bias[...] = jnp.zeros_like(fuse.bias[...])
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (32, 44, 3), dtype=np.uint8)
    frame[4:20, 6:22] = (250, 30, 30)
    first = np.zeros((32, 44), np.uint8)
    first[6:18, 8:20] = 1  # inside the red square: its superpixels are mostly object
    first[22:30, 26:42] = 2
    image_io.write_mask(tmp_path / "00000.png", first)
    sequence = sequence_lib.VideoSequence(
        name="static",
        frame_names=("00000", "00001", "00002"),
        image_size=(32, 44),
        read_frame_fn=lambda i: frame,
        mask_paths={0: tmp_path / "00000.png"},
        output_frames=(0, 1, 2),
        object_starts={1: 0, 2: 0},
    )
    segmenter = shls.make_segmenter(model)
    masks = list(segmenter.segment(sequence))
    labels = segmenter._superpixels(frame)
    expected = np.zeros_like(first)
    for s in np.unique(labels[labels >= 0]):
        votes = np.bincount(first[labels == s], minlength=3)
        expected[labels == s] = np.argmax(votes)
    assert (expected != first).any()  # the snapping is visible
    np.testing.assert_array_equal(masks[0], first)
    np.testing.assert_array_equal(masks[1], expected)
    np.testing.assert_array_equal(masks[2], expected)
    config.eval.output = "decoder"
    decoded = list(method.SHLS(config).make_segmenter(model).segment(sequence))
    assert not np.array_equal(decoded[1], expected)


@pytest.mark.parametrize(("field", "value"), [("protocol", "stm"), ("last_pred", "logits")])
def test_unknown_protocol_or_last_pred_names_the_field(field, value):
    config = _config()
    config.eval[field] = value
    with pytest.raises(ValueError, match=f"config.eval.{field}"):
        method.SHLS(config).make_segmenter(
            method.SHLS(_config()).build_model(_config(), nnx.Rngs(0))
        )


def test_unknown_output_names_the_field():
    config = _config()
    config.eval.output = "knn"
    model = method.SHLS(config).build_model(config, nnx.Rngs(0))
    with pytest.raises(ValueError, match="config.eval.output='knn'"):
        inference.SHLSSegmenter(model, config)


def test_lr_is_base_lr_per_sequence_of_the_batch():
    config = davis2016_frames.get_config()
    assert config.optim.lr == pytest.approx(1e-4 * davis2016_frames.BATCH)
    config.batch_size = 4  # as --config.batch_size=4 does
    config.base_lr = 2e-4
    assert config.optim.lr == pytest.approx(8e-4)
