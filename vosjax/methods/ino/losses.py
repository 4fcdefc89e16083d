"""Losses of INO, In-N-Out generative learning (Pan et al., ACM MM 2022), as pure jnp functions.

DINO / iBOT-style teacher-student objectives on the outputs of one projection head shared by the
class token and the patch tokens (K prototypes, 4096 in the paper):

- `out_generative_loss` (section 3.2, Eqs. 1-2): the student's class-token distributions of the
  2 global crops (global-to-global) and of the local crops (local-to-global) must match the
  teacher's class-token distributions of the global crops of the same frame pair, same-view
  pairs excluded.
- `mim_loss` (section 3.3, Eq. 3): masked image modelling; the student saw a masked global crop,
  the teacher the whole crop, and the student's patch tokens at the masked positions must match
  the teacher's.
- `affinity_loss` (section 3.3, Eqs. 4-5): the affinity between the masked tokens of consecutive
  frames, from L2-normalised head outputs, must match the teacher's row by row.

The teacher side is centred (`update_center` keeps the running centre, momentum 0.9) and
sharpened at temperature 0.04; the student uses 0.1. Every function computes in float32 whatever
the input dtype, and puts a stop-gradient on the teacher side.
"""

from __future__ import annotations

import numbers

import jax
import jax.numpy as jnp
import numpy as np

# torch.nn.functional.normalize's eps (on the norm), as the released affinity loss uses it.
NORMALIZE_EPSILON = 1e-12
# How the teacher centres move (`config.loss.center_update`):
#   'per_call'  the released code: every DINOLoss call centres with the current centre, then
#               updates it from the teacher outputs that call saw (the class centre once per frame
#               pair, from the pair's global crops; the patch centre once per frame that has
#               masked tokens, from the teacher's outputs at those tokens);
#   'per_step'  one update per step, after the losses, from all the teacher's class (patch)
#               outputs of the batch (DINO's / iBOT's single-call form).
CENTER_UPDATES = ("per_call", "per_step")
# How the MIM cross entropies are averaged (`config.loss.mim_average`):
#   'frame'  the released code: per frame index, the mean over the masked tokens of the whole
#            batch, then the mean over the frames that have masked tokens;
#   'image'  per image (clip x frame) the mean over its masked tokens, then the mean over the
#            images (an image without masked tokens counts as 0).
MIM_AVERAGES = ("frame", "image")

# A logit that loses every softmax but stays finite, so excluded columns give no NaN (inf - inf)
# and their zeroed probabilities times this log-probability are exactly 0.
_NEG = -1e9


def _check_temperature(name: str, value: float | jax.Array) -> None:
    # Traced temperatures (schedules) cannot be checked here; Python numbers can.
    if isinstance(value, numbers.Real) and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")


def _check_ndim(name: str, x: jax.Array, ndim: int, axes: str) -> None:
    if x.ndim != ndim:
        raise ValueError(f"{name} must be {axes}, got shape {tuple(x.shape)}")


def _l2_normalize(x: jax.Array, axis: int = -1) -> jax.Array:
    # F.normalize: x / max(||x||, 1e-12), written so that a zero vector has a finite gradient.
    sq_norm = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq_norm, NORMALIZE_EPSILON**2))


def cross_entropy(
    teacher_probs: jax.Array, student_logits: jax.Array, student_temp: float
) -> jax.Array:
    """-sum_k q_k log softmax(s / student_temp)_k over the last axis.

    Args:
      teacher_probs: target distributions q [..., K] (not differentiated through by callers'
        convention; this function does not stop the gradient).
      student_logits: student head outputs s [..., K]; leading axes broadcast against q.
      student_temp: student temperature (> 0).

    Returns:
      float32 [...] cross entropies.

    Raises:
      ValueError: if the last axes differ, the shapes do not broadcast or the temperature is
        not positive.
    """
    _check_temperature("student_temp", student_temp)
    shapes = f"{tuple(teacher_probs.shape)} and {tuple(student_logits.shape)}"
    if teacher_probs.shape[-1:] != student_logits.shape[-1:]:
        raise ValueError(f"teacher_probs and student_logits must share the last axis, got {shapes}")
    try:
        np.broadcast_shapes(teacher_probs.shape, student_logits.shape)
    except ValueError:
        raise ValueError(
            f"teacher_probs and student_logits must have broadcastable shapes, got {shapes}"
        ) from None
    log_p = jax.nn.log_softmax(student_logits.astype(jnp.float32) / student_temp, axis=-1)
    return -jnp.sum(teacher_probs.astype(jnp.float32) * log_p, axis=-1)


def teacher_probs(
    teacher_logits: jax.Array, center: jax.Array, teacher_temp: float | jax.Array
) -> jax.Array:
    """softmax((t - center) / teacher_temp) over the last axis, with a stop-gradient.

    Args:
      teacher_logits: teacher head outputs t [..., K].
      center: running centre [K] (see `update_center`).
      teacher_temp: teacher temperature (> 0).

    Returns:
      float32 [..., K] target distributions.

    Raises:
      ValueError: if center is not [K] or the temperature is not positive.
    """
    _check_temperature("teacher_temp", teacher_temp)
    if center.shape != teacher_logits.shape[-1:]:
        raise ValueError(
            f"center must be [K] = {tuple(teacher_logits.shape[-1:])} to match teacher_logits "
            f"{tuple(teacher_logits.shape)}, got {tuple(center.shape)}"
        )
    logits = (teacher_logits.astype(jnp.float32) - center.astype(jnp.float32)) / teacher_temp
    return jax.lax.stop_gradient(jax.nn.softmax(logits, axis=-1))


def update_center(center: jax.Array, teacher_logits: jax.Array, momentum: float = 0.9) -> jax.Array:
    """center * momentum + (1 - momentum) * the mean of teacher_logits over its leading axes.

    The paper all-reduces the batch mean over the GPUs. Here the step is jitted over a global
    batch sharded on the data axis, so `jnp.mean` is already the mean over every device's
    examples: XLA inserts that all-reduce itself.

    Args:
      center: running centre [K].
      teacher_logits: teacher head outputs [..., K] (all leading axes are averaged).
      momentum: weight of the old centre, in [0, 1].

    Returns:
      The new centre, float32 [K], with a stop-gradient.

    Raises:
      ValueError: if center is not [K] matching teacher_logits, or momentum is outside [0, 1].
    """
    if isinstance(momentum, numbers.Real) and not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")
    if center.ndim != 1 or teacher_logits.ndim < 1 or teacher_logits.shape[-1] != center.shape[0]:
        raise ValueError(
            f"center must be [K] matching the last axis of teacher_logits "
            f"{tuple(teacher_logits.shape)}, got {tuple(center.shape)}"
        )
    k = center.shape[0]
    batch_mean = jnp.mean(teacher_logits.astype(jnp.float32).reshape(-1, k), axis=0)
    new = center.astype(jnp.float32) * momentum + (1.0 - momentum) * batch_mean
    return jax.lax.stop_gradient(new)


def out_generative_loss(
    teacher_global: jax.Array,
    student_global: jax.Array,
    student_local: jax.Array | None,
    center: jax.Array,
    *,
    teacher_temp: float = 0.04,
    student_temp: float = 0.1,
    global_to_global: bool = True,
    local_to_global: bool = True,
) -> jax.Array:
    """Class-token out-generative loss of one frame pair (Eqs. 1 and 2).

    Terms: every (teacher global view i, student global view j) with i != j when
    `global_to_global`, and every (teacher global view i, student local view v) when
    `local_to_global`. Each term is the batch mean of the cross entropy; the loss is the mean over
    the terms (the paper's sum over terms, normalised as DINO does). Averaging over the frame
    pairs is left to the caller.

    Args:
      teacher_global: teacher class-token head outputs [B, G, K] of the G global crops (G = 2:
        frames n and n + L/2).
      student_global: student class-token head outputs [B, G, K] of the same crops.
      student_local: student class-token head outputs [B, V, K] of the V local crops of both
        frames, or None (then `local_to_global` must be False).
      center: teacher centre [K].
      teacher_temp: teacher temperature.
      student_temp: student temperature.
      global_to_global: include the global-to-global terms.
      local_to_global: include the local-to-global terms.

    Returns:
      float32 scalar loss.

    Raises:
      ValueError: if both switches are off, `local_to_global` is set without `student_local`,
        global-to-global has no term (G < 2), or a shape does not match.
    """
    if not (global_to_global or local_to_global):
        raise ValueError("at least one of global_to_global and local_to_global must be True")
    _check_ndim("teacher_global", teacher_global, 3, "[B, G, K]")
    b, g, k = teacher_global.shape
    if student_global.shape != teacher_global.shape:
        raise ValueError(
            f"student_global must be [B, G, K] = {(b, g, k)} like teacher_global, got "
            f"{tuple(student_global.shape)}"
        )
    if center.shape != (k,):
        raise ValueError(f"center must be [K] = {(k,)}, got {tuple(center.shape)}")
    if local_to_global:
        if student_local is None:
            raise ValueError("student_local is None but local_to_global is True")
        _check_ndim("student_local", student_local, 3, "[B, V, K]")
        if student_local.shape[0] != b or student_local.shape[2] != k:
            raise ValueError(
                f"student_local must be [B, V, K] with B = {b}, K = {k}, got "
                f"{tuple(student_local.shape)}"
            )
        if student_local.shape[1] == 0:
            raise ValueError("student_local must hold at least one local view, got V = 0")
    if global_to_global and g < 2:
        raise ValueError(f"global_to_global needs G >= 2 global views, got G = {g}")

    q = teacher_probs(teacher_global, center, teacher_temp)  # [B, G, K]
    total = jnp.zeros((), jnp.float32)
    n_terms = 0
    if global_to_global:
        # ce[b, i, j] = CE(teacher view i, student view j); drop the diagonal (same view).
        ce = cross_entropy(q[:, :, None, :], student_global[:, None, :, :], student_temp)
        off_diagonal = ~jnp.eye(g, dtype=bool)
        total += jnp.sum(jnp.where(off_diagonal, jnp.mean(ce, axis=0), 0.0))
        n_terms += g * (g - 1)
    if local_to_global:
        ce = cross_entropy(q[:, :, None, :], student_local[:, None, :, :], student_temp)
        total += jnp.sum(jnp.mean(ce, axis=0))
        n_terms += g * student_local.shape[1]
    return total / n_terms


def mim_loss(
    teacher_patches: jax.Array,
    student_patches: jax.Array,
    mask: jax.Array,
    center: jax.Array,
    *,
    teacher_temp: float = 0.04,
    student_temp: float = 0.1,
) -> jax.Array:
    """In-generative masked image modelling loss (Eq. 3).

    Per image: the sum of the cross entropies at the masked tokens divided by max(number masked,
    1); then the mean over the images (an image with no masked token counts as 0).

    Args:
      teacher_patches: teacher patch-token head outputs [B, N, K] (unmasked crop).
      student_patches: student patch-token head outputs [B, N, K] (masked crop).
      mask: bool [B, N] or [N] (shared by every image); True where the student's token was
        masked.
      center: teacher patch centre [K].
      teacher_temp: teacher temperature.
      student_temp: student temperature.

    Returns:
      float32 scalar loss; exactly 0 when nothing is masked.

    Raises:
      ValueError: if a shape does not match.
    """
    _check_ndim("teacher_patches", teacher_patches, 3, "[B, N, K]")
    b, n, k = teacher_patches.shape
    if student_patches.shape != teacher_patches.shape:
        raise ValueError(
            f"student_patches must be [B, N, K] = {(b, n, k)} like teacher_patches, got "
            f"{tuple(student_patches.shape)}"
        )
    if mask.shape not in ((n,), (b, n)):
        raise ValueError(f"mask must be [N] = {(n,)} or [B, N] = {(b, n)}, got {mask.shape}")
    if center.shape != (k,):
        raise ValueError(f"center must be [K] = {(k,)}, got {tuple(center.shape)}")
    weights = jnp.broadcast_to(mask.astype(bool), (b, n)).astype(jnp.float32)
    q = teacher_probs(teacher_patches, center, teacher_temp)
    ce = cross_entropy(q, student_patches, student_temp)  # [B, N]
    per_image = jnp.sum(ce * weights, axis=1) / jnp.maximum(jnp.sum(weights, axis=1), 1.0)
    return jnp.mean(per_image)


def affinity_loss(
    teacher_patches: jax.Array,
    student_patches: jax.Array,
    mask: jax.Array,
    *,
    teacher_temp: float = 0.04,
    student_temp: float = 0.1,
) -> jax.Array:
    """In-generative inter-frame affinity loss (Eqs. 4 and 5) between consecutive frames.

    The head outputs are L2-normalised over K. For each image b and t in 0..T-2 the affinity
    A = X_t X_{t+1}^T is restricted to the masked rows and the masked columns; the teacher's rows
    softmax(A_T / teacher_temp) are the targets of the student's log_softmax(A_S / student_temp).
    The row cross entropies are averaged over the masked rows (the paper sums them), then over t
    and b. Unmasked columns get a large negative finite logit and a zero target probability, so
    they are excluded exactly and produce no NaN; masks are applied with `where`, so the
    function jits with a traced mask.

    Args:
      teacher_patches: teacher patch-token head outputs [B, T, N, K] of T consecutive frames.
      student_patches: student patch-token head outputs [B, T, N, K].
      mask: bool [N] (the same positions in every frame and image, as in the paper) or [B, N]
        (one per image, shared by its frames); True at the masked tokens.
      teacher_temp: teacher temperature.
      student_temp: student temperature.

    Returns:
      float32 scalar loss; exactly 0 when no token is masked (an image without masked tokens
      contributes 0 to the mean).

    Raises:
      ValueError: if a shape does not match or T < 2.
    """
    _check_temperature("teacher_temp", teacher_temp)
    _check_temperature("student_temp", student_temp)
    _check_ndim("teacher_patches", teacher_patches, 4, "[B, T, N, K]")
    b, t, n, k = teacher_patches.shape
    if student_patches.shape != teacher_patches.shape:
        raise ValueError(
            f"student_patches must be [B, T, N, K] = {(b, t, n, k)} like teacher_patches, got "
            f"{tuple(student_patches.shape)}"
        )
    if t < 2:
        raise ValueError(f"teacher_patches needs T >= 2 frames, got T = {t}")
    if mask.shape not in ((n,), (b, n)):
        raise ValueError(f"mask must be [N] = {(n,)} or [B, N] = {(b, n)}, got {mask.shape}")
    valid = jnp.broadcast_to(mask.astype(bool), (b, n))
    cols = valid[:, None, None, :]  # [B, 1, 1, N]: columns of every frame pair

    def affinity(x: jax.Array) -> jax.Array:
        x = _l2_normalize(x.astype(jnp.float32))
        return jnp.einsum("btik,btjk->btij", x[:, :-1], x[:, 1:])  # [B, T-1, N, N]

    a_t = affinity(jax.lax.stop_gradient(teacher_patches)) / teacher_temp
    q = jax.nn.softmax(jnp.where(cols, a_t, _NEG), axis=-1)
    q = jax.lax.stop_gradient(jnp.where(cols, q, 0.0))
    a_s = affinity(student_patches) / student_temp
    log_p = jax.nn.log_softmax(jnp.where(cols, a_s, _NEG), axis=-1)
    ce = -jnp.sum(jnp.where(cols, q * log_p, 0.0), axis=-1)  # [B, T-1, N] one per row

    rows = valid[:, None, :].astype(jnp.float32)  # [B, 1, N]
    n_rows = jnp.maximum(jnp.sum(rows, axis=-1), 1.0)  # [B, 1]
    per_pair = jnp.sum(ce * rows, axis=-1) / n_rows  # [B, T-1]
    return jnp.mean(per_pair)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}={value!r}; expected one of {choices}")


def out_generative_frame_pairs(
    teacher_cls: jax.Array,
    student_cls: jax.Array,
    student_local: jax.Array | None,
    center: jax.Array,
    *,
    teacher_temp: float = 0.04,
    student_temp: float = 0.1,
    center_momentum: float = 0.9,
    global_to_global: bool = True,
    local_to_global: bool = True,
    center_update: str = "per_call",
) -> tuple[jax.Array, jax.Array]:
    """The out-generative loss of a clip batch: frames paired (n, n + T/2), mean over the pairs.

    Each pair is one `out_generative_loss` call (the released `calc_cross_frame_dino`: one
    DINOLoss call per pair, the two frames' global crops as the 2 teacher / student global views
    and the local crops of both frames as the local views).

    Args:
      teacher_cls: teacher class-token head outputs [B, T, K] of each frame's global crop.
      student_cls: student class-token head outputs [B, T, K] (masked global crops).
      student_local: student class-token head outputs [B, T, M, K] of the local crops, or None.
      center: the class centre [K] before the step.
      teacher_temp: teacher temperature.
      student_temp: student temperature.
      center_momentum: weight of the old centre in each update.
      global_to_global: include the global-to-global terms.
      local_to_global: include the local-to-global terms.
      center_update: 'per_call' (the released code: pair p is centred with the centre after the
        updates of pairs 0..p-1, each update from the pair's 2 x B teacher outputs) or
        'per_step' (every pair centred with `center`, one update from all B x T outputs).

    Returns:
      (float32 scalar loss, the new centre [K]).

    Raises:
      ValueError: on a bad shape, an odd T or an unknown `center_update`.
    """
    _check_choice("center_update", center_update, CENTER_UPDATES)
    _check_ndim("teacher_cls", teacher_cls, 3, "[B, T, K]")
    b, t, k = teacher_cls.shape
    if t < 2 or t % 2:
        raise ValueError(f"teacher_cls needs an even number T >= 2 of frames, got T = {t}")
    if student_cls.shape != teacher_cls.shape:
        raise ValueError(
            f"student_cls must be [B, T, K] = {(b, t, k)} like teacher_cls, got "
            f"{tuple(student_cls.shape)}"
        )
    if student_local is not None:
        _check_ndim("student_local", student_local, 4, "[B, T, M, K]")
        if student_local.shape[:2] != (b, t) or student_local.shape[3] != k:
            raise ValueError(
                f"student_local must be [B, T, M, K] with B, T, K = {(b, t, k)}, got "
                f"{tuple(student_local.shape)}"
            )
    half = t // 2
    total = jnp.zeros((), jnp.float32)
    current = center.astype(jnp.float32)
    for n in range(half):
        frames = np.array([n, n + half])
        local = None
        if student_local is not None:
            local = student_local[:, frames].reshape(b, 2 * student_local.shape[2], k)
        total += out_generative_loss(
            teacher_cls[:, frames],
            student_cls[:, frames],
            local,
            current,
            teacher_temp=teacher_temp,
            student_temp=student_temp,
            global_to_global=global_to_global,
            local_to_global=local_to_global,
        )
        if center_update == "per_call":
            current = update_center(current, teacher_cls[:, frames], center_momentum)
    if center_update == "per_step":
        current = update_center(current, teacher_cls, center_momentum)
    return total / half, current


def _frame_masks(mask: jax.Array, b: int, t: int, n: int) -> jax.Array:
    """[N] | [B, N] | [B, T, N] -> bool [B, T, N]."""
    if mask.shape == (b, n):
        mask = mask[:, None]
    elif mask.shape not in ((n,), (b, t, n)):
        raise ValueError(
            f"mask must be [N] = {(n,)}, [B, N] = {(b, n)} or [B, T, N] = {(b, t, n)}, got "
            f"{tuple(mask.shape)}"
        )
    return jnp.broadcast_to(mask.astype(bool), (b, t, n))


def mim_loss_frames(
    teacher_patches: jax.Array,
    student_patches: jax.Array,
    mask: jax.Array,
    center: jax.Array,
    *,
    teacher_temp: float = 0.04,
    student_temp: float = 0.1,
    center_momentum: float = 0.9,
    average: str = "frame",
    center_update: str = "per_call",
) -> tuple[jax.Array, jax.Array]:
    """In-generative MIM loss (Eq. 3) of a clip batch, with its patch-centre update.

    Args:
      teacher_patches: teacher patch-token head outputs [B, T, N, K] (unmasked crops).
      student_patches: student patch-token head outputs [B, T, N, K] (masked crops).
      mask: bool [N], [B, N] (one per clip, shared by its frames) or [B, T, N]; True where the
        student's token was masked.
      center: the patch centre [K] before the step.
      teacher_temp: teacher temperature.
      student_temp: student temperature.
      center_momentum: weight of the old centre in each update.
      average: 'frame' (the released `calc_mim_loss`: one cross-entropy term per frame index
        over the masked tokens of all clips, then the mean over the frames with masked tokens)
        or 'image' (see `mim_loss`).
      center_update: 'per_call' (the released code: frame t is centred with the centre after
        the updates of frames 0..t-1, each from the teacher's outputs at that frame's masked
        tokens; a frame without masked tokens neither adds a term nor updates) or 'per_step'
        (every frame centred with `center`, one update from all the teacher's patch outputs).

    Returns:
      (float32 scalar loss, exactly 0 when nothing is masked; the new centre [K]).

    Raises:
      ValueError: on a bad shape or an unknown choice.
    """
    _check_choice("center_update", center_update, CENTER_UPDATES)
    _check_choice("average", average, MIM_AVERAGES)
    _check_ndim("teacher_patches", teacher_patches, 4, "[B, T, N, K]")
    b, t, n, k = teacher_patches.shape
    if student_patches.shape != teacher_patches.shape:
        raise ValueError(
            f"student_patches must be [B, T, N, K] = {(b, t, n, k)} like teacher_patches, got "
            f"{tuple(student_patches.shape)}"
        )
    if center.shape != (k,):
        raise ValueError(f"center must be [K] = {(k,)}, got {tuple(center.shape)}")
    weights = _frame_masks(mask, b, t, n).astype(jnp.float32)  # [B, T, N]
    current = center.astype(jnp.float32)
    per_frame, has_mask = [], []
    for f in range(t):
        w = weights[:, f]  # [B, N]
        count = jnp.sum(w)
        q = teacher_probs(teacher_patches[:, f], current, teacher_temp)
        ce = cross_entropy(q, student_patches[:, f], student_temp)  # [B, N]
        if average == "frame":
            per_frame.append(jnp.sum(ce * w) / jnp.maximum(count, 1.0))
        else:
            per_image = jnp.sum(ce * w, axis=1) / jnp.maximum(jnp.sum(w, axis=1), 1.0)
            per_frame.append(jnp.mean(per_image))
        has_mask.append(count > 0)
        if center_update == "per_call":
            teacher = jax.lax.stop_gradient(teacher_patches[:, f].astype(jnp.float32))
            masked_mean = jnp.sum(w[..., None] * teacher, axis=(0, 1)) / jnp.maximum(count, 1.0)
            updated = current * center_momentum + (1.0 - center_momentum) * masked_mean
            current = jnp.where(count > 0, updated, current)
    per_frame = jnp.stack(per_frame)
    if average == "frame":
        used = jnp.stack(has_mask).astype(jnp.float32)
        loss = jnp.sum(per_frame * used) / jnp.maximum(jnp.sum(used), 1.0)
    else:
        loss = jnp.mean(per_frame)
    if center_update == "per_step":
        current = update_center(current, teacher_patches, center_momentum)
    return loss, jax.lax.stop_gradient(current)
