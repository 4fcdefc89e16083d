"""Mask-VOS mask-embedded segmentation learning: L_seg with teacher forcing over a clip.

For each query frame q = 1..Q of a clip, the memory is frames 0..q-1 with their pseudo masks
(teacher forcing: the pseudo masks, never the predictions, as the released code):
  A       = softmax over memory positions of (k_mem . k_q) / tau     [B, q hw, hw]
  V_q     = A^T V_mem, V_mem = V(frame_r, mask of object k)          [B, K, h, w, C]
  Y_q     = A^T Y_mem, the coarse mask (no gradient)                  [B, K, h, w]
  logits  = D([V_q, V(frame_q, Y_q)], f3_q, f2_q)                      [B, K, S, S]
and L_seg is the cross-entropy of the soft-aggregated logits (background + K objects) against
the query's pseudo mask, averaged over the Q queries. The paper warps the reference masks with A
(`coarse='soft'`); the released code takes the argmax of the warped masks, background channel
included (`coarse='argmax'`).

As the released `FrameworkMask.forward`, V runs once per memory frame (and, with
`MaskHead.object_batches`, per object): in training each call is its own BatchNorm batch. The
pseudo masks may be at the keys' stride or at full resolution (the released code's); see
`segmentation_loss`.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

from vosjax.methods.maskvos import mask_model

COARSE_MODES = ("soft", "argmax")


def memory_affinity(memory_keys: jax.Array, query_keys: jax.Array, temperature: float):
    """Softmax over memory positions of scaled dot products.

    Args:
      memory_keys: [B, M, D] keys of all memory positions.
      query_keys: [B, N, D] keys of the query positions.
      temperature: tau.

    Returns:
      float32 [B, M, N]; each column sums to 1.
    """
    logits = jnp.einsum(
        "bmd,bnd->bmn", memory_keys.astype(jnp.float32), query_keys.astype(jnp.float32)
    )
    return jax.nn.softmax(logits / temperature, axis=1)


def object_masks(labels: jax.Array, num_objects: int) -> jax.Array:
    """int labels [..., h, w] in 0..K -> float32 one-hot objects [..., K, h, w] (no background)."""
    ids = jnp.arange(1, num_objects + 1, dtype=labels.dtype)
    return (labels[..., None, :, :] == ids[:, None, None]).astype(jnp.float32)


def upsample_labels(labels: jax.Array, factor: int) -> jax.Array:
    """Nearest-neighbour upsampling of [..., h, w] labels by an integer factor."""
    return jnp.repeat(jnp.repeat(labels, factor, axis=-2), factor, axis=-1)


def segmentation_loss(
    head: mask_model.MaskHead,
    frames: jax.Array,
    features: Mapping[str, jax.Array],
    labels: jax.Array,
    num_objects: jax.Array,
    *,
    max_objects: int,
    num_queries: int,
    temperature: float = 0.05,
    coarse: str = "soft",
    train: bool = True,
    with_outputs: bool = False,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """L_seg of a batch of clips (see the module docstring).

    The pseudo masks may be given at the keys' stride (vosjax's clustering) or at the frames'
    size (the released code's full-resolution pseudo masks). At full resolution, as the
    released `FrameworkMask.forward`: V reads each memory frame's full-resolution object masks,
    the coarse propagation reads the one-hot labels (background included) resized to the keys'
    grid by bilinear sampling with align_corners=True, and the loss compares with the
    full-resolution labels. At the keys' stride, V reads the masks resized up by the head
    (`MaskHead.mask_resize`) and the loss compares with the labels repeated x8.

    V runs once per memory frame (the released per-frame calls: in training each call is one
    BatchNorm batch), frame q - 1 just before query q.

    Args:
      head: V and D.
      frames: [B, T, S, S, 3] normalised frames (`color.normalize_frames`).
      features: E's outputs per frame: 'key' [B, T, h, w, Dk] (unit norm), 'res4'
        [B, T, h, w, E], 'f3' [B, T, h, w, F3], 'f2' [B, T, 2h, 2w, F2]; h = S / 8.
      labels: int [B, T, h, w] or [B, T, S, S] pseudo masks, 0 background, 1..K objects.
      num_objects: int [B], objects present in each clip (<= max_objects); absent ones are
        ignored by the aggregation.
      max_objects: K.
      num_queries: Q, query frames 1..Q (1 <= Q <= T - 1; the released code uses 2).
      temperature: tau of the affinity.
      coarse: 'soft' (paper) or 'argmax' (released code).
      train: BatchNorm mode of V.
      with_outputs: also return, in the aux dict, 'seg_query_losses' [Q], 'seg_logits'
        [Q, B, K + 1, S, S] (the aggregated logits of the loss) and 'seg_coarse' int
        [Q, B, h, w] (the argmax of the coarse propagation, background 0).

    Returns:
      (scalar loss, {'seg_loss', 'seg_acc' (pixel accuracy), 'seg_objects' (mean objects)}).

    Raises:
      ValueError: bad num_queries, coarse mode or shapes.
    """
    b, t, size = frames.shape[:3]
    keys = features["key"]
    h, w = keys.shape[2:4]
    if not 1 <= num_queries <= t - 1:
        raise ValueError(f"num_queries={num_queries}: expected 1..{t - 1} (clip length {t} - 1)")
    if coarse not in COARSE_MODES:
        raise ValueError(f"coarse={coarse!r}: expected one of {COARSE_MODES}")
    full_resolution = labels.shape == (b, t) + tuple(frames.shape[2:4])
    if labels.shape != (b, t, h, w) and not full_resolution:
        raise ValueError(
            f"labels of shape {labels.shape}; expected {(b, t, h, w)} (the keys' grid) or "
            f"{(b, t) + tuple(frames.shape[2:4])} (the frames' size)"
        )
    k = max_objects
    valid = jnp.arange(k)[None, :] < num_objects[:, None]  # [B, K]
    masks = object_masks(labels, k)  # [B, T, K, h, w] or [B, T, K, S, S]: V's input
    one_hot = jnp.concatenate([(labels == 0)[:, :, None].astype(jnp.float32), masks], axis=2)
    if full_resolution:
        one_hot = mask_model.resize_align_corners(one_hot, h, w)  # [B, T, K + 1, h, w]

    values, losses, correct, merged_all, coarse_all = [], [], [], [], []
    for q in range(1, num_queries + 1):
        # Memory frame q - 1 with its pseudo masks (teacher forcing).
        values.append(
            head.encode(frames[:, q - 1], masks[:, q - 1], features["res4"][:, q - 1], train=train)
        )
        affinity = memory_affinity(
            keys[:, :q].reshape(b, q * h * w, -1), keys[:, q].reshape(b, h * w, -1), temperature
        )
        memory_values = jnp.stack(values, axis=2)  # [B, K, q, h, w, C]
        memory_values = memory_values.reshape(b, k, q * h * w, -1)
        readout = jnp.einsum("bmn,bkmc->bknc", affinity, memory_values.astype(jnp.float32))
        memory_masks = one_hot[:, :q].transpose(0, 2, 1, 3, 4).reshape(b, k + 1, q * h * w)
        propagated = jnp.einsum("bmn,bkm->bkn", affinity, memory_masks)  # [B, K + 1, hw]
        winner = jnp.argmax(propagated, axis=1).reshape(b, h, w)
        if coarse == "argmax":
            coarse_masks = object_masks(winner, k)
        else:
            coarse_masks = propagated[:, 1:].reshape(b, k, h, w)
        coarse_masks = jax.lax.stop_gradient(coarse_masks)
        logits = head.decode(
            frames[:, q],
            coarse_masks,
            readout.reshape(b, k, h, w, -1).astype(frames.dtype),
            features["res4"][:, q],
            features["f3"][:, q],
            features["f2"][:, q],
            train=train,
        )
        merged = mask_model.aggregate_objects(logits, valid)  # [B, K + 1, S, S]
        target = labels[:, q] if full_resolution else upsample_labels(labels[:, q], size // h)
        target = target.astype(jnp.int32)
        log_probs = jax.nn.log_softmax(merged.astype(jnp.float32), axis=1)
        picked = jnp.take_along_axis(log_probs, target[:, None], axis=1)[:, 0]
        losses.append(-jnp.mean(picked))
        correct.append(jnp.mean((jnp.argmax(merged, axis=1) == target).astype(jnp.float32)))
        merged_all.append(merged)
        coarse_all.append(winner)
    loss = jnp.mean(jnp.stack(losses))
    aux = {
        "seg_loss": loss,
        "seg_acc": jnp.mean(jnp.stack(correct)),
        "seg_objects": jnp.mean(num_objects.astype(jnp.float32)),
    }
    if with_outputs:
        aux["seg_query_losses"] = jnp.stack(losses)
        aux["seg_logits"] = jnp.stack(merged_all)
        aux["seg_coarse"] = jnp.stack(coarse_all)
    return loss, aux
