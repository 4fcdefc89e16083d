"""Checkpoints: the only module that talks to orbax.

`Checkpointer` wraps `orbax.checkpoint.CheckpointManager` and saves, under `workdir/checkpoints/
<step>/`, the train state (any pytree of `jax.Array`s) and the data iterator state together, so a
resumed run sees the same batches. Saves are asynchronous (the device -> host copy blocks, the
disk write does not), old steps are pruned (keep N), and a SIGTERM (preemption) makes the next
`should_save` return True so the loop saves at the next step boundary and exits cleanly.

`average_checkpoints` writes the mean of several saved steps (weight averaging of neighbouring
checkpoints) as a new checkpoint that `--mode=eval` restores like any other.

The data iterator is any object with `get_state()` / `set_state()`: grain iterators go through
grain's own orbax handler (one JSON file per process); other objects must return JSON-compatible
values from `get_state()`.

Damaged steps. A step folder that orbax lists (a finalised write) can still be unreadable: a
truncated or missing array file, a missing `state/_METADATA`, a missing or unreadable
data-iterator file (`data/process_<i>-of-<n>.json`). Before orbax reads a step, these files are
checked (`vosjax.checkpoint_damage`; for the arrays: the OCDBT b-tree's nodes are read, not the
values, and every data file they point into must be there and long enough), and any error of
orbax's restore itself counts as damage too. `Checkpointer.restore` of the latest step logs one
line per damaged step (the step and the cause, not a traceback), moves its folder aside to
`<checkpoints>_damaged/<step>` (never deleted; `<step>.2`, `<step>.3`, ... when that name is
taken; the reason is written beside it in `<name>.txt`) and restores the newest intact step; the
steps after it are trained and saved again. With no intact step it raises
`DamagedCheckpointError` listing every step and why, and moves nothing (a restarted run would
otherwise start from scratch without a word). An explicit `step=` that is damaged raises
`DamagedCheckpointError` naming the step and the damage (no fallback), as does `restore_raw`
(another run's checkpoint for `init_from`, or `average_checkpoints`: its folders are not moved,
and an older step would silently be another model than the one asked for). A reader beside a
training run (`--mode=eval`) passes `move_damaged=False`: it skips damaged steps, moves nothing.

Multi-process runs: every process checks its own files of a step (the state's metadata and
array files, its data-iterator file) and the processes all-gather their reasons, so that all
agree on the step; only process 0 moves the folder, then a barrier, then every process re-reads
the list of steps. A step that passes these checks but fails inside orbax's restore (e.g. a
corrupted, not truncated, array file) falls back in a single-process run; in a multi-process run
it stops the run with `DamagedCheckpointError` naming the step (orbax's restore ends in a
barrier that the failing process cannot join, so the processes could not agree safely): move
that folder aside by hand and start again.

What orbax 0.12.8 guarantees (checked for this module): a step is written to
`<step>.orbax-checkpoint-tmp` and renamed to `<step>` once every file is on disk, so a killed
write leaves only the temporary folder, which orbax ignores when listing steps and removes when
that step is saved again; `max_to_keep` pruning is decided at `save` but runs after the new
step's write has finished (and not at all if it failed), so the newest complete step is never
deleted before a newer one is complete. Orbax caches the list of steps: after moving a folder
aside the manager re-reads it, otherwise the step would count as saved and its number would never
be written again.
"""

from __future__ import annotations

import json
import pathlib
import signal
import threading
from collections.abc import Sequence
from typing import Any, Protocol

import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils

from vosjax import checkpoint_damage, sharding


class DamagedCheckpointError(ValueError):
    """A checkpoint step (or every step) cannot be restored; the message names each and why."""


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
      max_to_keep: number of most recent checkpoints kept (None: all).
      save_interval_steps: `should_save(step)` is True every this many steps.
      async_writes: write to disk in a background thread.
      handle_sigterm: install a SIGTERM handler that requests a save at the next step boundary
        (single-process runs from the main thread; in a multi-process run jax.distributed's
        preemption service catches SIGTERM and `preempted` asks its sync point instead).
      move_damaged: `restore` of the latest step moves damaged steps to `damaged_directory`
        (the run that owns the folder); False: it only skips them (a reader beside a training
        run, e.g. an evaluation, must not move folders that the training run prunes).

    Attributes:
      directory: the step folders' parent.
      damaged_directory: `<directory>_damaged`, where damaged steps are moved.
    """

    def __init__(
        self,
        directory: str | pathlib.Path,
        *,
        max_to_keep: int | None = 3,
        save_interval_steps: int = 1000,
        async_writes: bool = True,
        handle_sigterm: bool = True,
        move_damaged: bool = True,
    ):
        self.directory = pathlib.Path(directory).absolute()
        self.damaged_directory = self.directory.with_name(self.directory.name + "_damaged")
        self.move_damaged = move_damaged
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
        """Restores a step (default: the newest intact one) into `abstract_state`'s shapes and
        shardings.

        With `step=None`, damaged steps (see the module docstring) are logged, moved aside
        (`move_damaged`) and skipped, newest first.

        Args:
          abstract_state: pytree of `jax.ShapeDtypeStruct` with `sharding` set (see
            `with_shardings`).
          step: the step to restore; None for the newest intact one.
          data_iterator: when given, its state is set to the saved position.

        Returns:
          (state, step).

        Raises:
          FileNotFoundError: naming the directory when there is no such checkpoint.
          DamagedCheckpointError: `step` is damaged (naming the damage), or `step` is None and
            no step is intact (naming each step and its damage).
        """
        items = {"state": ocp.args.StandardRestore(abstract_state)}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointRestore(_for_grain_handler(data_iterator))
        args = ocp.args.Composite(**items)
        data = "required" if data_iterator is not None else "if_saved"
        if step is not None:
            self._require(step)
            return self._restore_or_raise(step, args, data)["state"], step
        restored, step = self._restore_newest_intact(args, data)
        return restored["state"], step

    def restore_data(self, step: int, data_iterator: StatefulIterator) -> None:
        """Sets `data_iterator` to the position saved with `step` (the model state untouched).

        Raises:
          FileNotFoundError: naming the directory when there is no such checkpoint.
          DamagedCheckpointError: the step's data-iterator file is missing or unreadable.
        """
        self._require(step)
        args = ocp.args.Composite(
            data=grain.checkpoint.CheckpointRestore(_for_grain_handler(data_iterator))
        )
        self._restore_or_raise(step, args, "required")

    def restore_raw(self, step: int | None = None) -> tuple[Any, int]:
        """The saved state of a step (default: the latest) as nested dicts of host arrays.

        For initialising another model from this run (`vosjax.train.init_from_checkpoint`):
        no target structure is needed. A damaged step is an error, also when it is the latest
        (no fallback: the caller reads another run's folder, which is not moved, and an older
        step would silently be another model than the one asked for).

        Raises:
          FileNotFoundError: naming the directory when there is no such checkpoint.
          DamagedCheckpointError: the step is damaged (naming the damage).
        """
        step = self.latest_step() if step is None else step
        self._require(step)
        args = ocp.args.Composite(state=ocp.args.StandardRestore())
        return self._restore_or_raise(step, args, "no")["state"], step

    def _require(self, step: int | None) -> None:
        steps = self.all_steps()
        if step is None or step not in steps:
            raise FileNotFoundError(
                f"{self.directory}: no checkpoint of step {step}; saved steps are {steps}"
            )

    def _restore_or_raise(self, step: int, args: Any, data: str) -> Any:
        """orbax's restore of `step`, with damage reported as `DamagedCheckpointError`."""
        problem = self._agreed_problem(step, data)
        if problem is None:
            try:
                restored = self._manager.restore(step, args=args)
            except Exception as error:  # any failure to read is damage
                problem = checkpoint_damage.one_line(error)
        if problem is not None:
            raise DamagedCheckpointError(
                f"{self.directory / str(step)}: checkpoint step {step} is damaged: {problem} "
                f"(saved steps: {self.all_steps()}; restore another step, or resume without "
                "one to fall back to the newest intact step)"
            )
        logging.info("Restored step %d from %s", step, self.directory)
        return restored

    def _restore_newest_intact(self, args: Any, data: str) -> tuple[Any, int]:
        steps = self.all_steps()
        if not steps:
            raise FileNotFoundError(f"{self.directory}: no checkpoint to restore")
        damaged = []
        for step in reversed(steps):
            problem = self._agreed_problem(step, data)
            if problem is None:
                try:
                    restored = self._manager.restore(step, args=args)
                except Exception as error:  # any failure to read is damage
                    problem = checkpoint_damage.one_line(error)
                    if jax.process_count() > 1:
                        raise DamagedCheckpointError(
                            f"{self.directory / str(step)}: checkpoint step {step} could not be "
                            f"restored on process {jax.process_index()}: {problem}. Move "
                            f"{self.directory / str(step)} out of {self.directory} and start the "
                            "run again to resume from the step before it"
                        ) from error
                else:
                    # Moved only once an older step restored: with no intact step nothing moves,
                    # so that a restarted run does not silently start from scratch.
                    for damaged_step, damaged_problem in damaged:
                        self._set_aside(damaged_step, damaged_problem)
                    if damaged:
                        logging.warning(
                            "Restored step %d, the newest intact checkpoint in %s (damaged: %s)",
                            step,
                            self.directory,
                            [s for s, _ in damaged],
                        )
                    else:
                        logging.info("Restored step %d from %s", step, self.directory)
                    return restored, step
            damaged.append((step, problem))
        raise DamagedCheckpointError(
            f"{self.directory}: no intact checkpoint; "
            + "; ".join(f"step {s}: {p}" for s, p in damaged)
            + ". Nothing was moved: move these steps out of the folder (or use another workdir) "
            "to start afresh"
        )

    def _local_problem(self, step: int, data: str) -> str | None:
        """What this process finds missing or unreadable in the step (`data`: see
        `checkpoint_damage.step_problem`)."""
        name = f"process_{jax.process_index()}-of-{jax.process_count()}.json"
        return checkpoint_damage.step_problem(self.directory / str(step), name, data)

    def _agreed_problem(self, step: int, data: str) -> str | None:
        """`_local_problem` as every process agrees on it (damaged if damaged on any), with
        each failing process's reason."""
        problem = self._local_problem(step, data)
        if jax.process_count() == 1:
            return problem
        # At most 4 bytes of UTF-8 a character.
        reasons = sharding.allgather_text(problem or "", 4 * checkpoint_damage.MAX_REASON_CHARS)
        failing = [f"process {i}: {reason}" for i, reason in enumerate(reasons) if reason]
        return "; ".join(failing) if failing else None

    def _set_aside(self, step: int, problem: str) -> None:
        """Logs the damage; moves the step's folder to `damaged_directory` (`move_damaged`).

        In a multi-process run only process 0 moves it, then every process waits for it.
        """
        source = self.directory / str(step)
        if not self.move_damaged:
            logging.warning(
                "Checkpoint step %d in %s is damaged, skipped: %s", step, self.directory, problem
            )
            return
        if jax.process_index() == 0:
            target = self.damaged_directory / str(step)
            copy = 2
            while target.exists() or target.with_name(target.name + ".txt").exists():
                target = self.damaged_directory / f"{step}.{copy}"
                copy += 1
            logging.warning(
                "Checkpoint step %d in %s is damaged: %s; moving it to %s",
                step,
                self.directory,
                problem,
                target,
            )
            self.damaged_directory.mkdir(parents=True, exist_ok=True)
            source.rename(target)  # same file system: atomic, nothing is copied or deleted
            target.with_name(target.name + ".txt").write_text(f"Moved from {source}: {problem}\n")
        else:
            logging.warning(
                "Checkpoint step %d in %s is damaged: %s; process 0 moves it to %s",
                step,
                self.directory,
                problem,
                self.damaged_directory,
            )
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"vosjax_checkpoint_damaged_{step}")
        # orbax caches the steps: without a re-read it would still list this step, and `save`
        # would skip its number when the run reaches it again.
        self._manager.reload()

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


def average_checkpoints(
    directory: str | pathlib.Path,
    steps: Sequence[int],
    out_directory: str | pathlib.Path,
    out_step: int | None = None,
) -> int:
    """Saves the element-wise mean of the states of `steps` as one checkpoint in `out_directory`.

    Floating leaves (weights, BatchNorm statistics, optimizer moments) are averaged in float64 and
    cast back; other leaves (step counters) are taken from the last step. The data iterator's
    position is not saved: the result is for evaluation (`--mode=eval --step=out_step`). An
    offline tool: one process reads every step onto the host.

    Args:
      directory: a `checkpoints` folder holding every step of `steps`.
      steps: two or more saved steps.
      out_directory: where the averaged checkpoint goes (another run's `checkpoints` folder,
        so that the original run's folder and its pruning are untouched).
      out_step: its step number; None: the last of `steps`.

    Returns:
      The step number written.

    Raises:
      FileNotFoundError: a step is not saved in `directory` (`Checkpointer.restore_raw`'s error).
      DamagedCheckpointError: a step is damaged (named, with the damage).
      FileExistsError: `out_directory` already holds `out_step`.
      ValueError: fewer than two distinct steps, `out_directory` is `directory`, or the states
        differ in structure or shapes (naming the first differing leaf).
    """
    steps = sorted({int(s) for s in steps})
    if len(steps) < 2:
        raise ValueError(f"average_checkpoints: expected two or more distinct steps, got {steps}")
    directory = pathlib.Path(directory).absolute()
    out_directory = pathlib.Path(out_directory).absolute()
    if out_directory == directory:
        raise ValueError(f"average_checkpoints: out_directory must differ from {directory}")
    with Checkpointer(directory, max_to_keep=None, handle_sigterm=False) as source:
        states = [source.restore_raw(step)[0] for step in steps]  # raises for a missing step
    paths, treedef = jax.tree.flatten_with_path(states[-1])
    leaves = []
    for step, state in zip(steps, states, strict=True):
        flat, flat_def = jax.tree.flatten_with_path(state)
        if flat_def != treedef:
            raise ValueError(
                f"{directory}: step {step}'s state differs in structure from step {steps[-1]}'s"
            )
        for (path, last), (_, leaf) in zip(paths, flat, strict=True):
            if np.shape(leaf) != np.shape(last):
                raise ValueError(
                    f"{directory}: {jax.tree_util.keystr(path)} has shape {np.shape(leaf)} at "
                    f"step {step} but {np.shape(last)} at step {steps[-1]}"
                )
        leaves.append([np.asarray(leaf) for _, leaf in flat])
    averaged = []
    for per_step in zip(*leaves, strict=True):
        last = per_step[-1]
        if jnp.issubdtype(last.dtype, jnp.floating):  # bfloat16 too (not an np.floating)
            averaged.append(
                np.mean(np.stack(per_step), axis=0, dtype=np.float64).astype(last.dtype)
            )
        else:
            averaged.append(last)
    out_step = steps[-1] if out_step is None else int(out_step)
    with Checkpointer(out_directory, handle_sigterm=False, async_writes=False) as out:
        if out_step in out.all_steps():
            raise FileExistsError(f"{out_directory}: step {out_step} is already saved there")
        # jax.Arrays, as the training loop saves them (numpy leaves would be stored differently).
        out.save(out_step, jax.tree.unflatten(treedef, [jnp.asarray(x) for x in averaged]))
    logging.info(
        "Saved the mean of steps %s of %s as step %d of %s",
        steps,
        directory,
        out_step,
        out_directory,
    )
    return out_step
