"""Runs the toy method in a subprocess: `python tests/toy_train.py --workdir=W --steps=N ...`.

Options kill the process with SIGKILL before batch `kill_at` (after `kill_at` steps), inside
orbax's asynchronous write of a step (`kill_in_write`: every file is in the temporary folder,
just before it is renamed to the step's) or inside its pruning of an old step (`kill_in_prune`:
half of that step's files deleted), sleep before each batch (so that a test can send SIGTERM),
and join a `jax.distributed` run. `no_tensorboard` writes summaries without TensorFlow (whose
import takes seconds). The final parameters (flattened, in leaf order) are written to
`<workdir>/params_<process>.npz`.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import signal
import subprocess
import sys
import time
from typing import Any

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--kill_at", type=int, default=-1)
    parser.add_argument("--sleep", type=float, default=0.0)
    parser.add_argument("--devices", type=int, default=8)
    parser.add_argument("--num_processes", type=int, default=1)
    parser.add_argument("--process_id", type=int, default=0)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--nan_steps", default="")
    parser.add_argument("--checkpoint_every", type=int, default=0, help="0: the toy config's")
    parser.add_argument("--keep", type=int, default=0, help="0: the toy config's")
    parser.add_argument("--kill_in_write", type=int, default=-1)
    parser.add_argument("--kill_in_prune", type=int, default=-1)
    parser.add_argument("--no_tensorboard", action="store_true")
    args = parser.parse_args()
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))
    if args.no_tensorboard:
        sys.modules["tensorflow"] = None  # vosjax.summaries then writes metrics.jsonl
    _install_kills(args.kill_in_write, args.kill_in_prune)

    import jax

    from tests import toy_method
    from vosjax import train

    config = toy_method.config(args.steps)
    if args.checkpoint_every:
        config.checkpoint_every_steps = args.checkpoint_every
    if args.keep:
        config.keep_checkpoints = args.keep
    if args.num_processes > 1:
        config.distributed.enabled = True
        config.distributed.coordinator_address = f"127.0.0.1:{args.port}"
        config.distributed.num_processes = args.num_processes
        config.distributed.process_id = args.process_id

    def on_batch(index: int) -> None:
        print(f"batch {index}", flush=True)
        if index == args.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        time.sleep(args.sleep)

    def factory(host_batch_size: int) -> toy_method.ControlledIterator:
        del host_batch_size  # the toy dataset slices the global batch itself
        return toy_method.ControlledIterator(iter(toy_method.dataset(config.batch_size)), on_batch)

    nan_steps = tuple(int(s) for s in args.nan_steps.split(",") if s)
    state = train.train_and_evaluate(config, args.workdir, toy_method.ToyMethod(nan_steps), factory)
    leaves = [np.asarray(x.addressable_data(0)) for x in jax.tree.leaves(state)]
    np.savez(
        pathlib.Path(args.workdir) / f"params_{jax.process_index()}.npz",
        *leaves,
    )
    print(f"done at step {int(np.asarray(state.step.addressable_data(0)))}", flush=True)


def _install_kills(write_step: int, prune_step: int) -> None:
    """SIGKILLs this process from inside orbax's save of `write_step` / pruning of `prune_step`.

    The hooks are orbax 0.12.8's: `AtomicRenameTemporaryPath.finalize` (run by the background
    write once every file of the step is in `<step>.orbax-checkpoint-tmp`; it writes
    commit_success.txt and renames the folder) and `StandardCheckpointDeleter.
    _delete_step_permanently` (run after a newer step's write has finished).
    """
    from orbax.checkpoint._src.path import atomicity, deleter

    if write_step >= 0:
        finalize = atomicity.AtomicRenameTemporaryPath.finalize

        async def finalize_or_kill(self: atomicity.AtomicRenameTemporaryPath) -> None:
            if self.get_final().name == str(write_step):
                print(f"killed in the write of step {write_step}", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            await finalize(self)

        atomicity.AtomicRenameTemporaryPath.finalize = finalize_or_kill
    if prune_step >= 0:
        delete = deleter.StandardCheckpointDeleter._delete_step_permanently

        def delete_or_kill(self: Any, step: int, target: Any) -> None:
            if step == prune_step:
                files = sorted(p for p in pathlib.Path(target).rglob("*") if p.is_file())
                for path in files[: len(files) // 2]:
                    path.unlink()
                print(f"killed in the pruning of step {prune_step}", flush=True)
                os.kill(os.getpid(), signal.SIGKILL)
            delete(self, step, target)

        deleter.StandardCheckpointDeleter._delete_step_permanently = delete_or_kill


def launch(workdir: str | os.PathLike, *args: str) -> subprocess.Popen:
    """Starts this script on `workdir` (output: stdout and stderr together, as text)."""
    return subprocess.Popen(
        [sys.executable, str(pathlib.Path(__file__).resolve()), f"--workdir={workdir}", *args],
        cwd=pathlib.Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def read_params(path: str | os.PathLike) -> list[np.ndarray]:
    """The final parameters a run wrote (`params_<process>.npz`), in leaf order."""
    with np.load(path) as f:
        return [f[k] for k in f.files]


if __name__ == "__main__":
    main()
