"""Tests of Mask-VOS inference by mask decoding: affinity, memory, decoding, output format."""

import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from vosjax.data import image_io, sequence
from vosjax.methods.maskvos import encoder, inference, mask_model
from vosjax.ops import color

TINY_HEAD = {"embed_dim": 8, "value_dim": 16, "decoder_widths": (16, 8, 8)}


class CountingHead(mask_model.MaskHead):
    """A MaskHead that counts calls of `decode` (on the class: jit works on merged copies)."""

    decode_calls = 0

    def decode(self, *args, **kwargs):
        type(self).decode_calls += 1
        return super().decode(*args, **kwargs)


class CoarseHead(mask_model.MaskHead):
    """A MaskHead whose decoder returns the coarse masks' log-odds: only the memory path counts."""

    def decode(self, frames, coarse_masks, readout, res4, f3, f2, *, train=False):
        b, k = coarse_masks.shape[:2]
        up = jax.image.resize(coarse_masks, (b, k, *frames.shape[1:3]), "bilinear")
        return 10.0 * (up - 0.5)


@pytest.fixture(scope="module")
def modules():
    """E, a random MaskHead, a counting one and a coarse-passing one, all tiny (built once)."""
    return {
        "encoder": encoder.MaskVOSEncoder("resnet18", embed_dim=8, key_dim=16, rngs=nnx.Rngs(0)),
        "head": mask_model.MaskHead("resnet18", **TINY_HEAD, rngs=nnx.Rngs(1)),
        "counting": CountingHead("resnet18", **TINY_HEAD, rngs=nnx.Rngs(1)),
        "coarse": CoarseHead("resnet18", **TINY_HEAD, rngs=nnx.Rngs(2)),
    }


def _with_constant_decoder(head: mask_model.MaskHead, bias: float) -> mask_model.MaskHead:
    """A copy of `head` whose final decoder conv is zero: every logit is `bias`."""
    head = nnx.clone(head)
    head.decoder.pred.kernel[...] = jnp.zeros_like(head.decoder.pred.kernel[...])
    head.decoder.pred.bias[...] = jnp.full_like(head.decoder.pred.bias[...], bias)
    return head


def patch_keys(frames: jax.Array) -> jax.Array:
    """Deterministic keys: the Lab pixels of each 8 x 8 patch minus their mean, [B, h, w, 192]."""
    lab = color.rgb_to_lab(frames / 255.0)
    b, hp, wp, _ = lab.shape
    cells = lab.reshape(b, hp // 8, 8, wp // 8, 8, 3).transpose(0, 1, 3, 2, 4, 5)
    cells = cells.reshape(b, hp // 8, wp // 8, 64, 3)
    return (cells - jnp.mean(cells, axis=3, keepdims=True)).reshape(b, hp // 8, wp // 8, 192)


def _video(
    tmp_path: pathlib.Path,
    frames: np.ndarray,
    given: dict[int, np.ndarray],
    object_starts: dict[int, int] | None = None,
) -> sequence.VideoSequence:
    """An in-memory VideoSequence; the given masks are written as PNGs (read_mask reads files)."""
    paths = {}
    for t, mask in given.items():
        paths[t] = tmp_path / f"mask_{t:03d}.png"
        image_io.write_mask(paths[t], mask)
    return sequence.VideoSequence(
        name="synthetic",
        frame_names=tuple(f"{t:05d}" for t in range(len(frames))),
        image_size=frames.shape[1:3],
        read_frame_fn=lambda i: frames[i],
        mask_paths=paths,
        output_frames=tuple(range(len(frames))),
        object_starts=object_starts,
    )


def _moving_squares(
    size: tuple[int, int],
    num_frames: int,
    squares: list[tuple[int, tuple[int, int], tuple[int, int], int]],
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Textured 24 x 24 squares over a textured background.

    Args:
      size: (H, W).
      num_frames: T.
      squares: (object id, (y0, x0), (dy, dx) per frame, first frame it is visible).
      seed: texture seed.

    Returns:
      (frames uint8 [T, H, W, 3], true ids uint8 [T, H, W]).
    """
    rng = np.random.default_rng(seed)
    background = rng.integers(0, 256, (*size, 3), dtype=np.uint8)
    textures = [rng.integers(0, 256, (24, 24, 3), dtype=np.uint8) for _ in squares]
    frames = np.repeat(background[None], num_frames, axis=0)
    truth = np.zeros((num_frames, *size), np.uint8)
    for t in range(num_frames):
        for (obj, (y0, x0), (dy, dx), visible), texture in zip(squares, textures, strict=True):
            if t < visible:
                continue
            y, x = y0 + dy * t, x0 + dx * t
            frames[t, y : y + 24, x : x + 24] = texture
            truth[t, y : y + 24, x : x + 24] = obj
    return frames, truth


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.logical_and(a, b).sum() / np.logical_or(a, b).sum())


# --- affinity ----------------------------------------------------------------------------------


def _dense_affinity(query, memory, valid, top_k, temperature, radius, restrict_first):
    """numpy reference: the dense [h w, M h w] affinity with top-k and the radius mask."""
    m, h, w, d = memory.shape
    sim = query.reshape(h * w, d) @ memory.reshape(m * h * w, d).T
    yy, xx = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    pos = np.stack([yy.ravel(), xx.ravel()], 1)
    dist2 = ((pos[:, None, :] - pos[None, :, :]) ** 2).sum(-1)  # [hw, hw]
    allowed = np.ones((h * w, m, h * w), bool)
    for f in range(m):
        if not valid[f]:
            allowed[:, f] = False
        elif radius is not None and (f > 0 or restrict_first):
            allowed[:, f] &= dist2 < radius**2
    sim = np.where(allowed.reshape(h * w, m * h * w), sim, -np.inf)
    dense = np.zeros_like(sim)
    for q in range(h * w):
        top = np.argsort(-sim[q])[:top_k]
        top = top[np.isfinite(sim[q, top])]
        e = np.exp((sim[q, top] - sim[q, top].max()) / temperature)
        dense[q, top] = e / e.sum()
    return dense


@pytest.mark.parametrize(
    "radius, restrict_first, block_size",
    [(2.5, False, (2, 3)), (1.5, True, (3, 4)), (None, False, None), (3.0, False, None)],
)
def test_top_k_affinity_matches_a_dense_numpy_reference(radius, restrict_first, block_size):
    h, w, d, m, k = 5, 6, 4, 4, 4
    rng = np.random.default_rng(0)
    keys = rng.normal(size=(m + 1, h, w, d)).astype(np.float32)
    keys /= np.linalg.norm(keys, axis=-1, keepdims=True)
    query, memory = keys[0], keys[1:]
    valid = np.array([True, True, False, True])
    weights, indices = inference.top_k_affinity(
        jnp.asarray(query),
        jnp.asarray(memory),
        jnp.asarray(valid),
        top_k=k,
        temperature=0.05,
        radius=radius,
        restrict_first=restrict_first,
        block_size=block_size,
    )
    assert weights.shape == indices.shape == (h, w, k)
    got = np.zeros((h * w, m * h * w))
    np.add.at(
        got,
        (np.repeat(np.arange(h * w), k), np.asarray(indices).reshape(-1)),
        np.asarray(weights, np.float64).reshape(-1),
    )
    expected = _dense_affinity(query, memory, valid, k, 0.05, radius, restrict_first)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # The invalid frame (2) is never read; the radius keeps frames 1.. local.
    assert got[:, 2 * h * w : 3 * h * w].max() == 0.0
    if radius is not None and radius < 2:
        assert got[0, h * w + 2] == 0.0  # query (0, 0) -> frame 1 (0, 2): distance 2 >= 1.5


def test_read_memory_is_the_affinity_transpose_times_the_memory():
    h, w, m, k, x = 4, 5, 3, 6, 7
    rng = np.random.default_rng(1)
    weights = rng.random((h, w, k)).astype(np.float32)
    indices = rng.integers(0, m * h * w, (h, w, k)).astype(np.int32)
    memory = rng.normal(size=(m, h, w, x)).astype(np.float32)
    dense = np.zeros((h * w, m * h * w))
    np.add.at(dense, (np.repeat(np.arange(h * w), k), indices.ravel()), weights.ravel())
    expected = (dense @ memory.reshape(m * h * w, x)).reshape(h, w, x)
    got = inference.read_memory(jnp.asarray(weights), jnp.asarray(indices), jnp.asarray(memory))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_downsample_cells_averages_8x8_cells():
    x = np.arange(2 * 16 * 24, dtype=np.float32).reshape(2, 16, 24)
    expected = x.reshape(2, 2, 8, 3, 8).mean(axis=(2, 4))
    np.testing.assert_allclose(inference.downsample_cells(jnp.asarray(x)), expected)


# --- tracking ----------------------------------------------------------------------------------


def test_zeroed_decoder_with_mix_coarse_follows_the_square(tmp_path, modules):
    """Decoder logits 0: the mixed output is the coarse mask; it follows the moving square."""
    frames, truth = _moving_squares((96, 128), 8, [(1, (8, 8), (8, 8), 0)])
    video = _video(tmp_path, frames, {0: truth[0]})
    config = inference.MaskDecodingConfig(short_side=None, mix_coarse=True, refine_rounds=1)
    segmenter = inference.MaskDecodingSegmenter(
        modules["encoder"], _with_constant_decoder(modules["head"], 0.0), config, key_fn=patch_keys
    )
    masks = list(segmenter.segment(video))
    assert len(masks) == 8
    np.testing.assert_array_equal(masks[0], truth[0])
    for t in range(1, 8):
        assert set(np.unique(masks[t])) <= {0, 1}
        assert _iou(masks[t] == 1, truth[t] == 1) > 0.8, t
    # The square moved 56 pixels: the first mask is far from the last one.
    assert _iou(masks[-1] == 1, truth[0] == 1) < 0.1


@pytest.mark.parametrize("bias, expected_id", [(2.0, 1), (-2.0, 0)])
def test_without_mix_coarse_the_output_is_the_decoder_prediction(
    tmp_path, modules, bias, expected_id
):
    """The same video, decoder logits constant: every predicted frame is that constant."""
    frames, truth = _moving_squares((48, 64), 4, [(1, (8, 8), (0, 8), 0)])
    video = _video(tmp_path, frames, {0: truth[0]})
    config = inference.MaskDecodingConfig(short_side=None, refine_rounds=0)
    segmenter = inference.MaskDecodingSegmenter(
        modules["encoder"], _with_constant_decoder(modules["head"], bias), config, key_fn=patch_keys
    )
    results = list(segmenter.run(video))
    np.testing.assert_array_equal(results[0].mask, truth[0])
    p = 1.0 / (1.0 + np.exp(-bias))
    for result in results[1:]:
        np.testing.assert_array_equal(result.mask, np.full((48, 64), expected_id, np.uint8))
        # soft aggregation of one object: odds p / (1 - p) against (1 - p) / p, normalised.
        odds = np.array([(1 - p) / p, p / (1 - p)])
        np.testing.assert_allclose(result.probs[5, 7], odds / odds.sum(), rtol=1e-4)


def test_object_appearing_later_is_absent_before_and_tracked_after(tmp_path, modules):
    # id 2 from frame 0, id 5 given at frame 3 (YouTube-VOS style); non-contiguous ids.
    frames, truth = _moving_squares(
        (64, 96), 7, [(2, (8, 8), (0, 8), 0), (5, (32, 64), (0, -8), 3)], seed=3
    )
    video = _video(tmp_path, frames, {0: truth[0], 3: truth[3]}, object_starts={2: 0, 5: 3})
    # No refinement: the coarse-passing head's rounds would erode the squares (bilinear x8).
    config = inference.MaskDecodingConfig(short_side=None, refine_rounds=0, num_recent=2)
    segmenter = inference.MaskDecodingSegmenter(
        modules["encoder"], modules["coarse"], config, key_fn=patch_keys
    )
    results = list(segmenter.run(video))
    for t, result in enumerate(results):
        assert set(np.unique(result.mask)) <= {0, 2, 5}
        assert _iou(result.mask == 2, truth[t] == 2) > 0.8, t
        if t < 3:
            assert not (result.mask == 5).any(), t
        else:
            assert _iou(result.mask == 5, truth[t] == 5) > 0.8, t
    np.testing.assert_array_equal(results[3].mask == 5, truth[3] == 5)  # the given mask
    # Frame 3 is kept as a long-term frame; the recent ring holds the 2 latest others.
    assert results[3].memory_frames == (0, 1, 2)
    assert results[6].memory_frames == (0, 3, 4, 5)


def test_nothing_before_the_first_annotated_frame(tmp_path, modules):
    frames, truth = _moving_squares((48, 64), 4, [(1, (8, 8), (0, 8), 0)])
    video = _video(tmp_path, frames, {2: truth[2]}, object_starts={1: 2})
    config = inference.MaskDecodingConfig(short_side=None, refine_rounds=0)
    segmenter = inference.MaskDecodingSegmenter(
        modules["encoder"], modules["coarse"], config, key_fn=patch_keys
    )
    results = list(segmenter.run(video))
    assert [r.probs is None for r in results] == [True, True, False, False]
    assert not results[0].mask.any() and not results[1].mask.any()
    np.testing.assert_array_equal(results[2].mask, truth[2])
    assert _iou(results[3].mask == 1, truth[3] == 1) > 0.8


# --- memory ------------------------------------------------------------------------------------


def test_memory_keeps_the_first_frame_and_the_latest_recent_ones_without_recompiling(
    tmp_path, modules
):
    frames, truth = _moving_squares((48, 64), 7, [(1, (8, 8), (0, 4), 0)])
    video = _video(tmp_path, frames, {0: truth[0]})
    config = inference.MaskDecodingConfig(short_side=None, num_recent=2, refine_rounds=0)
    segmenter = inference.MaskDecodingSegmenter(modules["encoder"], modules["head"], config)
    traces = []
    memories = []
    for result in segmenter.run(video):
        traces.append(dict(segmenter.trace_counts))
        memories.append(result.memory_frames)
    assert memories == [(), (0,), (0, 1), (0, 1, 2), (0, 2, 3), (0, 3, 4), (0, 4, 5)]
    # One trace for the first frame, one for the others; the ring filling changes nothing.
    assert traces[1] == traces[-1] == {"step": 2, "write": 1}
    list(segmenter.segment(video))  # a second video of the same size: no new trace
    assert dict(segmenter.trace_counts) == {"step": 2, "write": 1}

    padded = inference.MaskDecodingSegmenter(
        modules["encoder"],
        modules["head"],
        inference.MaskDecodingConfig(
            short_side=None, num_recent=2, refine_rounds=0, pad_recent_with_first=True
        ),
    )
    memories = [r.memory_frames for r in padded.run(video)]
    assert memories[1:4] == [(0, 0, 0), (0, 0, 1), (0, 1, 2)]


# --- decoding ----------------------------------------------------------------------------------


def test_refine_rounds_change_the_output_and_decode_rounds_plus_one_times(tmp_path, modules):
    frames, truth = _moving_squares((48, 64), 3, [(1, (8, 8), (0, 8), 0)])
    video = _video(tmp_path, frames, {0: truth[0]})
    probs = {}
    for rounds in (0, 1):
        config = inference.MaskDecodingConfig(short_side=None, refine_rounds=rounds)
        segmenter = inference.MaskDecodingSegmenter(modules["encoder"], modules["head"], config)
        probs[rounds] = np.asarray(list(segmenter.run(video))[2].probs)
    assert np.abs(probs[0] - probs[1]).max() > 1e-3

    for rounds in (0, 2):
        config = inference.MaskDecodingConfig(short_side=None, refine_rounds=rounds)
        segmenter = inference.MaskDecodingSegmenter(modules["encoder"], modules["counting"], config)
        CountingHead.decode_calls = 0
        with jax.disable_jit():  # count calls per frame, not per trace
            list(segmenter.segment(video))
        assert CountingHead.decode_calls == 2 * (rounds + 1)  # frames 1 and 2 are decoded


# --- input and output --------------------------------------------------------------------------


@pytest.mark.parametrize("short_side, resized", [(None, (45, 61)), (40, (40, 54))])
def test_full_resolution_output_for_a_size_not_a_multiple_of_8(
    tmp_path, modules, short_side, resized
):
    frames, truth = _moving_squares((45, 61), 3, [(3, (8, 8), (0, 8), 0)])
    video = _video(tmp_path, frames, {0: truth[0]})
    config = inference.MaskDecodingConfig(short_side=short_side, refine_rounds=0)
    segmenter = inference.MaskDecodingSegmenter(modules["encoder"], modules["coarse"], config)
    assert segmenter.resized_size((45, 61)) == resized
    results = list(segmenter.run(video))
    for result in results:
        assert result.mask.shape == (45, 61) and result.mask.dtype == np.uint8
        assert result.probs.shape == (*resized, 2)
        assert set(np.unique(result.mask)) <= {0, 3}
    np.testing.assert_array_equal(results[0].mask, truth[0])


def test_prepare_frame_pads_with_the_mean_colour():
    frame = jnp.full((10, 13, 3), 7, jnp.uint8)
    x = inference.prepare_frame(frame, (10, 13))
    assert x.shape == (1, 16, 16, 3)
    np.testing.assert_allclose(x[0, :10, :13], 7.0)
    normed = color.normalize_frames(x)
    np.testing.assert_allclose(normed[0, 10:], 0.0, atol=1e-6)
    np.testing.assert_allclose(normed[0, :, 13:], 0.0, atol=1e-6)


def test_from_config_reads_fields_and_names_bad_ones():
    decoding = ml_collections.ConfigDict({"top_k": 5, "mix_coarse": True, "short_side": None})
    config = inference.from_config(decoding)
    assert (config.top_k, config.mix_coarse, config.short_side) == (5, True, None)
    assert (config.temperature, config.num_recent, config.radius) == (0.05, 5, 12.0)
    assert config.refine_rounds == 3 and not config.restrict_first_frame
    with pytest.raises(ValueError, match=r"config\.eval\.decoding\.top_k"):
        inference.from_config({"top_k": 0})
    with pytest.raises(ValueError, match=r"config\.eval\.decoding\.refine_rounds"):
        inference.from_config({"refine_rounds": -1})
    with pytest.raises(ValueError, match=r"config\.eval\.decoding\.short_side"):
        inference.from_config({"short_side": 4})
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['topk'\]"):
        inference.from_config({"topk": 3})
