"""Top-k affinity label propagation over a spatially restricted context, chunked over queries.

The propagation step of CRW, DUL, DINO and INO: compare every position of the query frame with
the positions of the context frames (cosine similarity), keep those in a spatial neighbourhood
of the query position, take the top k over all context frames jointly, softmax their
similarities divided by a temperature, and return the weighted sum of their soft labels.

No (hw x hw) similarity or neighbourhood mask is ever built. The query grid is cut into blocks
of bh x bw positions; the neighbourhoods of a block's queries all lie inside one window of
(bh + 2r) x (bw + 2r) positions of each context frame (r: the largest offset the neighbourhood
allows), so a block is compared with that window only, and the exact neighbourhood (square or
circle) is masked from coordinates. Windows are clamped to lie inside the frame (they then still
hold every neighbour), so the context needs no padding; without a radius, or with one larger
than the frame, the window is the whole frame and the same code is the dense computation.

Why windows rather than a full similarity masked with -inf: at 480p (60 x 107 grid, C = 384)
the window version took 0.35 s per frame for DINO's setting (8 frames, |d| <= 12) against
1.58 s for the full similarity, and 1.09 s against 4.76 s for CRW's (21 frames, circle < 12,
first frame unrestricted), on 2 CPU cores, matmul-bound at about 120 GFLOP/s. Memory per step
is about 3 x queries x candidates x 4 bytes whatever the frame size (`step_bytes`).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

NEIGHBOURHOODS = ("square", "circle")
# Similarity given to excluded positions: finite (like CRW's -1e10) so that a softmax over
# top-k values that are all excluded stays finite instead of NaN; exp() of it is exactly 0.
_EXCLUDED = -1e30
# Intermediates of one loop step on an accelerator when blocks_per_step is automatic.
ACCELERATOR_STEP_BYTES = 2 * 2**30


def l2_normalize(features: jax.Array, eps: float = 1e-12) -> jax.Array:
    """Divides each feature vector by its L2 norm (at least `eps`).

    Args:
      features: [..., C].
      eps: lower bound of the norm, so that all-zero vectors stay zero.

    Returns:
      float32 [..., C].
    """
    features = jnp.asarray(features, jnp.float32)
    norm = jnp.sqrt(jnp.sum(features * features, axis=-1, keepdims=True))
    return features / jnp.maximum(norm, eps)


def window_radius(radius: float | None, neighbourhood: str) -> int | None:
    """Largest |dy| (or |dx|) inside the neighbourhood, or None for no restriction.

    Args:
      radius: R. `square`: |dy| <= R and |dx| <= R. `circle`: dy^2 + dx^2 < R^2 (strict, as
        CRW's Euclidean distance < 12).
      neighbourhood: 'square' or 'circle'.

    Returns:
      The half-width of the square window holding every neighbour.

    Raises:
      ValueError: unknown neighbourhood or negative radius.
    """
    if neighbourhood not in NEIGHBOURHOODS:
        raise ValueError(f"neighbourhood: expected one of {NEIGHBOURHOODS}, got {neighbourhood!r}")
    if radius is None:
        return None
    if radius < 0 or (neighbourhood == "circle" and radius <= 0):
        raise ValueError(
            f"radius: expected None, > 0 (circle) or >= 0 (square), got {radius} ({neighbourhood})"
        )
    if neighbourhood == "square":
        return math.floor(radius)
    return math.ceil(radius) - 1


def in_neighbourhood(
    dy: jax.Array, dx: jax.Array, radius: float | None, neighbourhood: str
) -> jax.Array:
    """Whether offsets (dy, dx) lie in the neighbourhood (broadcasting dy against dx)."""
    if radius is None:
        return jnp.ones(jnp.broadcast_shapes(dy.shape, dx.shape), bool)
    if neighbourhood == "square":
        return (jnp.abs(dy) <= radius) & (jnp.abs(dx) <= radius)
    return (dy * dy + dx * dx).astype(jnp.float32) < float(radius) ** 2


@dataclasses.dataclass(frozen=True)
class BlockPlan:
    """How a query grid is cut into blocks and which context window each block reads.

    Attributes:
      grid: (h, w) of the feature grid.
      block: (bh, bw) query positions per block.
      window: (wh, ww) context positions per block and frame.
      starts: int32 [num_blocks, 2]: top-left corner of each query block.
      window_starts: int32 [num_blocks, 2]: top-left corner of each block's context window.
    """

    grid: tuple[int, int]
    block: tuple[int, int]
    window: tuple[int, int]
    starts: np.ndarray
    window_starts: np.ndarray

    @property
    def num_blocks(self) -> int:
        return len(self.starts)


def plan_blocks(
    grid: tuple[int, int], block_size: int | tuple[int, int], half_window: int | None
) -> BlockPlan:
    """Cuts a (h, w) grid into blocks; the last row / column of blocks is shifted inside.

    Args:
      grid: (h, w).
      block_size: (bh, bw) of a query block, or its side; clipped to the grid.
      half_window: the neighbourhood's largest offset, or None for the whole frame.

    Returns:
      The plan. Shifted last blocks overlap their neighbours: those positions are computed
      twice with the same result, instead of padding the query grid.
    """
    h, w = grid
    bh, bw = (block_size, block_size) if isinstance(block_size, int) else block_size
    bh, bw = min(bh, h), min(bw, w)
    if half_window is None:
        wh, ww = h, w
    else:
        wh, ww = min(bh + 2 * half_window, h), min(bw + 2 * half_window, w)
    ys = np.minimum(np.arange(0, h, bh), h - bh)
    xs = np.minimum(np.arange(0, w, bw), w - bw)
    starts = np.stack(np.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)
    r = 0 if half_window is None else half_window
    window_starts = np.stack(
        [np.clip(starts[:, 0] - r, 0, h - wh), np.clip(starts[:, 1] - r, 0, w - ww)], -1
    )
    return BlockPlan(
        grid=(h, w),
        block=(bh, bw),
        window=(wh, ww),
        starts=starts.astype(np.int32),
        window_starts=window_starts.astype(np.int32),
    )


def num_candidates(plan: BlockPlan, num_ring: int, restrict_anchor: bool) -> int:
    """Context positions that one query block is compared with (anchor + ring windows)."""
    window = plan.window[0] * plan.window[1]
    anchor = window if restrict_anchor else plan.grid[0] * plan.grid[1]
    return anchor + num_ring * window


def step_bytes(
    plan: BlockPlan,
    num_ring: int,
    restrict_anchor: bool,
    channels: int,
    num_classes: int,
    blocks_per_step: int = 1,
    keep_ties: bool = False,
) -> int:
    """Upper estimate of the bytes of the intermediates of one step of `propagate`.

    Per block: up to three [queries, candidates] float32 buffers live at once (similarities,
    masked and concatenated similarities, their padded copy for the grouped top-k), plus the
    context windows [candidates, C] and their labels [candidates, K], copied out of the ring.
    Nothing scales with (h w)^2: this is the memory bound of the whole computation besides
    its inputs and output. `keep_ties` adds one more (the weights of every kept candidate).

    Returns:
      Bytes for `blocks_per_step` blocks.
    """
    queries = plan.block[0] * plan.block[1]
    cand = num_candidates(plan, num_ring, restrict_anchor)
    buffers = 4 if keep_ties else 3
    per_block = buffers * queries * cand * 4 + cand * (channels + num_classes) * 4
    return blocks_per_step * per_block


def choose_block(
    grid: tuple[int, int],
    half_window: int | None,
    num_ring: int,
    restrict_anchor: bool,
    max_candidates_bytes: int = 256 * 2**20,
) -> tuple[int, int]:
    """The block shape with the least estimated matmul time.

    Cost model: a block of q = bh * bw queries against c candidates costs about
    c * (q + 32): the similarity matmul is c * q multiply-adds, and a matmul with few rows runs
    below peak (measured on CPU: 36-row blocks ran at about the speed of 68-row ones per row).
    Shapes from 4 to 24 on a side with at least 48 queries are tried; a block whose
    [queries, candidates] float32 similarities exceed `max_candidates_bytes` is skipped unless
    nothing smaller exists. On the 480p grid (60 x 107) this picks blocks near 10 x 9: the cost
    model's ranking matched measured times within noise for DINO's and CRW's settings.

    Args:
      grid: (h, w).
      half_window: the neighbourhood's largest offset, None for no restriction.
      num_ring: recent frames in the context.
      restrict_anchor: whether the anchor frame is restricted too.
      max_candidates_bytes: bound on one block's similarity matrix.

    Returns:
      (bh, bw).
    """
    h, w = grid
    best, best_cost = None, None
    for bh in range(4, 25):
        for bw in range(4, 25):
            if bh * bw < 48 and (bh < h or bw < w):
                continue
            plan = plan_blocks(grid, (bh, bw), half_window)
            queries = plan.block[0] * plan.block[1]
            cand = num_candidates(plan, num_ring, restrict_anchor)
            too_big = queries * cand * 4 > max_candidates_bytes
            cost = (too_big, plan.num_blocks * cand * (queries + 32), -queries)
            if best_cost is None or cost < best_cost:
                best, best_cost = plan.block, cost
    return best


def top_k_grouped(values: jax.Array, k: int, group_size: int) -> tuple[jax.Array, jax.Array]:
    """Exact top-k over the last axis, faster than `lax.top_k` on long rows on CPU.

    The k largest values of a row lie in the k groups (of `group_size` consecutive entries)
    with the largest maxima: an entry of any other group is smaller than those k maxima. So
    one cheap max-reduction, a top-k over the group maxima and a top-k over k * group_size
    entries replace a top-k over the whole row (5x faster at 64 x 8192 on CPU).

    Args:
      values: [..., n].
      k: number of entries to keep.
      group_size: entries per group; the row is padded with -inf to a multiple of it.

    Returns:
      (values [..., k] in decreasing order, indices [..., k] into the last axis of `values`).
      Among equal values the chosen indices may differ from `lax.top_k`'s.
    """
    n = values.shape[-1]
    if group_size <= 0 or n <= k * group_size:
        return jax.lax.top_k(values, k)
    num_groups = -(-n // group_size)
    pad = num_groups * group_size - n
    if pad:
        fill = jnp.full((*values.shape[:-1], pad), -jnp.inf, values.dtype)
        values = jnp.concatenate([values, fill], axis=-1)
    grouped = values.reshape(*values.shape[:-1], num_groups, group_size)
    _, best_groups = jax.lax.top_k(jnp.max(grouped, axis=-1), k)  # [..., k]
    candidates = jnp.take_along_axis(grouped, best_groups[..., None], axis=-2)
    top_values, j = jax.lax.top_k(candidates.reshape(*values.shape[:-1], k * group_size), k)
    group = jnp.take_along_axis(best_groups, j // group_size, axis=-1)
    return top_values, group * group_size + j % group_size


def propagate(
    query: jax.Array,
    anchor_features: jax.Array,
    anchor_labels: jax.Array,
    ring_features: jax.Array,
    ring_labels: jax.Array,
    ring_valid: jax.Array,
    *,
    top_k: int,
    temperature: float,
    radius: float | None = None,
    neighbourhood: str = "square",
    restrict_anchor: bool = True,
    block_size: int | tuple[int, int] | None = None,
    blocks_per_step: int | None = None,
    group_size: int = 32,
    keep_ties: bool = False,
    pad_with_anchor: bool = False,
) -> jax.Array:
    """Predicts the query frame's soft labels from a context of labelled frames.

    The context is the anchor (the first frame, or the frame an object starts in: CRW's "long
    memory") plus a ring of recent frames, of which only the `ring_valid` ones count. Features
    must already be L2-normalised (`l2_normalize`), so that dot products are cosines.

    Args:
      query: [h, w, C] features of the frame to predict.
      anchor_features: [h, w, C].
      anchor_labels: [h, w, K] soft labels of the anchor.
      ring_features: [N, h, w, C] recent frames (any order: top-k is over all jointly).
      ring_labels: [N, h, w, K].
      ring_valid: bool [N]; False slots are ignored (not yet filled, or not in this context).
      top_k: neighbours kept per query position, over all context frames jointly.
      temperature: softmax temperature of the cosine similarities.
      radius: neighbourhood radius in feature cells, None for no restriction.
      neighbourhood: 'square' (|dy|, |dx| <= radius) or 'circle' (dy^2 + dx^2 < radius^2).
      restrict_anchor: apply the neighbourhood to the anchor too (DINO, INO); CRW does not.
      block_size: query block (bh, bw) or side computed at once; None: `choose_block`.
      blocks_per_step: blocks vectorised together in one step of the loop; None: 1 on CPU
        (already compute-bound on both cores), else as many as fit in `ACCELERATOR_STEP_BYTES`
        (a GPU needs more work per step than one block).
      group_size: group length of `top_k_grouped`.
      keep_ties: keep every context position whose similarity equals the k-th largest (DINO's
        and INO's `aff[aff < kth] = 0`), so that more than `top_k` positions may share the
        weights; False keeps exactly `top_k` (CRW's `torch.topk`).
      pad_with_anchor: the invalid ring slots hold copies of the anchor frame (its features and
        labels, restricted to the neighbourhood like a ring frame) instead of being ignored:
        CRW's context, padded in front with copies of the first frame, so that before
        `num_recent` frames exist the anchor's positions appear several times among the
        candidates (at frame 1 the top k are often k copies of one key: 1-NN).

    Returns:
      float32 [h, w, K]: sum over the top-k context positions of softmax(sim / temperature)
      times their labels.

    Raises:
      ValueError: shapes disagree, or fewer than `top_k` context positions exist.
    """
    h, w, c = query.shape
    n = ring_features.shape[0]
    k_cls = anchor_labels.shape[-1]
    if anchor_features.shape != (h, w, c) or ring_features.shape[1:] != (h, w, c):
        raise ValueError(
            f"features: expected query, anchor [h, w, C] and ring [N, h, w, C] with the same "
            f"h, w, C; got {query.shape}, {anchor_features.shape}, {ring_features.shape}"
        )
    if anchor_labels.shape != (h, w, k_cls) or ring_labels.shape != (n, h, w, k_cls):
        raise ValueError(
            f"labels: expected anchor [h, w, K] and ring [N, h, w, K] with h, w = {(h, w)}; got "
            f"{anchor_labels.shape}, {ring_labels.shape}"
        )
    half = window_radius(radius, neighbourhood)
    if block_size is None:
        block_size = choose_block((h, w), half, n, restrict_anchor)
    plan = plan_blocks((h, w), block_size, half)
    if blocks_per_step is None:
        blocks_per_step = 1
        if jax.default_backend() != "cpu":
            one = step_bytes(plan, n, restrict_anchor, c, k_cls, keep_ties=keep_ties)
            blocks_per_step = int(np.clip(ACCELERATOR_STEP_BYTES // one, 1, plan.num_blocks))
    cand = num_candidates(plan, n, restrict_anchor)
    if cand < top_k:
        raise ValueError(f"top_k: {top_k} is more than the {cand} context positions per block")
    bh, bw = plan.block
    wh, ww = plan.window

    query = jnp.asarray(query, jnp.float32)
    anchor_flat_f = jnp.reshape(anchor_features, (h * w, c))
    anchor_flat_l = jnp.reshape(anchor_labels, (h * w, k_cls))
    ring_valid = jnp.asarray(ring_valid, bool)
    offsets_y = jnp.arange(bh)
    offsets_x = jnp.arange(bw)
    inv_t = 1.0 / temperature

    def one_block(starts: jax.Array) -> jax.Array:
        (y0, x0), (sy, sx) = starts[0], starts[1]
        q = jax.lax.dynamic_slice(query, (y0, x0, 0), (bh, bw, c)).reshape(bh * bw, c)
        # Offsets of every window position from every query position of the block.
        dy = (sy + jnp.arange(wh))[None, :] - (y0 + offsets_y)[:, None]  # [bh, wh]
        dx = (sx + jnp.arange(ww))[None, :] - (x0 + offsets_x)[:, None]  # [bw, ww]
        near = in_neighbourhood(dy[:, None, :, None], dx[None, :, None, :], radius, neighbourhood)
        near = near.reshape(bh * bw, wh * ww)

        win_f = jax.lax.dynamic_slice(ring_features, (0, sy, sx, 0), (n, wh, ww, c))
        win_l = jax.lax.dynamic_slice(ring_labels, (0, sy, sx, 0), (n, wh, ww, k_cls))
        if pad_with_anchor:
            slot = ring_valid[:, None, None, None]
            pad_f = jax.lax.dynamic_slice(anchor_features, (sy, sx, 0), (wh, ww, c))
            pad_l = jax.lax.dynamic_slice(anchor_labels, (sy, sx, 0), (wh, ww, k_cls))
            win_f = jnp.where(slot, win_f, pad_f[None])
            win_l = jnp.where(slot, win_l, pad_l[None])
            slot_valid = jnp.ones_like(ring_valid)
        else:
            slot_valid = ring_valid
        sim = jnp.einsum("qc,mc->qm", q, win_f.reshape(n * wh * ww, c))
        keep = near[:, None, :] & slot_valid[None, :, None]
        sim = jnp.where(keep, sim.reshape(bh * bw, n, wh * ww), _EXCLUDED)
        sim = sim.reshape(bh * bw, n * wh * ww)
        labels = win_l.reshape(n * wh * ww, k_cls)

        if restrict_anchor:
            a_f = jax.lax.dynamic_slice(anchor_features, (sy, sx, 0), (wh, ww, c))
            a_l = jax.lax.dynamic_slice(anchor_labels, (sy, sx, 0), (wh, ww, k_cls))
            a_sim = jnp.einsum("qc,mc->qm", q, a_f.reshape(wh * ww, c))
            a_sim = jnp.where(near, a_sim, _EXCLUDED)
            a_l = a_l.reshape(wh * ww, k_cls)
        else:
            a_sim = jnp.einsum("qc,mc->qm", q, anchor_flat_f)
            a_l = anchor_flat_l
        sim = jnp.concatenate([a_sim, sim], axis=1)
        labels = jnp.concatenate([a_l, labels], axis=0)

        top_sim, top_idx = top_k_grouped(sim, top_k, group_size)  # [bh * bw, k]
        if keep_ties:
            # Every candidate at least as similar as the k-th: one [q, cand] x [cand, K]
            # product, cheap next to the similarities themselves (K << C).
            kept = sim >= top_sim[:, -1:]
            weights = jnp.where(kept, jnp.exp((sim - top_sim[:, :1]) * inv_t), 0.0)
            pred = jnp.einsum("qm,mc->qc", weights, labels, precision="highest")
            pred = pred / jnp.sum(weights, axis=-1, keepdims=True)
            return pred.reshape(bh, bw, k_cls)
        weights = jax.nn.softmax(top_sim * inv_t, axis=-1)
        picked = jnp.take(labels, top_idx, axis=0)  # [bh * bw, k, K]
        pred = jnp.einsum("qk,qkc->qc", weights, picked)
        return pred.reshape(bh, bw, k_cls)

    block_starts = jnp.asarray(np.stack([plan.starts, plan.window_starts], 1))
    blocks = jax.lax.map(one_block, block_starts, batch_size=blocks_per_step)
    return _assemble(blocks, plan)


def _assemble(blocks: jax.Array, plan: BlockPlan) -> jax.Array:
    """[num_blocks, bh, bw, K] -> [h, w, K]; each position read from the block that owns it."""
    h, w = plan.grid
    bh, bw = plan.block
    ys, xs = np.arange(h), np.arange(w)
    n_bx = -(-w // bw)
    by = np.minimum(ys // bh, -(-h // bh) - 1)
    bx = np.minimum(xs // bw, n_bx - 1)
    block_id = by[:, None] * n_bx + bx[None, :]
    oy = ys[:, None] - plan.starts[block_id, 0]
    ox = xs[None, :] - plan.starts[block_id, 1]
    return blocks[block_id, oy, ox]


propagate_jit = functools.partial(
    jax.jit,
    static_argnames=(
        "top_k",
        "temperature",
        "radius",
        "neighbourhood",
        "restrict_anchor",
        "block_size",
        "blocks_per_step",
        "group_size",
        "keep_ties",
        "pad_with_anchor",
    ),
)(propagate)
