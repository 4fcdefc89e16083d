"""Optax optimisers and learning-rate schedules built from `config.optim`.

Fields of `config.optim` (defaults in `default_config()`):
  name: 'adam' | 'adamw' | 'sgd'.
  lr: peak learning rate.
  schedule: 'constant' | 'warmup_cosine' | 'step'.
  warmup_steps: linear warmup from 0 to `lr` (warmup_cosine, and optionally step).
  end_lr: final value of the cosine decay.
  step_every, gamma: 'step' multiplies the lr by `gamma` every `step_every` steps.
  b1, b2, eps: Adam moments (Mask-VOS uses b1=0.5).
  momentum, nesterov: SGD.
  weight_decay, weight_decay_end: AdamW decoupled decay; when `weight_decay_end` is not None
    the decay follows a cosine from `weight_decay` to `weight_decay_end` (INO: 0.04 -> 0.4);
    for SGD / Adam a nonzero weight_decay is added to the gradient (L2).
  grad_clip_norm: clip gradients by global norm first (0 disables).
  grad_clip_per_tensor: clip each parameter's gradient to norm `grad_clip_norm` on its own
    (g * min(1, clip / (||g|| + 1e-6))), as DINO's and INO's `utils.clip_gradients`, instead of
    by the global norm.
  bias_lr_mult, bias_no_weight_decay: parameter groups; parameters named 'bias' get
    `bias_lr_mult` x the lr and, if set, no weight decay (as Mask-VOS's code).
  no_decay_1d: parameters with at most one axis (norm scales, biases) join the 'bias' group,
    which then gets no weight decay (DINO / INO: none on biases and norms).
  frozen: parameter path prefixes ('encoder/backbone': every parameter under
    model.encoder.backbone) whose updates are zero (Mask-VOS's released mask stage freezes the
    backbone; Mask-VOS also runs a frozen 'encoder' or 'encoder/backbone' with its BatchNorm
    running statistics and sends it no gradient).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax


def default_config() -> ml_collections.ConfigDict:
    """The `config.optim` fields and their defaults."""
    return ml_collections.ConfigDict(
        {
            "name": "adam",
            "lr": 1e-4,
            "schedule": "constant",
            "warmup_steps": 0,
            "end_lr": 0.0,
            "step_every": 0,
            "gamma": 0.1,
            "b1": 0.9,
            "b2": 0.999,
            "eps": 1e-8,
            "momentum": 0.9,
            "nesterov": False,
            "weight_decay": 0.0,
            "weight_decay_end": ml_collections.FieldReference(None, field_type=float),
            "grad_clip_norm": 0.0,
            "grad_clip_per_tensor": False,
            "bias_lr_mult": 1.0,
            "bias_no_weight_decay": False,
            "no_decay_1d": False,
            "frozen": (),  # parameter path prefixes ('encoder/backbone') that never change
        }
    )


def make_schedule(optim: ml_collections.ConfigDict, num_train_steps: int) -> optax.Schedule:
    """The learning-rate schedule of `config.optim` over `num_train_steps` steps.

    Args:
      optim: `config.optim`.
      num_train_steps: `config.num_train_steps`; the cosine ends there.

    Returns:
      step -> learning rate.

    Raises:
      ValueError: naming `config.optim.schedule` (or a field it needs) when it is invalid.
    """
    lr = float(optim.lr)
    warmup = int(optim.get("warmup_steps", 0))
    name = optim.get("schedule", "constant")
    if name == "constant":
        main = optax.constant_schedule(lr)
    elif name == "warmup_cosine":
        decay_steps = max(num_train_steps - warmup, 1)
        main = optax.cosine_decay_schedule(
            lr, decay_steps, alpha=float(optim.get("end_lr", 0.0)) / lr if lr else 0.0
        )
    elif name == "step":
        every = int(optim.get("step_every", 0))
        if every <= 0:
            raise ValueError(
                f"config.optim.step_every={every}: expected a positive number of steps with "
                "schedule='step'"
            )
        main = optax.exponential_decay(
            lr, transition_steps=every, decay_rate=float(optim.gamma), staircase=True
        )
    else:
        raise ValueError(
            f"config.optim.schedule={name!r}; expected 'constant', 'warmup_cosine' or 'step'"
        )
    if warmup <= 0:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), main], [warmup])


def cosine_schedule(start: float, end: float, num_steps: int) -> optax.Schedule:
    """start -> end along a half cosine over `num_steps`, then constant (weight decay, momentum)."""

    def schedule(step: jax.Array) -> jax.Array:
        frac = jnp.clip(jnp.asarray(step, jnp.float32) / max(num_steps, 1), 0.0, 1.0)
        return end + (start - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))

    return schedule


def _is_bias(path: tuple[Any, ...]) -> bool:
    names = [getattr(k, "key", getattr(k, "name", None)) for k in path]
    names = [n for n in names if n != "value"]
    return bool(names) and names[-1] == "bias"


def bias_labels(params: Any, include_1d: bool = False) -> Any:
    """'bias' for every parameter named 'bias' (and, with `include_1d`, every parameter with at
    most one axis), 'default' for the others."""

    def label(path: tuple[Any, ...], x: Any) -> str:
        return "bias" if _is_bias(path) or (include_1d and jnp.ndim(x) <= 1) else "default"

    return jax.tree_util.tree_map_with_path(label, params)


def param_path(path: tuple[Any, ...]) -> str:
    """'encoder/backbone/conv1/kernel' for a pytree path of an nnx parameter state."""
    names = [getattr(k, "key", getattr(k, "name", getattr(k, "idx", None))) for k in path]
    return "/".join(str(n) for n in names if n != "value")


def is_frozen(name: str, prefixes: Any) -> bool:
    """True if the path `name` ('encoder/backbone') lies under one of `prefixes`.

    `prefixes` as config.optim.frozen: 'encoder' covers 'encoder' and 'encoder/...', not
    'encoder2'; leading and trailing '/' are ignored.
    """
    prefixes = [str(p).strip("/") for p in prefixes]
    return any(name == p or name.startswith(p + "/") for p in prefixes)


def frozen_labels(params: Any, prefixes: Any) -> Any:
    """'frozen' for parameters under one of `prefixes`, 'trained' for the others.

    Raises:
      ValueError: a prefix that matches no parameter (named as config.optim.frozen).
    """
    paths = [param_path(path) for path, _ in jax.tree_util.tree_leaves_with_path(params)]
    for prefix in prefixes:
        if not any(is_frozen(p, [prefix]) for p in paths):
            raise ValueError(
                f"config.optim.frozen: {prefix.strip('/')!r} matches no parameter "
                f"(e.g. {paths[:3]})"
            )

    def label(path: tuple[Any, ...], _: Any) -> str:
        return "frozen" if is_frozen(param_path(path), prefixes) else "trained"

    return jax.tree_util.tree_map_with_path(label, params)


def _base_optimizer(
    optim: ml_collections.ConfigDict,
    learning_rate: optax.Schedule,
    weight_decay: float | optax.Schedule,
) -> optax.GradientTransformation:
    name = optim.name
    if name == "adamw":
        return optax.adamw(
            learning_rate, b1=optim.b1, b2=optim.b2, eps=optim.eps, weight_decay=weight_decay
        )
    if name == "adam":
        tx = optax.adam(learning_rate, b1=optim.b1, b2=optim.b2, eps=optim.eps)
    elif name == "sgd":
        tx = optax.sgd(learning_rate, momentum=optim.momentum or None, nesterov=optim.nesterov)
    else:
        raise ValueError(f"config.optim.name={name!r}; expected 'adam', 'adamw' or 'sgd'")
    if callable(weight_decay) or weight_decay:
        # Coupled (L2) decay, as torch's Adam / SGD weight_decay: added before the moments.
        return optax.chain(optax.add_decayed_weights(weight_decay), tx)
    return tx


def make_optimizer(
    optim: ml_collections.ConfigDict, num_train_steps: int
) -> optax.GradientTransformation:
    """The optimiser of `config.optim`: clipping, parameter groups, schedules.

    Args:
      optim: `config.optim` (see the module docstring).
      num_train_steps: `config.num_train_steps`, the length of the schedules.

    Returns:
      An optax transformation over a parameter pytree.
    """
    schedule = make_schedule(optim, num_train_steps)
    wd_end = optim.get("weight_decay_end")
    weight_decay: float | optax.Schedule = float(optim.get("weight_decay", 0.0))
    if wd_end is not None:
        weight_decay = cosine_schedule(weight_decay, float(wd_end), num_train_steps)
    bias_mult = float(optim.get("bias_lr_mult", 1.0))
    bias_no_wd = bool(optim.get("bias_no_weight_decay", False))
    include_1d = bool(optim.get("no_decay_1d", False))
    if bias_mult == 1.0 and not bias_no_wd and not include_1d:
        tx = _base_optimizer(optim, schedule, weight_decay)
    else:
        bias_tx = _base_optimizer(
            optim,
            lambda step: bias_mult * schedule(step),
            0.0 if bias_no_wd or include_1d else weight_decay,
        )
        tx = optax.multi_transform(
            {"default": _base_optimizer(optim, schedule, weight_decay), "bias": bias_tx},
            lambda params: bias_labels(params, include_1d),
        )
    frozen = tuple(optim.get("frozen", ()))
    if frozen:
        tx = optax.multi_transform(
            {"trained": tx, "frozen": optax.set_to_zero()},
            lambda params: frozen_labels(params, frozen),
        )
    clip = float(optim.get("grad_clip_norm", 0.0))
    if clip > 0 and optim.get("grad_clip_per_tensor", False):
        tx = optax.chain(clip_by_tensor_norm(clip), tx)
    elif clip > 0:
        tx = optax.chain(optax.clip_by_global_norm(clip), tx)
    return tx


def clip_by_tensor_norm(max_norm: float) -> optax.GradientTransformation:
    """Scales every gradient leaf g by min(1, max_norm / (||g|| + 1e-6)) on its own (DINO's
    `utils.clip_gradients`, applied per parameter tensor)."""

    def clip(g: jax.Array) -> jax.Array:
        norm = jnp.sqrt(jnp.sum(jnp.square(g.astype(jnp.float32))))
        return g * jnp.minimum(1.0, max_norm / (norm + 1e-6)).astype(g.dtype)

    return optax.stateless(lambda updates, params=None: jax.tree.map(clip, updates))
