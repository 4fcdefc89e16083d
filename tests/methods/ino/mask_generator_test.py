"""Tests of INO's block-wise MIM masks: determinism, jit / vmap, counts, shapes, statistics."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vosjax.methods.ino import mask_generator

GRID = (28, 28)
N = 256  # batch of keys shared by the tests, so that they share compilations
ASPECT = (0.3, 1 / 0.3)


def _np_block_mask(
    rng: np.random.Generator,
    grid: tuple[int, int],
    num_masked: int,
    *,
    min_block: int = 4,
    aspect_range: tuple[float, float] = ASPECT,
    max_failures: int = 10,
) -> np.ndarray:
    """The documented algorithm of `block_mask` in numpy, with numpy's random numbers."""
    h, w = grid
    mask = np.zeros(grid, bool)
    count = failures = 0
    while count < num_masked and failures < max_failures:
        remaining = num_masked - count
        area = rng.uniform(min(min_block, remaining), remaining)
        aspect = math.exp(rng.uniform(math.log(aspect_range[0]), math.log(aspect_range[1])))
        bh = max(int(np.round(math.sqrt(area * aspect))), 1)
        bw = max(int(np.round(math.sqrt(area / aspect))), 1)
        new = 0
        if bh < h and bw < w:
            top = rng.integers(0, h - bh + 1)
            left = rng.integers(0, w - bw + 1)
            new = int((~mask[top : top + bh, left : left + bw]).sum())
            if 0 < new <= remaining:
                mask[top : top + bh, left : left + bw] = True
                count += new
            else:
                new = 0
        failures = 0 if new else failures + 1
    return mask


def _keys(n: int, seed: int = 0) -> jax.Array:
    return jax.random.split(jax.random.key(seed), n)


@functools.cache
def _batched_block_mask(grid: tuple[int, int], **kwargs):
    """jit(vmap) over (keys [N], num_masked [N])."""
    fn = functools.partial(mask_generator.block_mask, grid=grid, **kwargs)
    return jax.jit(jax.vmap(lambda k, n: fn(k, num_masked=n)))


@functools.cache
def _single_block_mask(grid: tuple[int, int]):
    """jit over (key, num_masked)."""
    return jax.jit(lambda k, n: mask_generator.block_mask(k, grid, n))


@functools.cache
def _batched_mim_mask(grid: tuple[int, int], **kwargs):
    # The block-mask statistics below; the released uniform style has its own tests.
    fn = functools.partial(
        mask_generator.sample_mim_mask, grid=grid, **{"style": "block", **kwargs}
    )
    return jax.jit(jax.vmap(fn))


def _filled_box(mask: np.ndarray) -> tuple[int, int] | None:
    """(height, width) if the True cells of mask form exactly one filled rectangle."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        return None
    bh, bw = rows.max() - rows.min() + 1, cols.max() - cols.min() + 1
    return (int(bh), int(bw)) if rows.size == bh * bw else None


def test_deterministic_per_key_and_varies_across_keys():
    keys = _keys(N)
    keys = keys.at[1].set(keys[0])
    targets = jnp.full(N, 40, jnp.int32)
    masks = np.asarray(_batched_block_mask(GRID)(keys, targets))
    assert masks.shape == (N, *GRID) and masks.dtype == bool
    np.testing.assert_array_equal(masks[0], masks[1])
    assert not np.array_equal(masks[0], masks[2])
    np.testing.assert_array_equal(_batched_block_mask(GRID)(keys, targets), masks)
    assert len({m.tobytes() for m in masks}) == N - 1


def test_vmap_equals_single_calls():
    keys = _keys(N, seed=5)
    targets = jnp.asarray(np.random.default_rng(5).integers(0, 400, N), jnp.int32)
    targets = targets.at[2].set(0)
    batched = np.asarray(_batched_block_mask(GRID)(keys, targets))
    for i in range(4):
        np.testing.assert_array_equal(batched[i], _single_block_mask(GRID)(keys[i], targets[i]))
    assert not batched[2].any()


def test_jit_with_traced_target_equals_eager():
    for seed, n in [(0, 200), (3, 5)]:
        key = jax.random.key(seed)
        eager = mask_generator.block_mask(key, GRID, n)
        np.testing.assert_array_equal(_single_block_mask(GRID)(key, jnp.int32(n)), eager)
    keys = _keys(N, seed=4)
    jitted = _batched_mim_mask(GRID, prob=1.0)(keys)
    np.testing.assert_array_equal(
        jitted[7], mask_generator.sample_mim_mask(keys[7], GRID, prob=1.0, style="block")
    )


def test_counts_bounded_and_close_to_target():
    ratios = np.random.default_rng(0).uniform(0.1, 0.5, N)
    targets = np.round(ratios * GRID[0] * GRID[1]).astype(np.int32)
    counts = np.asarray(_batched_block_mask(GRID)(_keys(N), jnp.asarray(targets)).sum((1, 2)))
    assert np.all(counts <= targets)
    fill = counts / targets
    assert fill.mean() >= 0.9
    # The same algorithm in numpy fills the same fraction on average (tolerance: 5 std errors).
    rng = np.random.default_rng(1)
    ref = np.array([_np_block_mask(rng, GRID, int(t)).sum() / t for t in targets])
    tol = 5 * math.sqrt(fill.var() / N + ref.var() / N) + 1e-3
    assert abs(fill.mean() - ref.mean()) <= tol


def test_single_rectangle_with_narrow_aspect():
    # area 24 and height / width in [0.6, 0.7]: sqrt(24 a) in [3.79, 4.10] -> 4 rows, and
    # sqrt(24 / a) in [5.86, 6.32] -> 6 columns; 4 x 6 = 24 is accepted and ends the loop.
    fn = _batched_block_mask(GRID, min_block=24, aspect_range=(0.6, 0.7))
    masks = np.asarray(fn(_keys(N), jnp.full(N, 24)))
    assert all(_filled_box(mask) == (4, 6) for mask in masks)
    corners = {tuple(int(i.min()) for i in np.nonzero(mask)) for mask in masks}
    assert len(corners) > N // 2  # the position is random


def test_single_rectangles_have_allowed_shapes():
    # With min_block = num_masked = 36 the first draw has area exactly 36; its height and width
    # can only be round(sqrt(36 a)), round(sqrt(36 / a)) for an aspect a in range.
    aspects = np.exp(np.linspace(math.log(ASPECT[0]), math.log(ASPECT[1]), 20001))
    heights = np.round(np.sqrt(36 * aspects)).astype(int)
    widths = np.round(np.sqrt(36 / aspects)).astype(int)
    allowed = set(zip(heights.tolist(), widths.tolist(), strict=True))
    masks = np.asarray(_batched_block_mask(GRID, min_block=36)(_keys(N), jnp.full(N, 36)))
    boxes = [box for box in map(_filled_box, masks) if box is not None]
    assert len(boxes) >= 20
    assert set(boxes) <= allowed
    # Both orientations occur: the aspect is sampled on both sides of 1.
    assert any(bh > bw for bh, bw in boxes) and any(bh < bw for bh, bw in boxes)


def test_fewer_remaining_than_min_block_tops_up():
    counts = np.asarray(_batched_block_mask(GRID)(_keys(N, 2), jnp.full(N, 3)).sum((1, 2)))
    assert np.all(counts <= 3)
    # Target areas collapse to the remainder, so the mask reaches 3 patches nearly always.
    assert counts.mean() >= 2.8


def test_rectangles_must_be_smaller_than_grid():
    # A 1 x w grid: every rectangle is at least 1 row high, never < h = 1, so nothing fits.
    mask = mask_generator.block_mask(jax.random.key(0), (1, 20), 5, min_block=1)
    assert not np.asarray(mask).any()


def test_sample_mim_mask_statistics():
    n = 2000
    masks = np.asarray(_batched_mim_mask(GRID)(_keys(n, seed=11)))
    assert masks.shape == (n, *GRID) and masks.dtype == bool
    counts = masks.reshape(n, -1).sum(1)
    nonempty = counts > 0
    # Fraction masked ~ Binomial(n, 0.5) / n: 4 standard deviations.
    assert abs(nonempty.mean() - 0.5) <= 4 * math.sqrt(0.25 / n)
    ratios = counts[nonempty] / (GRID[0] * GRID[1])
    assert ratios.min() >= 0.07 and ratios.max() <= 0.5
    # Expected ratio: E[round(U(0.1, 0.5) * 784) * fill] / 784, from the numpy algorithm.
    rng = np.random.default_rng(2)
    ref_targets = np.round(rng.uniform(0.1, 0.5, 800) * 784).astype(int)
    ref = np.array([_np_block_mask(rng, GRID, int(t)).sum() / 784 for t in ref_targets])
    assert 0.25 <= ref.mean() <= 0.32
    tol = 4 * math.sqrt(ratios.var() / ratios.size + ref.var() / ref.size)
    assert abs(ratios.mean() - ref.mean()) <= tol


def test_sample_mim_mask_probability_extremes():
    never = np.asarray(_batched_mim_mask(GRID, prob=0.0)(_keys(N, seed=3)))
    assert not never.any()
    always = np.asarray(_batched_mim_mask(GRID, prob=1.0)(_keys(N, seed=4)))
    counts = always.reshape(N, -1).sum(1)
    assert np.all(counts > 0)
    # ratio_range (0.1, 0.5) of 784: at most 392 patches.
    assert counts.max() <= 392


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"grid": (0, 5)}, "grid"),
        ({"grid": (4,)}, "grid"),
        ({"num_masked": -1}, "num_masked"),
        ({"num_masked": 101}, "num_masked"),
        ({"min_block": 0}, "min_block"),
        ({"aspect_range": (2.0, 1.0)}, "aspect_range"),
        ({"aspect_range": (0.0, 1.0)}, "aspect_range"),
        ({"max_failures": 0}, "max_failures"),
    ],
)
def test_block_mask_bad_args(kwargs, name):
    args = {"grid": (10, 10), "num_masked": 20, **kwargs}
    with pytest.raises(ValueError, match=name):
        mask_generator.block_mask(jax.random.key(0), **args)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"grid": (5, -1)}, "grid"),
        ({"prob": -0.1}, "prob"),
        ({"prob": 1.5}, "prob"),
        ({"ratio_range": (0.5, 0.1)}, "ratio_range"),
        ({"ratio_range": (0.1, 1.2)}, "ratio_range"),
        ({"min_block": 0}, "min_block"),
        ({"style": "blocks"}, "style='blocks'"),
    ],
)
def test_sample_mim_mask_bad_args(kwargs, name):
    args = {"grid": (10, 10), **kwargs}
    with pytest.raises(ValueError, match=name):
        mask_generator.sample_mim_mask(jax.random.key(0), **args)


def test_random_mask_has_exactly_the_count_and_uniform_positions():
    keys = _keys(3000, seed=21)
    masks = np.asarray(jax.jit(jax.vmap(lambda k: mask_generator.random_mask(k, (4, 5), 6)))(keys))
    assert masks.shape == (3000, 4, 5)
    np.testing.assert_array_equal(masks.reshape(3000, -1).sum(1), 6)
    # Every patch is masked with probability 6 / 20 (4 standard deviations).
    freq = masks.reshape(3000, -1).mean(0)
    assert np.abs(freq - 0.3).max() <= 4 * math.sqrt(0.3 * 0.7 / 3000)
    # Not a block: masked patches are scattered (a 6-patch rectangle has at most 2 rows or cols
    # of extent 3; uniform draws usually spread wider).
    assert any(_filled_box(m) is None for m in masks[:20])
    with pytest.raises(ValueError, match="num_masked=21"):
        mask_generator.random_mask(keys[0], (4, 5), 21)


def test_sample_mim_mask_random_style_is_the_released_generator():
    # RandomMaskingGenerator(28, (0.1, 0.5), 0.5): with probability 0.5 nothing, otherwise
    # int(U(0.1, 0.5) * 784) uniformly random patches.
    n = 2000
    fn = functools.partial(mask_generator.sample_mim_mask, grid=GRID, style="random")
    masks = np.asarray(jax.jit(jax.vmap(fn))(_keys(n, seed=22)))
    counts = masks.reshape(n, -1).sum(1)
    nonempty = counts > 0
    assert abs(nonempty.mean() - 0.5) <= 4 * math.sqrt(0.25 / n)
    assert counts[nonempty].min() >= int(0.1 * 784) and counts.max() <= int(0.5 * 784)
    # The count is floor(r * 784) with r uniform: mean 0.3 * 784 - 0.5.
    expected = 0.3 * 784 - 0.5
    sd = 0.4 * 784 / math.sqrt(12)
    assert abs(counts[nonempty].mean() - expected) <= 4 * sd / math.sqrt(nonempty.sum())
    # The same key gives the same mask as the single call.
    np.testing.assert_array_equal(masks[3], fn(_keys(n, seed=22)[3]))
