"""Arrays as .npz shards of bounded size (bf16 on request), and back.

For moving weights off a machine that returns files of at most 16 MiB each
(`experiments/state_npz.py`, `experiments/ino_davis2016_gpu.py`).
"""

from __future__ import annotations

import pathlib

import jax.numpy as jnp
import numpy as np

SHARD_BYTES = 15 * 2**20


def write_shards(
    flat: dict[str, np.ndarray], out: pathlib.Path, name: str, step: int, dtype: str
) -> int:
    """`flat` ({path: array}) as out/NAME_0.npz, NAME_1.npz, ... of at most SHARD_BYTES each.

    With dtype 'bfloat16' floating arrays are stored as their bf16 bits (npz has no bfloat16)
    under 'bf16:<path>'. Earlier NAME_*.npz files are removed. Returns the number of shards.
    """
    shards, current, size = [], {}, 0
    for path, value in flat.items():
        value = np.asarray(value)
        if dtype == "bfloat16" and np.issubdtype(value.dtype, np.floating):
            key, value = f"bf16:{path}", np.asarray(value, jnp.bfloat16).view(np.uint16)
        else:
            key = path
        if current and size + value.nbytes > SHARD_BYTES:
            shards.append(current)
            current, size = {}, 0
        current[key], size = value, size + value.nbytes
    shards.append(current)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob(f"{name}_*.npz"):
        old.unlink()
    for i, shard in enumerate(shards):
        np.savez(out / f"{name}_{i}.npz", step=np.int64(step), **shard)
    return len(shards)


def read_shards(prefix: str | pathlib.Path) -> tuple[dict[str, np.ndarray], int]:
    """The arrays of `prefix`_*.npz ({path: array}, bf16 ones as float32) and their step."""
    prefix = pathlib.Path(prefix)
    files = sorted(prefix.parent.glob(prefix.name + "_*.npz"))
    if not files:
        raise FileNotFoundError(f"{prefix}: no {prefix}_*.npz")
    flat, steps = {}, set()
    for file in files:
        with np.load(file) as shard:
            steps.add(int(shard["step"]))
            for key in shard.files:
                if key.startswith("bf16:"):
                    bits = shard[key]
                    flat[key.removeprefix("bf16:")] = bits.view(jnp.bfloat16).astype(np.float32)
                elif key != "step":
                    flat[key] = shard[key]
    if len(steps) != 1:
        raise ValueError(f"{prefix}: shards of different steps {sorted(steps)}")
    return flat, steps.pop()
