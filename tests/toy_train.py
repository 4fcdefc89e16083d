"""Runs the toy method in a subprocess: `python tests/toy_train.py --workdir=W --steps=N ...`.

Options kill the process with SIGKILL before batch `kill_at` (after `kill_at` steps), sleep
before each batch (so that a test can send SIGTERM), and join a `jax.distributed` run. The
final parameters (flattened, in leaf order) are written to `<workdir>/params_<process>.npz`.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import signal
import sys
import time

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
    args = parser.parse_args()
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

    import jax

    from tests import toy_method
    from vosjax import train

    config = toy_method.config(args.steps)
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


if __name__ == "__main__":
    main()
