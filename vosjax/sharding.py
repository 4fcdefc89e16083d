"""Device mesh, data sharding and host-local -> global arrays for data-parallel training.

One mesh is built from `config.mesh` (e.g. `{"data": -1}`: every device on the data axis).
Batches are sharded `P("data")` on their leading axis, parameters are replicated. Each host
builds `config.batch_size // jax.process_count()` examples and `shard_batch` assembles the
global array with `jax.make_array_from_process_local_data`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

DATA_AXIS = "data"


def initialize_distributed(config: ml_collections.ConfigDict) -> None:
    """Starts `jax.distributed` when `config.distributed.enabled` is set.

    Reads `config.distributed.{coordinator_address, num_processes, process_id}`; empty or
    negative values are left to JAX's cluster auto-detection (TPU pods, SLURM, ...). On CPU the
    cross-process collectives go through gloo.

    Args:
      config: the run config; nothing happens without a `distributed` field or when it is off.
    """
    dist = config.get("distributed")
    if dist is None or not dist.get("enabled", False):
        return
    if jax.distributed.is_initialized():
        return
    if dist.get("cpu_collectives", "gloo"):
        # Must be set before the backend starts; harmless on GPU/TPU.
        jax.config.update("jax_cpu_collectives_implementation", dist.get("cpu_collectives", "gloo"))
    kwargs = {}
    if dist.get("coordinator_address"):
        kwargs["coordinator_address"] = dist.coordinator_address
    if dist.get("num_processes", -1) > 0:
        kwargs["num_processes"] = dist.num_processes
    if dist.get("process_id", -1) >= 0:
        kwargs["process_id"] = dist.process_id
    jax.distributed.initialize(**kwargs)
    logging.info(
        "jax.distributed: process %d of %d, %d local / %d global devices",
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
    )


def make_mesh(mesh_config: Mapping[str, int] | None = None) -> jax.sharding.Mesh:
    """A mesh over all devices from `config.mesh`, with automatic (not explicit) axes.

    Args:
      mesh_config: axis name -> size; one size may be -1 (all remaining devices). Must contain
        the 'data' axis. None means `{"data": -1}`.

    Returns:
      A `jax.sharding.Mesh` whose axes are `AxisType.Auto`, so jit propagates shardings the
      classic way (explicit axes reject e.g. contractions over a sharded batch axis).

    Raises:
      ValueError: naming `config.mesh` when the sizes do not multiply to the device count.
    """
    mesh_config = dict(mesh_config or {DATA_AXIS: -1})
    if DATA_AXIS not in mesh_config:
        raise ValueError(f"config.mesh={mesh_config}: expected a {DATA_AXIS!r} axis")
    num_devices = jax.device_count()
    names = list(mesh_config)
    sizes = [int(mesh_config[n]) for n in names]
    if sizes.count(-1) > 1:
        raise ValueError(f"config.mesh={mesh_config}: at most one axis may be -1")
    known = int(np.prod([s for s in sizes if s != -1]))
    if -1 in sizes:
        if known <= 0 or num_devices % known:
            raise ValueError(
                f"config.mesh={mesh_config}: the fixed sizes ({known}) must divide the "
                f"device count {num_devices}"
            )
        sizes[sizes.index(-1)] = num_devices // known
    if int(np.prod(sizes)) != num_devices:
        raise ValueError(
            f"config.mesh={mesh_config}: axis sizes multiply to {int(np.prod(sizes))}, expected "
            f"the device count {num_devices}"
        )
    return jax.make_mesh(
        tuple(sizes), tuple(names), axis_types=(jax.sharding.AxisType.Auto,) * len(names)
    )


def replicated(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
    """The sharding of parameters and optimiser state: a full copy on every device."""
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())


def batch_sharding(mesh: jax.sharding.Mesh) -> jax.sharding.NamedSharding:
    """The sharding of a batch: leading axis split over the 'data' mesh axis."""
    return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(DATA_AXIS))


def per_host_batch_size(global_batch_size: int, mesh: jax.sharding.Mesh) -> int:
    """The number of examples each host loads per step.

    Args:
      global_batch_size: `config.batch_size`, summed over all hosts.
      mesh: the training mesh.

    Returns:
      `global_batch_size // jax.process_count()`.

    Raises:
      ValueError: naming `config.batch_size` when it is not divisible by the size of the data
        axis (the number of data-parallel devices) or by the process count.
    """
    data_size = mesh.shape[DATA_AXIS]
    if global_batch_size <= 0 or global_batch_size % data_size:
        raise ValueError(
            f"config.batch_size={global_batch_size} must be a positive multiple of the number "
            f"of data-parallel devices ({data_size})"
        )
    if global_batch_size % jax.process_count():
        raise ValueError(
            f"config.batch_size={global_batch_size} must be divisible by the process count "
            f"({jax.process_count()})"
        )
    return global_batch_size // jax.process_count()


def shard_batch(batch: Any, mesh: jax.sharding.Mesh) -> Any:
    """Host-local numpy batch -> global `jax.Array`s sharded `P('data')` on the leading axis.

    Args:
      batch: a pytree of arrays [B_local, ...], this host's part of the global batch.
      mesh: the training mesh.

    Returns:
      The same pytree of global arrays [B_local * process_count, ...].
    """
    sharding = batch_sharding(mesh)

    def to_global(x: Any) -> jax.Array:
        x = np.asarray(x)
        global_shape = (x.shape[0] * jax.process_count(), *x.shape[1:])
        return jax.make_array_from_process_local_data(sharding, x, global_shape)

    return jax.tree.map(to_global, batch)


def _text_row(text: str, max_bytes: int) -> np.ndarray:
    """`text` as UTF-8 cut to `max_bytes` and zero-padded: one shape on every process."""
    return np.frombuffer(text.encode()[:max_bytes].ljust(max_bytes, b"\0"), np.uint8)


def _row_text(row: Any) -> str:
    return bytes(np.asarray(row, np.uint8)).rstrip(b"\0").decode(errors="replace")


def broadcast_text(text: str, max_bytes: int) -> str:
    """Process 0's `text` (at most `max_bytes` of UTF-8) on every process; every process calls."""
    return _row_text(multihost_utils.broadcast_one_to_all(_text_row(text, max_bytes)))


def allgather_text(text: str, max_bytes: int) -> list[str]:
    """Every process's `text` (at most `max_bytes` of UTF-8 each), in process order; every
    process calls."""
    rows = np.asarray(multihost_utils.process_allgather(_text_row(text, max_bytes)))
    return [_row_text(row) for row in rows.reshape(jax.process_count(), max_bytes)]
