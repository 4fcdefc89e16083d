"""INO as a training method: the sharded step, its terms, the EMA teacher, the features."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from configs.ino import vits8_davis2016
from vosjax import sharding, train
from vosjax.methods.ino import losses, method
from vosjax.methods.ino import model as model_lib
from vosjax.ops import color


def _config(clip_len=4, **loss):
    config = vits8_davis2016.get_config("smoke")
    config.data.clip_len = clip_len
    config.loss.update(loss)
    return config


def _batch(config, seed=0):
    rng = np.random.default_rng(seed)
    b, t = config.batch_size, config.data.clip_len
    g, s, m = config.data.global_size, config.data.local_size, config.data.num_local
    return {
        "global": rng.integers(0, 256, (b, t, g, g, 3), dtype=np.uint8),
        "local": rng.integers(0, 256, (b, t, m, s, s, 3), dtype=np.uint8),
        "frame_indices": np.tile(np.arange(t, dtype=np.int32), (b, 1)),
    }


def _pure(state):
    """Arrays of an nnx state as nested dicts, the drop-path rng streams left out."""

    def strip(tree):
        if isinstance(tree, dict):
            return {k: strip(v) for k, v in tree.items() if k != "drop_path"}
        return np.asarray(tree)

    return strip(nnx.to_pure_dict(state))


def test_teacher_starts_as_the_student_and_is_not_trained():
    model = model_lib.INOModel(_config().model, rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param).to_pure_dict()
    assert set(params) == {"student", "student_head"}
    teacher = _pure(nnx.state(model.teacher, model_lib.Teacher))
    student = _pure(nnx.state(model.student, nnx.Param))
    jax.tree.map(np.testing.assert_array_equal, teacher, student)
    np.testing.assert_array_equal(np.asarray(model.center_cls[...]), np.zeros(64))


def test_ema_update_follows_the_formula():
    model = model_lib.INOModel(_config().model, rngs=nnx.Rngs(0))
    old = _pure(nnx.state(model.teacher_head, model_lib.Teacher))
    # Move the student away from the teacher, then one EMA step with momentum 0.75.
    nnx.update(
        model.student_head,
        jax.tree.map(lambda x: x + 1.0, nnx.state(model.student_head, nnx.Param)),
    )
    model.update_teacher(0.75)
    new = _pure(nnx.state(model.teacher_head, model_lib.Teacher))
    jax.tree.map(lambda n, o: np.testing.assert_allclose(n, o + 0.25, rtol=1e-6), new, old)


def test_one_sharded_step_sums_the_terms_and_moves_the_teacher():
    config = _config()
    ino = method.INO(config)
    trainer = train.Trainer(config, ino)
    state = trainer.init_state()
    batch = sharding.shard_batch(_batch(config), trainer.mesh)
    assert len(batch["global"].sharding.device_set) == 8
    old_params = _pure(state.params)
    new_state, step_metrics = trainer.train_step(state, batch, trainer.train_rng)
    values = step_metrics.compute()
    assert int(new_state.nonfinite_total) == 0
    expected = values["out_loss"] + values["mim_loss"] + values["affinity_loss"]
    np.testing.assert_allclose(values["loss"], expected, rtol=1e-5)
    assert 0.0 < float(values["out_loss"]) < 2 * np.log(64)
    # The EMA after step 0: teacher = m * student_0 + (1 - m) * student_1, m = 0.996.
    m = float(ino.momentum(0))
    assert m == pytest.approx(0.996)
    new_params = _pure(new_state.params)
    teacher = _pure(new_state.model_state)["teacher"]
    jax.tree.map(
        lambda t, s0, s1: np.testing.assert_allclose(t, m * s0 + (1 - m) * s1, atol=1e-6),
        teacher,
        old_params["student"],
        new_params["student"],
    )
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(
            jax.tree.leaves(old_params["student"]),
            jax.tree.leaves(new_params["student"]),
            strict=True,
        )
    )
    # The centres moved from 0 by (1 - 0.9) x the mean teacher output.
    assert np.abs(_pure(new_state.model_state)["center_cls"]).max() > 0


@pytest.mark.parametrize("center_update", ["per_call", "per_step"])
def test_loss_pairs_frames_n_and_n_plus_half_and_masks_the_student(center_update):
    config = _config(clip_len=4)
    config.mim.prob = 1.0  # always mask
    config.loss.center_update = center_update
    config.loss.mim_average = "frame" if center_update == "per_call" else "image"
    ino = method.INO(config)
    model = ino.build_model(config, nnx.Rngs(0))
    batch = {k: jnp.asarray(v) for k, v in _batch(config, seed=3).items()}
    rng = jax.random.key(5)
    center_cls = np.asarray(model.center_cls[...]).copy()
    loss, aux = ino.loss_fn(model, batch, rng, jnp.asarray(0))

    # The same terms assembled by hand from the networks' outputs.
    b, t = 8, 4
    images = color.normalize_frames(batch["global"].reshape(b * t, 32, 32, 3))
    masks = ino._masks(rng, b, (4, 4))
    assert 0 < float(jnp.mean(masks)) <= 0.5
    drop = jax.random.fold_in(rng, method.DROP_PATH_STREAM)
    student = model_lib.tokens_through_head(
        model.student, model.student_head, images, masks=jnp.repeat(masks, t, 0), train=True,
        key=drop,
    )  # fmt: skip
    teacher = model_lib.tokens_through_head(model.teacher, model.teacher_head, images)
    local_images = color.normalize_frames(batch["local"].reshape(b * t * 2, 16, 16, 3))
    local = model_lib.tokens_through_head(
        model.student, model.student_head, local_images, train=True,
        key=jax.random.fold_in(drop, 1), with_patches=False,
    )["cls"].reshape(b, t, 2, -1)  # fmt: skip
    s_cls, t_cls = student["cls"].reshape(b, t, -1), teacher["cls"].reshape(b, t, -1)
    t_cls_np = np.asarray(t_cls, np.float64)
    # per_call: pair (1, 3) is centred with the centre already moved by pair (0, 2).
    centers = [center_cls]
    if center_update == "per_call":
        centers.append(0.9 * center_cls + 0.1 * t_cls_np[:, [0, 2]].mean((0, 1)))
        final_cls = 0.9 * centers[1] + 0.1 * t_cls_np[:, [1, 3]].mean((0, 1))
    else:
        centers.append(center_cls)
        final_cls = 0.1 * t_cls_np.mean((0, 1))
    out = np.mean(
        [
            losses.out_generative_loss(
                t_cls[:, [n, n + 2]],
                s_cls[:, [n, n + 2]],
                local[:, [n, n + 2]].reshape(b, 4, -1),
                jnp.asarray(centers[n], jnp.float32),
            )
            for n in (0, 1)
        ]
    )
    np.testing.assert_allclose(aux["out_loss"], out, rtol=1e-4)
    t_hw = np.asarray(teacher["patches"]).reshape(b, t, 16, -1)
    s_hw = np.asarray(student["patches"]).reshape(b, t, 16, -1)
    w = np.asarray(masks).reshape(b, 16).astype(np.float64)
    if center_update == "per_call":
        # One term per frame over the masked tokens of every clip, each frame centred with the
        # centre moved by the earlier frames' masked teacher tokens.
        c, terms = np.zeros(64), []
        for f in range(t):
            q = losses.teacher_probs(jnp.asarray(t_hw[:, f]), jnp.asarray(c, jnp.float32), 0.04)
            ce = np.asarray(losses.cross_entropy(q, jnp.asarray(s_hw[:, f]), 0.1))
            terms.append((ce * w).sum() / w.sum())
            c = 0.9 * c + 0.1 * (w[..., None] * t_hw[:, f]).sum((0, 1)) / w.sum()
        mim, final_patch = np.mean(terms), c
    else:
        mim = losses.mim_loss(
            teacher["patches"], student["patches"], jnp.repeat(masks, t, 0).reshape(b * t, 16),
            np.zeros(64),
        )  # fmt: skip
        final_patch = 0.1 * np.asarray(teacher["patches"], np.float64).mean((0, 1))
    np.testing.assert_allclose(aux["mim_loss"], mim, rtol=1e-4)
    np.testing.assert_allclose(loss, out + mim + aux["affinity_loss"], rtol=1e-5)
    np.testing.assert_allclose(model.center_cls[...], final_cls, atol=1e-6)
    np.testing.assert_allclose(model.center_patch[...], final_patch, atol=1e-6)


def test_bad_center_update_mim_average_or_mask_style_is_named():
    for section, field, value in (
        ("loss", "center_update", "per_pair"),
        ("loss", "mim_average", "clip"),
        ("mim", "style", "blocks"),
    ):
        config = _config(clip_len=4)
        config[section][field] = value
        with pytest.raises(ValueError, match=f"config.{section}.{field}='{value}'"):
            method.INO(config)


def test_mask_style_reaches_the_masks():
    config = _config(clip_len=4)
    config.mim.prob = 1.0
    grid = (8, 8)
    masks = {}
    for style in ("random", "block"):
        config.mim.style = style
        masks[style] = np.asarray(method.INO(config)._masks(jax.random.key(3), 64, grid))

    # Block masks are unions of rectangles: far fewer isolated masked patches than uniform ones.
    def isolated(m):
        padded = np.pad(m, ((0, 0), (1, 1), (1, 1)))
        neighbours = padded[:, :-2, 1:-1] | padded[:, 2:, 1:-1] | padded[:, 1:-1, :-2]
        return np.sum(m & ~(neighbours | padded[:, 1:-1, 2:]))

    assert isolated(masks["random"]) > 3 * max(isolated(masks["block"]), 1)


def test_no_mask_means_no_in_generative_loss_and_switches_drop_terms():
    config = _config(clip_len=2, local_to_global=False)
    config.mim.prob = 0.0
    ino = method.INO(config)
    model = ino.build_model(config, nnx.Rngs(0))
    batch = {k: jnp.asarray(v) for k, v in _batch(config).items()}
    del batch["local"]  # g2g only: the local crops are never read
    loss, aux = ino.loss_fn(model, batch, jax.random.key(0), jnp.asarray(0))
    assert float(aux["mim_loss"]) == 0.0 and float(aux["affinity_loss"]) == 0.0
    assert float(aux["mask_ratio"]) == 0.0
    np.testing.assert_allclose(loss, aux["out_loss"], rtol=1e-6)

    config = _config(out_weight=0.0, affinity_weight=0.0)
    config.mim.prob = 1.0
    ino = method.INO(config)
    loss, aux = ino.loss_fn(
        ino.build_model(config, nnx.Rngs(0)),
        {k: jnp.asarray(v) for k, v in _batch(config).items()},
        jax.random.key(0),
        jnp.asarray(0),
    )
    assert set(aux) == {"mim_loss", "mask_ratio", "teacher_momentum"}
    np.testing.assert_allclose(loss, aux["mim_loss"], rtol=1e-6)


def test_bad_fields_are_named():
    with pytest.raises(ValueError, match="config.data.clip_len"):
        method.INO(_config(clip_len=3))
    config = _config()
    config.eval.features = "ema"
    with pytest.raises(ValueError, match="config.eval.features"):
        method.INO(config)
    with pytest.raises(ValueError, match="out_weight"):
        method.INO(_config(global_to_global=False, local_to_global=False))


def test_resized_size_floors_to_the_patch():
    assert method.resized_size((480, 854), 480, 8) == (480, 848)
    assert method.resized_size((720, 1280), 480, 8) == (480, 848)
    assert method.resized_size((240, 427), 480, 8) == (480, 848)
    assert method.resized_size((64, 100), None, 16) == (64, 96)
    with pytest.raises(ValueError, match="at least 8 pixels"):
        method.resized_size((4, 100), None, 8)


def test_features_are_the_normalised_block_tokens():
    config = _config()
    model = model_lib.INOModel(config.model, rngs=nnx.Rngs(1))
    frame = np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    features = method.INOFeatures(model.teacher, block=2, short_side=None)(frame)
    assert features.shape == (5, 7, 32)
    images = color.normalize_frames(jnp.asarray(frame), std=color.DINO_EVAL_STD)  # 0.228
    out = model.student(images[None], return_blocks=(2,))
    tokens = np.asarray(out["blocks"][2][0, 1:]).reshape(5, 7, 32)
    expected = tokens / np.linalg.norm(tokens, axis=-1, keepdims=True)
    np.testing.assert_allclose(features, expected, atol=1e-5)  # teacher == student at init
    # Short side 16 -> 16 x 22.4 -> floored to 16 x 16: a 2 x 2 grid.
    assert method.INOFeatures(model.student, block=4, short_side=16)(frame).shape == (2, 2, 32)
    with pytest.raises(ValueError, match="config.eval.block"):
        method.INOFeatures(model.student, block=5)


def test_youtube_vos_layout_takes_more_recent_frames_and_a_larger_radius():
    config = _config()
    model = model_lib.INOModel(config.model, rngs=nnx.Rngs(0))
    davis_settings = method.INO(config).make_segmenter(model).config
    assert (davis_settings.top_k, davis_settings.num_recent, davis_settings.radius) == (5, 10, 40)
    config.eval.layout = "youtube_vos"
    settings = method.INO(config).make_segmenter(model).config
    assert (settings.top_k, settings.num_recent, settings.radius) == (5, 20, 50)
    assert settings.temperature == pytest.approx(0.1) and settings.neighbourhood == "square"


def test_segmenter_reads_as_infer_vos():
    # The propagation reader takes eval.short_side (None in the smoke config: sizes floored to
    # multiples of 8, INO's YouTube-VOS branch), the features DINO's eval std (0.228 for red)
    # unless eval.input_std says otherwise.
    config = _config()
    model = model_lib.INOModel(config.model, rngs=nnx.Rngs(0))
    segmenter = method.INO(config).make_segmenter(model)
    assert segmenter.config.short_side == config.eval.short_side
    assert segmenter.config.fit == "resize" and segmenter.config.upsample == "reader"
    assert segmenter.extractor.std == color.DINO_EVAL_STD
    config.eval.input_std = color.IMAGENET_STD
    assert method.INO(config).make_segmenter(model).extractor.std == color.IMAGENET_STD
    frame = np.random.default_rng(1).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    plain = method.INOFeatures(model.student, block=2, short_side=None)
    imagenet = method.INOFeatures(model.student, block=2, short_side=None, std=color.IMAGENET_STD)
    assert np.abs(np.asarray(plain(frame)) - np.asarray(imagenet(frame))).max() > 1e-4


def test_code_config_masks_uniform_random_patches_the_paper_blockwise():
    # The paper: "blockwise masking"; the released RandomMaskingGenerator: uniform patches.
    from configs.ino import base

    assert base.get_config().mim.style == "block"
    code = base.get_config("code")
    assert code.mim.style == "random"
    assert code.mim.shared_mask and not code.data.augment_global
