"""A tiny real method for the trainer's tests: a conv net regressing a blur of its input."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from vosjax import train
from vosjax.ops import ema

SIZE = 8


class Teacher(nnx.Variable):
    """An EMA copy of the first kernel: not a Param, so not differentiated."""


class ToyNet(nnx.Module):
    """[B, 8, 8, 3] -> [B, 8, 8, 1] through conv, BatchNorm, relu, conv (+ an EMA teacher)."""

    def __init__(self, rngs: nnx.Rngs):
        # No bias before BatchNorm: its gradient is zero up to rounding, which Adam amplifies.
        self.conv1 = nnx.Conv(3, 8, (3, 3), use_bias=False, rngs=rngs)
        self.norm = nnx.BatchNorm(8, rngs=rngs)
        self.conv2 = nnx.Conv(8, 1, (3, 3), rngs=rngs)
        self.teacher = Teacher(self.conv1.kernel[...].copy())

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.conv2(jax.nn.relu(self.norm(self.conv1(x))))


class ToyMethod:
    """Regresses the 3x3 box blur of the channel mean; `nan_steps` poison the loss."""

    def __init__(self, nan_steps: tuple[int, ...] = ()):
        self.nan_steps = tuple(nan_steps)

    def build_model(self, config: ml_collections.ConfigDict, rngs: nnx.Rngs) -> ToyNet:
        del config
        return ToyNet(rngs)

    def loss_fn(
        self, model: ToyNet, batch: dict[str, jax.Array], rng: jax.Array, step: jax.Array
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        # The rng drives an input noise so that a wrong resume rng changes the result.
        noise = 0.01 * jax.random.normal(rng, batch["image"].shape, batch["image"].dtype)
        pred = model(batch["image"] + noise)[..., 0]
        loss = jnp.mean((pred.astype(jnp.float32) - batch["target"].astype(jnp.float32)) ** 2)
        if self.nan_steps:
            loss = jnp.where(jnp.isin(step, jnp.array(self.nan_steps)), jnp.nan, loss)
        return loss, {"pred_mean": jnp.mean(pred.astype(jnp.float32))}

    def after_update(self, model: ToyNet, step: jax.Array) -> None:
        momentum = ema.cosine_momentum(step, 100, base=0.9)
        model.teacher[...] = ema.ema_update(model.teacher[...], model.conv1.kernel[...], momentum)


def example(index: int) -> dict[str, np.ndarray]:
    """Deterministic input [8, 8, 3] and target [8, 8] for an example index."""
    image = np.random.default_rng(index).uniform(-1, 1, (SIZE, SIZE, 3)).astype(np.float32)
    gray = np.pad(image.mean(-1), 1)
    target = sum(gray[i : i + SIZE, j : j + SIZE] for i in range(3) for j in range(3)) / 9
    return {"image": image, "target": target.astype(np.float32)}


def dataset(global_batch_size: int, seed: int = 0) -> grain.IterDataset:
    """This host's slice of every global batch: the global batches do not depend on the hosts."""
    host_batch = global_batch_size // jax.process_count()
    start = jax.process_index() * host_batch

    def host_slice(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: v[start : start + host_batch] for k, v in batch.items()}

    return (
        grain.MapDataset.range(100_000)
        .shuffle(seed=seed)
        .map(example)
        .batch(global_batch_size, drop_remainder=True)
        .map(host_slice)
        .to_iter_dataset()
    )


def config(num_train_steps: int = 8) -> ml_collections.ConfigDict:
    """A trainer config for the toy method on whatever devices there are."""
    cfg = train.default_config()
    cfg.num_train_steps = num_train_steps
    cfg.batch_size = 16
    cfg.optim.name = "adam"
    cfg.optim.lr = 1e-2
    cfg.optim.b1 = 0.5
    cfg.optim.grad_clip_norm = 1.0
    cfg.log_every_steps = 1
    cfg.checkpoint_every_steps = 2
    cfg.keep_checkpoints = 10
    return cfg


class ControlledIterator:
    """Wraps an iterator; calls `on_batch(index)` before yielding each batch (kill, sleep)."""

    def __init__(self, iterator: Any, on_batch: Any = None):
        self.iterator = iterator
        self.on_batch = on_batch
        self.index = 0

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self.on_batch is not None:
            self.on_batch(self.index)
        self.index += 1
        return next(self.iterator)

    def get_state(self) -> dict[str, Any]:
        return {"index": self.index, "inner": self.iterator.get_state()}

    def set_state(self, state: dict[str, Any]) -> None:
        self.index = state["index"]
        self.iterator.set_state(state["inner"])
