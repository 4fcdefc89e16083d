"""Checkpoints: the only module that talks to orbax.

`Checkpointer` wraps `orbax.checkpoint.CheckpointManager` and saves, under `workdir/checkpoints/
<step>/`, the train state (any pytree of `jax.Array`s) and the data iterator state together, so a
resumed run sees the same batches. Saves are asynchronous (the device -> host copy blocks, the
disk write does not), old steps are pruned (keep N), and a SIGTERM (preemption) makes the next
`should_save` return True so the loop saves at the next step boundary and exits cleanly.

The data iterator is any object with `get_state()` / `set_state()`: grain iterators go through
grain's own orbax handler (one JSON file per process); other objects must return JSON-compatible
values from `get_state()`.
"""

from __future__ import annotations

import json
import pathlib
import signal
import threading
from typing import Any, Protocol

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils


class StatefulIterator(Protocol):
    def get_state(self) -> Any: ...

    def set_state(self, state: Any) -> None: ...


class _JsonStateIterator:
    """Adapts a get_state()/set_state() object to grain's handler (which stores bytes of JSON)."""

    def __init__(self, iterator: StatefulIterator):
        self.iterator = iterator

    def get_state(self) -> bytes:
        return json.dumps(self.iterator.get_state()).encode()

    def set_state(self, state: bytes) -> None:
        self.iterator.set_state(json.loads(state.decode()))

    def start_prefetch(self) -> None:
        pass


def _for_grain_handler(iterator: StatefulIterator) -> Any:
    if isinstance(iterator, (grain.DatasetIterator, grain.DataLoaderIterator)):
        return iterator
    return _JsonStateIterator(iterator)


def with_shardings(abstract: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `abstract` carrying the matching leaves of `shardings`."""
    return jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings
    )


class Checkpointer:
    """Periodic, asynchronous, keep-N checkpoints of (state, data iterator) with preemption saves.

    Args:
      directory: where the step folders go (created if missing).
      max_to_keep: number of most recent checkpoints kept.
      save_interval_steps: `should_save(step)` is True every this many steps.
      async_writes: write to disk in a background thread.
      handle_sigterm: install a SIGTERM handler that requests a save at the next step boundary
        (single-process runs from the main thread; in a multi-process run jax.distributed's
        preemption service catches SIGTERM and `preempted` asks its sync point instead).
    """

    def __init__(
        self,
        directory: str | pathlib.Path,
        *,
        max_to_keep: int = 3,
        save_interval_steps: int = 1000,
        async_writes: bool = True,
        handle_sigterm: bool = True,
    ):
        self.directory = pathlib.Path(directory).absolute()
        self.save_interval_steps = int(save_interval_steps)
        if self.save_interval_steps <= 0:
            raise ValueError(
                f"config.checkpoint_every_steps={save_interval_steps}: expected a positive number"
            )
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            # The loop decides when to save (interval, preemption, end): orbax must not skip.
            save_interval_steps=1,
            enable_async_checkpointing=async_writes,
            create=True,
        )
        self._manager = ocp.CheckpointManager(self.directory, options=options)
        self._sigterm = threading.Event()
        self._previous_handler = None
        if (
            handle_sigterm
            and jax.process_count() == 1
            and threading.current_thread() is threading.main_thread()
        ):
            self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        del signum, frame
        logging.warning("SIGTERM received: saving a checkpoint at the next step boundary")
        self._sigterm.set()

    def preempted(self, step: int) -> bool:
        """Whether the run must save now and stop (SIGTERM here, or a multi-host sync point).

        In a multi-process run every process must call this at every step (it may synchronise).
        """
        if jax.process_count() > 1:
            try:
                return multihost_utils.reached_preemption_sync_point(step)
            except RuntimeError:
                # No preemption sync manager (jax.distributed without the preemption service).
                return False
        return self._sigterm.is_set()

    def should_save(self, step: int) -> bool:
        """True on the save interval."""
        return step % self.save_interval_steps == 0

    def latest_step(self) -> int | None:
        """The newest complete checkpoint in the directory, or None."""
        return self._manager.latest_step()

    def all_steps(self) -> list[int]:
        """Every complete checkpoint step, ascending."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, data_iterator: StatefulIterator | None = None) -> None:
        """Saves `state` (and the iterator position) as `step`; returns once arrays are copied.

        Args:
          step: the step number (the number of updates applied to `state`).
          state: a pytree of arrays.
          data_iterator: the training iterator, positioned after the batch of `step`.
        """
        if step in self._manager.all_steps():
            return
        items = {"state": ocp.args.StandardSave(state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(_for_grain_handler(data_iterator))
        self._manager.save(step, args=ocp.args.Composite(**items), force=True)
        logging.info("Checkpoint of step %d started in %s", step, self.directory)

    def restore(
        self,
        abstract_state: Any,
        step: int | None = None,
        data_iterator: StatefulIterator | None = None,
    ) -> tuple[Any, int]:
        """Restores a step (default: the latest) into `abstract_state`'s shapes and shardings.

        Args:
          abstract_state: pytree of `jax.ShapeDtypeStruct` with `sharding` set (see
            `with_shardings`).
          step: the step to restore; None for the latest.
          data_iterator: when given, its state is set to the saved position.

        Returns:
          (state, step).

        Raises:
          FileNotFoundError: naming the directory when there is no such checkpoint.
        """
        steps = self.all_steps()
        if step is None:
            step = self.latest_step()
        if step is None or step not in steps:
            raise FileNotFoundError(
                f"{self.directory}: no checkpoint of step {step}; saved steps are {steps}"
            )
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(_for_grain_handler(data_iterator))
        restored = self._manager.restore(step, args=ocp.args.Composite(**items))
        logging.info("Restored step %d from %s", step, self.directory)
        return restored["state"], step

    def restore_data(self, step: int, data_iterator: StatefulIterator) -> None:
        """Sets `data_iterator` to the position saved with `step` (the model state untouched).

        Raises:
          FileNotFoundError: naming the directory when there is no such checkpoint.
        """
        if step not in self.all_steps():
            raise FileNotFoundError(
                f"{self.directory}: no checkpoint of step {step}; saved steps are "
                f"{self.all_steps()}"
            )
        self._manager.restore(
            step,
            args=ocp.args.Composite(
                data=grain.checkpoint.CheckpointRestore(_for_grain_handler(data_iterator))
            ),
        )

    def restore_raw(self, step: int | None = None) -> tuple[Any, int]:
        """The saved state of a step (default: the latest) as nested dicts of host arrays.

        For initialising another model from this run (`vosjax.train.init_from_checkpoint`):
        no target structure is needed.

        Raises:
          FileNotFoundError: naming the directory when there is no such checkpoint.
        """
        steps = self.all_steps()
        step = self.latest_step() if step is None else step
        if step is None or step not in steps:
            raise FileNotFoundError(
                f"{self.directory}: no checkpoint of step {step}; saved steps are {steps}"
            )
        restored = self._manager.restore(
            step, args=ocp.args.Composite(state=ocp.args.StandardRestore())
        )
        return restored["state"], step

    def wait_until_finished(self) -> None:
        """Blocks until asynchronous writes are on disk."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending writes, releases the manager and the SIGTERM handler."""
        self._manager.wait_until_finished()
        self._manager.close()
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)
            self._previous_handler = None

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
