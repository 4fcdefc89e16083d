"""Tests for vosjax.models.vit: parameter counts, position embeddings, mask token, blocks, dtype."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vosjax.models import vit


def _count(build) -> int:
    """Number of nnx.Param scalars of a model built abstractly (nothing allocated)."""
    model = nnx.eval_shape(build)
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(nnx.state(model, nnx.Param)))


def _formula(patch: int, dim: int, num_classes: int = 0, depth: int = 12) -> int:
    """The parameter count of a timm / DINO ViT at 224 x 224, written out."""
    patch_embed = 3 * patch * patch * dim + dim
    cls_token = dim
    pos_embed = (1 + (224 // patch) ** 2) * dim
    block = (
        (dim * 3 * dim + 3 * dim)  # qkv with bias
        + (dim * dim + dim)  # attention output projection
        + 2 * (2 * dim)  # two LayerNorms (scale + bias)
        + (dim * 4 * dim + 4 * dim)  # fc1
        + (4 * dim * dim + dim)  # fc2
    )
    final_norm = 2 * dim
    head = dim * num_classes + num_classes if num_classes else 0
    return patch_embed + cls_token + pos_embed + depth * block + final_norm + head


def test_parameter_counts_follow_the_formula_and_published_numbers():
    # The published numbers (timm vit_small_patch16_224; DINO backbones without head) agree with
    # the formula.
    assert _formula(16, 384, num_classes=1000) == 22_050_664
    assert _formula(16, 384) == 21_665_664
    assert _formula(8, 384) == 21_670_272
    assert _formula(8, 768) == 85_807_872
    assert _count(lambda: vit.vit_small(16, num_classes=1000, rngs=nnx.Rngs(0))) == 22_050_664
    assert _count(lambda: vit.vit_small(16, rngs=nnx.Rngs(0))) == 21_665_664
    assert _count(lambda: vit.vit_small(8, rngs=nnx.Rngs(0))) == 21_670_272
    assert _count(lambda: vit.vit_base(8, rngs=nnx.Rngs(0))) == 85_807_872
    # The mask token adds one D-vector; drop path adds no parameter.
    with_token = _count(
        lambda: vit.vit_small(8, use_mask_token=True, drop_path_rate=0.1, rngs=nnx.Rngs(0))
    )
    assert with_token == 21_670_272 + 384


def _torch_bicubic_reference(values: np.ndarray, out_size: int, offset: float) -> np.ndarray:
    """A loop over output cells of torch's bicubic (A = -0.75, align_corners=False) on 1-D data."""
    a, n = -0.75, len(values)

    def kernel(x):
        x = abs(x)
        if x <= 1:
            return (a + 2) * x**3 - (a + 3) * x**2 + 1
        if x < 2:
            return a * x**3 - 5 * a * x**2 + 8 * a * x - 4 * a
        return 0.0

    out = np.zeros(out_size)
    for i in range(out_size):
        src = (i + 0.5) * n / (out_size + offset) - 0.5
        left = int(np.floor(src))
        for tap in range(left - 1, left + 3):
            out[i] += kernel(src - tap) * values[min(max(tap, 0), n - 1)]
    return out


def test_bicubic_matrix_known_weights():
    # 2x upsampling: output 2 samples input coordinate 0.75; torch's weights for t = 0.75 are
    # (-0.03515625, 0.26171875, 0.87890625, -0.10546875) on taps -1, 0, 1, 2 (tap -1 -> 0).
    matrix = vit.bicubic_matrix(4, 8)
    np.testing.assert_allclose(matrix[2], [0.2265625, 0.87890625, -0.10546875, 0.0], atol=1e-12)
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, atol=1e-12)
    np.testing.assert_array_equal(vit.bicubic_matrix(5, 5), np.eye(5))
    values = np.random.default_rng(0).normal(size=14)
    for out_size, offset in [(60, 0.1), (107, 0.1), (8, 0.0), (9, 0.1)]:
        np.testing.assert_allclose(
            vit.bicubic_matrix(14, out_size, offset) @ values,
            _torch_bicubic_reference(values, out_size, offset),
            atol=1e-12,
        )


def test_pos_embed_is_unchanged_at_the_training_size():
    pos = jnp.asarray(np.random.default_rng(0).normal(size=(1 + 28 * 28, 384)), jnp.float32)
    np.testing.assert_array_equal(vit.interpolate_pos_embed(pos, (28, 28)), pos)
    # Without DINO's offset a same-size bicubic resize is the identity as well.
    np.testing.assert_allclose(
        vit.interpolate_pos_embed(pos.at[0].set(0), (28, 28), offset=0.0), pos.at[0].set(0)
    )


def test_pos_embed_interpolates_to_davis_frames():
    # ViT-S/8 at 224 has a 28 x 28 grid; a 480 x 856 frame has 60 x 107 patches.
    rng = np.random.default_rng(0)
    pos = rng.normal(size=(1 + 28 * 28, 384)).astype(np.float32)
    out = np.asarray(vit.interpolate_pos_embed(jnp.asarray(pos), (60, 107)))
    assert out.shape == (1 + 60 * 107, 384)
    np.testing.assert_array_equal(out[0], pos[0])
    grid = pos[1:].reshape(28, 28, 384).astype(np.float64)
    rows, cols = vit.bicubic_matrix(28, 60, 0.1), vit.bicubic_matrix(28, 107, 0.1)
    expected = np.einsum("hi,wj,ijd->hwd", rows, cols, grid).reshape(60 * 107, 384)
    np.testing.assert_allclose(out[1:], expected, rtol=1e-5, atol=1e-5)
    # Separable and oriented right: a grid varying only along the width (or height) is resized
    # by the 1-D torch reference along that axis alone.
    values = rng.normal(size=28)
    along_w = np.broadcast_to(values[None, :, None], (28, 28, 2)).reshape(784, 2)
    along_h = np.broadcast_to(values[:, None, None], (28, 28, 2)).reshape(784, 2)
    for grid_pos, axis, size in [(along_w, 1, 107), (along_h, 0, 60)]:
        table = np.concatenate([np.zeros((1, 2)), grid_pos]).astype(np.float32)
        resized = np.asarray(vit.interpolate_pos_embed(jnp.asarray(table), (60, 107)))
        resized = resized[1:].reshape(60, 107, 2)
        expected_1d = _torch_bicubic_reference(values, size, 0.1)
        shape = (1, size, 1) if axis == 1 else (size, 1, 1)
        np.testing.assert_allclose(
            resized, np.broadcast_to(expected_1d.reshape(shape), (60, 107, 2)), atol=1e-5
        )


def _materialise(build, seed: int = 0) -> nnx.Module:
    """Builds a model with numpy-drawn values, skipping the compile of JAX's random initialisers."""
    graphdef, state = nnx.split(nnx.eval_shape(build))
    rng = np.random.default_rng(seed)

    def fill(path, leaf):
        name = path[-2].key  # the last entry is the Variable's `.value`
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.key(seed)
        if name == "count":
            return jnp.zeros(leaf.shape, leaf.dtype)
        if name == "scale":
            value = 1 + 0.1 * rng.normal(size=leaf.shape)
        elif name == "kernel":
            value = rng.normal(size=leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
        else:  # biases, tokens and position embeddings
            value = 0.1 * rng.normal(size=leaf.shape)
        return jnp.asarray(value, leaf.dtype)

    return nnx.merge(graphdef, jax.tree.map_with_path(fill, state))


def _tiny(**kwargs) -> vit.VisionTransformer:
    """A 3-block ViT with D 32 and patch 8, position embeddings for 32 x 32 (a 4 x 4 grid)."""
    return _materialise(
        lambda: vit.VisionTransformer(
            patch_size=8,
            embed_dim=32,
            depth=3,
            num_heads=2,
            img_size=32,
            rngs=nnx.Rngs(0),
            **kwargs,
        )
    )


# 40 x 56 pixels: a 5 x 7 patch grid, so the 4 x 4 position embeddings are interpolated.
_SHAPE = (2, 40, 56, 3)


def _images(seed: int = 0) -> jnp.ndarray:
    return jnp.asarray(np.random.default_rng(seed).normal(size=_SHAPE), jnp.float32)


def test_outputs_and_blocks():
    model = _tiny(num_classes=5)
    out = model(_images(), return_blocks=(1, 3))
    assert out["cls"].shape == (2, 32)
    assert out["patches"].shape == (2, 5, 7, 32)
    assert sorted(out["blocks"]) == [1, 3]
    assert out["blocks"][1].shape == (2, 1 + 35, 32)
    # The last block, normalised, is the final output: class token first, then the patch grid.
    last = np.asarray(out["blocks"][3])
    np.testing.assert_array_equal(last[:, 0], out["cls"])
    np.testing.assert_array_equal(last[:, 1:].reshape(2, 5, 7, 32), out["patches"])
    assert np.abs(np.asarray(out["blocks"][1]) - last).mean() > 0.1
    np.testing.assert_allclose(
        out["logits"], out["cls"] @ model.head.kernel[...] + model.head.bias[...], rtol=1e-5
    )
    raw = model(_images(), return_blocks=(3,), norm_blocks=False)["blocks"][3]
    np.testing.assert_allclose(model.norm(raw), last, rtol=1e-5, atol=1e-5)
    assert not np.allclose(raw, last)


def _numpy_attention(x, qkv_w, qkv_b, proj_w, proj_b, heads):
    """timm's multi-head self-attention written per head with numpy (float64)."""
    b, n, d = x.shape
    c = d // heads
    qkv = x @ qkv_w + qkv_b  # [B, N, 3D]: q | k | v, each head a contiguous slice of c
    out = np.zeros((b, n, d))
    for i in range(b):
        for h in range(heads):
            q = qkv[i, :, h * c : (h + 1) * c]
            k = qkv[i, :, d + h * c : d + (h + 1) * c]
            v = qkv[i, :, 2 * d + h * c : 2 * d + (h + 1) * c]
            logits = q @ k.T / np.sqrt(c)
            weights = np.exp(logits - logits.max(-1, keepdims=True))
            out[i, :, h * c : (h + 1) * c] = (weights / weights.sum(-1, keepdims=True)) @ v
    return out @ proj_w + proj_b


def test_attention_matches_a_per_head_numpy_reference():
    attention = vit.Attention(32, 4, dtype=jnp.float32, rngs=nnx.Rngs(3))
    rng = np.random.default_rng(0)
    # Non-zero biases, so that a bias on the wrong slice of q | k | v shows too.
    attention.qkv.bias[...] = jnp.asarray(rng.normal(size=96) * 0.5, jnp.float32)
    attention.proj.bias[...] = jnp.asarray(rng.normal(size=32) * 0.5, jnp.float32)
    # Larger weights than the init, so that the attention is far from uniform.
    attention.qkv.kernel[...] = attention.qkv.kernel[...] * 5.0
    x = rng.normal(size=(2, 11, 32)) * 3.0
    expected = _numpy_attention(
        x,
        np.asarray(attention.qkv.kernel[...], np.float64),
        np.asarray(attention.qkv.bias[...], np.float64),
        np.asarray(attention.proj.kernel[...], np.float64),
        np.asarray(attention.proj.bias[...], np.float64),
        heads=4,
    )
    got = np.asarray(attention(jnp.asarray(x, jnp.float32)))
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_mask_token_replaces_patch_embeddings():
    model = _tiny(use_mask_token=True)
    images = _images()
    masks = jnp.asarray(np.random.default_rng(1).random((2, 5, 7)) < 0.5)
    embedded = np.asarray(model.embed_patches(images, masks))
    plain = np.asarray(model.embed_patches(images))
    token = np.asarray(model.mask_token[...])[0]
    np.testing.assert_array_equal(
        embedded[np.asarray(masks)], np.broadcast_to(token, (int(masks.sum()), 32))
    )
    np.testing.assert_array_equal(embedded[~np.asarray(masks)], plain[~np.asarray(masks)])
    # With every patch masked, the image content no longer matters.
    everything = jnp.ones((2, 5, 7), bool)
    a = model(images, masks=everything)["patches"]
    b = model(_images(seed=7), masks=everything)["patches"]
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    assert not np.allclose(model(images)["patches"], a)


def test_prepare_tokens_adds_the_position_embedding_after_the_mask_token():
    model = _tiny(use_mask_token=True)
    model.mask_token[...] = jnp.full((1, 32), 0.5)
    images = _images()
    masks = jnp.asarray(np.random.default_rng(2).random((2, 5, 7)) < 0.5)
    tokens = np.asarray(model.prepare_tokens(images, masks))
    pos = np.asarray(vit.interpolate_pos_embed(model.pos_embed[...], (5, 7), square_input=False))
    assert tokens.shape == (2, 1 + 35, 32)
    flat = np.asarray(masks).reshape(2, 35)
    # Masked patches: mask token + their own position embedding (iBOT / INO), not a bare token.
    np.testing.assert_allclose(
        tokens[:, 1:][flat], (0.5 + pos[1:][None].repeat(2, 0))[flat], atol=1e-6
    )
    np.testing.assert_allclose(
        tokens[:, 0], np.broadcast_to(model.cls_token[...][0] + pos[0], (2, 32)), atol=1e-6
    )
    # The blocks start from exactly these tokens.
    block1 = model.blocks[0](jnp.asarray(tokens), train=False)
    np.testing.assert_allclose(
        model(images, masks=masks, return_blocks=(1,), norm_blocks=False)["blocks"][1],
        block1,
        atol=1e-5,
    )


def test_training_grid_of_a_non_square_image_is_still_resampled():
    # DINO / INO skip the interpolation only for a square image with the training grid; a 32 x 36
    # image at patch 8 has the 4 x 4 grid but is resampled with the (4 + 0.1) / 4 scale.
    model = _tiny()
    pos = model.pos_embed[...]
    np.testing.assert_array_equal(vit.interpolate_pos_embed(pos, (4, 4)), pos)
    resampled = np.asarray(vit.interpolate_pos_embed(pos, (4, 4), square_input=False))
    grid = np.asarray(pos[1:], np.float64).reshape(4, 4, 32)
    m = vit.bicubic_matrix(4, 4, 0.1)
    expected = np.einsum("hi,wj,ijd->hwd", m, m, grid).reshape(16, 32)
    np.testing.assert_allclose(resampled[1:], expected, rtol=1e-5, atol=1e-6)
    assert np.abs(resampled[1:] - np.asarray(pos[1:])).max() > 1e-3
    square = np.asarray(model.prepare_tokens(jnp.zeros((1, 32, 32, 3))))
    wide = np.asarray(model.prepare_tokens(jnp.zeros((1, 32, 36, 3))))
    bias = np.asarray(model.patch_embed.bias[...])
    np.testing.assert_allclose(square[0, 1:], np.asarray(pos[1:]) + bias, atol=1e-6)
    np.testing.assert_allclose(wide[0, 1:], resampled[1:] + bias, atol=1e-6)


def test_bad_calls_name_the_problem():
    model = _tiny()
    with pytest.raises(ValueError, match="use_mask_token"):
        model(_images(), masks=jnp.zeros((2, 5, 7), bool))
    with pytest.raises(ValueError, match="return_blocks"):
        model(_images(), return_blocks=(0,))
    with pytest.raises(ValueError, match="masks of shape"):
        _tiny(use_mask_token=True)(_images(), masks=jnp.zeros((2, 4, 4), bool))


def test_bfloat16_compute_keeps_float32_params():
    model = _tiny(dtype=jnp.bfloat16)
    params = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert {p.dtype for p in params} == {jnp.dtype(jnp.float32)}
    out = model(_images(), return_blocks=(2,))
    assert out["patches"].dtype == jnp.bfloat16 and out["blocks"][2].dtype == jnp.bfloat16
    expected = np.asarray(_tiny()(_images())["patches"])
    error = np.abs(np.asarray(out["patches"], np.float32) - expected)
    assert 0 < error.max() < 0.05 * np.abs(expected).max()


def test_jit_matches_eager():
    model = _tiny()
    images = _images()
    eager = model(images, return_blocks=(2,))

    @nnx.jit
    def forward(m, x):
        return m(x, return_blocks=(2,))

    jitted = forward(model, images)
    # Jit reorders float32 sums: tolerances relative to each output's scale, far below the
    # scale-sized errors a wrong merge or a dropped block would make.
    for key in ("patches", "cls"):
        np.testing.assert_allclose(jitted[key], eager[key], rtol=1e-4, atol=_scale_tol(eager[key]))
    np.testing.assert_allclose(
        jitted["blocks"][2], eager["blocks"][2], rtol=1e-4, atol=_scale_tol(eager["blocks"][2])
    )

    graphdef, state = nnx.split(model)

    @jax.jit
    def pure(state, x):
        return nnx.merge(graphdef, state)(x)["cls"]

    np.testing.assert_allclose(
        pure(state, images), eager["cls"], rtol=1e-4, atol=_scale_tol(eager["cls"])
    )


def _scale_tol(reference):
    return 1e-5 * float(np.abs(np.asarray(reference)).max())


def test_drop_path_is_per_sample_and_only_in_training():
    model = _tiny(drop_path_rate=0.5)
    images = _images()
    reference = _tiny()(images)["patches"]
    # Evaluation ignores drop path: same parameters, same output as a model without it.
    np.testing.assert_allclose(model(images)["patches"], reference, rtol=1e-6, atol=1e-6)
    key = jax.random.key(3)
    first = model(images, train=True, key=key)["patches"]
    np.testing.assert_array_equal(first, model(images, train=True, key=key)["patches"])
    assert not np.allclose(first, reference)
    assert not np.allclose(first, model(images, train=True, key=jax.random.key(4))["patches"])
    # Rates rise linearly to the last block; a branch is dropped or kept (x 1 / keep) per sample.
    assert model.blocks[0].drop_path is None
    assert [b.drop_path.rate for b in model.blocks[1:]] == [0.25, 0.5]
    dropped = np.asarray(
        model.blocks[2].drop_path(jnp.ones((64, 5, 4)), deterministic=False, rngs=key)
    )
    per_sample = dropped.reshape(64, -1)
    assert set(np.unique(per_sample)) == {0.0, 2.0}
    assert (per_sample == per_sample[:, :1]).all()
    # The module's own rng stream is used without a key, and advances.
    assert not np.allclose(
        model(images, train=True)["patches"], model(images, train=True)["patches"]
    )
