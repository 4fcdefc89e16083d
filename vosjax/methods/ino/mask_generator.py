"""Patch masks for INO's masked image modelling, in pure JAX.

`random_mask` masks a uniformly random set of exactly `num_masked` patches (the released
`mask_generator.RandomMaskingGenerator`: a shuffled 0/1 vector); `block_mask` grows a mask out of
random rectangles until it holds a target number of patches (BEiT / iBOT style);
`sample_mim_mask` masks, with probability `prob`, a uniformly random fraction of the grid with
either (INO: with probability 0.5, U(0.1, 0.5) of the 28 x 28 patches). Everything is drawn from
one PRNG key (the block mask inside a `jax.lax.while_loop`), so they run in a jitted train step,
vmap over keys, and give the same mask on every device for the same key (INO shares one mask
across the batch and across devices).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


def _check_grid(grid: tuple[int, int]) -> tuple[int, int]:
    if len(grid) != 2 or any(int(n) != n or n < 1 for n in grid):
        raise ValueError(f"grid={grid}; expected (h, w), two positive ints")
    return int(grid[0]), int(grid[1])


def _check_block_args(min_block: int, aspect_range: tuple[float, float], max_failures: int):
    if min_block < 1:
        raise ValueError(f"min_block={min_block}; expected >= 1")
    if len(aspect_range) != 2 or not 0.0 < aspect_range[0] <= aspect_range[1]:
        raise ValueError(f"aspect_range={aspect_range}; expected (lo, hi) with 0 < lo <= hi")
    if max_failures < 1:
        raise ValueError(f"max_failures={max_failures}; expected >= 1")


def block_mask(
    key: jax.Array,
    grid: tuple[int, int],
    num_masked: jax.Array | int,
    *,
    min_block: int = 4,
    aspect_range: tuple[float, float] = (0.3, 1 / 0.3),
    max_failures: int = 10,
) -> jax.Array:
    """A mask of about `num_masked` patches made of random axis-aligned rectangles.

    Each attempt draws, with `remaining = num_masked - masked so far`:
      area   ~ U(min_block, remaining) (continuous);
      aspect ~ log-uniform over aspect_range (height / width);
      height = round(sqrt(area * aspect)), width = round(sqrt(area / aspect)), both >= 1;
      a uniformly random top-left corner, if height < h and width < w (otherwise the attempt
      fails).
    The rectangle is OR-ed into the mask if it adds between 1 and `remaining` new patches, so the
    count never exceeds num_masked. Attempts stop once num_masked patches are masked, or after
    `max_failures` attempts in a row that added nothing. Every accepted rectangle adds at least
    one patch, so there are at most (h * w + 1) * (max_failures + 1) attempts; the loop is
    bounded by that too.

    When fewer than `min_block` patches remain, the area range collapses to the single value
    `remaining`: the last rectangles then top the mask up with small blocks (1 x 1, 1 x 2, ...)
    instead of giving up short of the target. Only these top-up blocks can be smaller than
    min_block (apart from the rounding of height and width).

    Args:
      key: PRNG key; the same key gives the same mask.
      grid: static (h, w) patch grid.
      num_masked: target number of masked patches, a Python int or a traced int scalar; clipped
        to [0, h * w].
      min_block: smallest target area of a rectangle, in patches.
      aspect_range: (lo, hi) range of height / width, 0 < lo <= hi.
      max_failures: consecutive attempts without a new patch before giving up, >= 1.

    Returns:
      bool [h, w]; True = masked. Holds at most num_masked patches.

    Raises:
      ValueError: if grid, min_block, aspect_range, max_failures or a concrete num_masked is
        invalid.
    """
    h, w = _check_grid(grid)
    _check_block_args(min_block, aspect_range, max_failures)
    if isinstance(num_masked, int | np.integer) and not 0 <= num_masked <= h * w:
        raise ValueError(f"num_masked={num_masked}; expected an int in [0, {h * w}]")
    target = jnp.clip(jnp.asarray(num_masked, jnp.int32), 0, h * w)
    log_lo, log_hi = math.log(aspect_range[0]), math.log(aspect_range[1])
    max_iterations = (h * w + 1) * (max_failures + 1)
    rows = jnp.arange(h)[:, None]
    cols = jnp.arange(w)[None, :]

    def cond(state):
        i, _, count, failures = state
        return (count < target) & (failures < max_failures) & (i < max_iterations)

    def body(state):
        i, mask, count, failures = state
        k_area, k_aspect, k_top, k_left = jax.random.split(jax.random.fold_in(key, i), 4)
        remaining = target - count
        hi = remaining.astype(jnp.float32)
        lo = jnp.minimum(jnp.float32(min_block), hi)
        area = jax.random.uniform(k_area, (), jnp.float32, lo, hi)
        aspect = jnp.exp(jax.random.uniform(k_aspect, (), jnp.float32, log_lo, log_hi))
        bh = jnp.maximum(jnp.round(jnp.sqrt(area * aspect)), 1).astype(jnp.int32)
        bw = jnp.maximum(jnp.round(jnp.sqrt(area / aspect)), 1).astype(jnp.int32)
        fits = (bh < h) & (bw < w)
        # randint's bound is exclusive; when the box does not fit the draw is discarded anyway.
        top = jax.random.randint(k_top, (), 0, jnp.maximum(h - bh + 1, 1))
        left = jax.random.randint(k_left, (), 0, jnp.maximum(w - bw + 1, 1))
        rect = (rows >= top) & (rows < top + bh) & (cols >= left) & (cols < left + bw)
        new = jnp.sum(rect & ~mask, dtype=jnp.int32)
        accept = fits & (new > 0) & (new <= remaining)
        mask = jnp.where(accept, mask | rect, mask)
        count = count + jnp.where(accept, new, 0)
        failures = jnp.where(accept, 0, failures + 1)
        return i + 1, mask, count, failures

    init = (jnp.int32(0), jnp.zeros((h, w), bool), jnp.int32(0), jnp.int32(0))
    _, mask, _, _ = jax.lax.while_loop(cond, body, init)
    return mask


MASK_STYLES = ("random", "block")


def random_mask(key: jax.Array, grid: tuple[int, int], num_masked: jax.Array | int) -> jax.Array:
    """Exactly `num_masked` patches, a uniformly random subset (the released INO generator).

    Args:
      key: PRNG key.
      grid: static (h, w) patch grid.
      num_masked: number of masked patches in [0, h * w] (may be traced).

    Returns:
      bool [h, w]; True = masked.

    Raises:
      ValueError: if grid or a concrete num_masked is invalid.
    """
    h, w = _check_grid(grid)
    if isinstance(num_masked, int) and not 0 <= num_masked <= h * w:
        raise ValueError(f"num_masked={num_masked}; expected 0..{h * w}")
    rank = jnp.argsort(jax.random.uniform(key, (h * w,)))  # a random permutation
    order = jnp.zeros((h * w,), jnp.int32).at[rank].set(jnp.arange(h * w, dtype=jnp.int32))
    return (order < num_masked).reshape(h, w)


def sample_mim_mask(
    key: jax.Array,
    grid: tuple[int, int],
    *,
    prob: float = 0.5,
    ratio_range: tuple[float, float] = (0.1, 0.5),
    min_block: int = 4,
    style: str = "random",
) -> jax.Array:
    """INO's MIM mask: with probability `prob`, a random fraction r ~ U(ratio_range) of the grid.

    style 'random' (the released RandomMaskingGenerator): floor(r * h * w) patches, a uniformly
    random subset. style 'block': a block mask targeting round(r * h * w) patches (see
    `block_mask`, default aspect range and failure limit). Otherwise nothing is masked.

    Args:
      key: PRNG key; the same key gives the same mask.
      grid: static (h, w) patch grid (INO: 28 x 28 for 224 px at patch 8).
      prob: probability of masking at all, in [0, 1].
      ratio_range: (lo, hi) fraction of patches to mask, 0 <= lo <= hi <= 1.
      min_block: smallest target area of a rectangle, >= 1 (style 'block').
      style: 'random' or 'block'.

    Returns:
      bool [h, w]; True = masked.

    Raises:
      ValueError: if grid, prob, ratio_range, min_block or style is invalid.
    """
    if style not in MASK_STYLES:
        raise ValueError(f"style={style!r}; expected one of {MASK_STYLES}")
    h, w = _check_grid(grid)
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"prob={prob}; expected a probability in [0, 1]")
    if len(ratio_range) != 2 or not 0.0 <= ratio_range[0] <= ratio_range[1] <= 1.0:
        raise ValueError(f"ratio_range={ratio_range}; expected (lo, hi) with 0 <= lo <= hi <= 1")
    if min_block < 1:
        raise ValueError(f"min_block={min_block}; expected >= 1")
    k_apply, k_ratio, k_mask = jax.random.split(key, 3)
    apply = jax.random.uniform(k_apply, ()) < prob
    ratio = jax.random.uniform(k_ratio, (), jnp.float32, ratio_range[0], ratio_range[1])
    if style == "random":
        num_masked = jnp.floor(ratio * (h * w)).astype(jnp.int32)  # python's int(r * n)
        return random_mask(k_mask, (h, w), jnp.where(apply, num_masked, 0))
    num_masked = jnp.round(ratio * (h * w)).astype(jnp.int32)
    # A zero target ends the loop at once, so unmasked samples cost nothing.
    return block_mask(k_mask, (h, w), jnp.where(apply, num_masked, 0), min_block=min_block)
