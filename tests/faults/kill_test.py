"""SIGKILL a toy training run at moments drawn from a seed, resume it each time: no intact
checkpoint is lost; damage the newest step before the last resume: it falls back; the run ends
bitwise equal to an uninterrupted one.

Each run is `tests/toy_train.py` in a subprocess (2 fake devices, a checkpoint every step, the
newest 2 kept, so that every kill lands near a save or a pruning). The kills: before a batch,
inside orbax's asynchronous write of a step (every file written, not yet renamed), inside its
pruning of an old step (half of its files deleted), and at random times after a batch starts.
"""

import json
import random
import signal
import time

import jax
import numpy as np
import pytest

from tests import toy_train
from vosjax import checkpointing

SEED = 31
STEPS = 40
RUN = ("--devices=2", "--checkpoint_every=1", "--keep=2", "--no_tensorboard")
KILLS = ("in_write", "in_prune", "before_batch") + ("random",) * 5


def _launch(workdir, *args):
    return toy_train.launch(workdir, f"--steps={STEPS}", *RUN, *args)


def _assert_bitwise_equal(params, reference):
    assert len(params) == len(reference)
    for a, b in zip(params, reference, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The parameters of an uninterrupted run (checkpoints do not change them: one at the end)."""
    workdir = tmp_path_factory.mktemp("reference")
    out, _ = (proc := _launch(workdir, f"--checkpoint_every={STEPS}")).communicate(timeout=300)
    assert proc.returncode == 0, out
    return toy_train.read_params(workdir / "params_0.npz")


def _newest_intact(directory):
    """(step, its saved arrays and data-iterator JSON) of the newest restorable step, or None."""
    with checkpointing.Checkpointer(directory, move_damaged=False, handle_sigterm=False) as ckpt:
        for step in reversed(ckpt.all_steps()):
            try:
                raw, _ = ckpt.restore_raw(step)
                data = (directory / str(step) / "data" / "process_0-of-1.json").read_text()
                json.loads(data)
            except (checkpointing.DamagedCheckpointError, OSError, ValueError):
                continue
            return step, ([np.asarray(x) for x in jax.tree.leaves(raw)], data)
    return None, None


def _kill_run(workdir, kind, start, rng):
    """Starts the run (it resumes after `start`) and SIGKILLs it as `kind` says; its output."""
    if kind == "in_write":
        step = start + rng.randint(1, 3)
        proc = _launch(workdir, f"--kill_in_write={step}")
        expected = f"killed in the write of step {step}"
    elif kind == "in_prune":
        step = max(start, 1) + rng.randint(0, 2)  # pruned once step + 2 is written (keep 2)
        proc = _launch(workdir, f"--kill_in_prune={step}")
        expected = f"killed in the pruning of step {step}"
    elif kind == "before_batch":
        batch = start + rng.randint(1, 3)
        proc = _launch(workdir, f"--kill_at={batch}")
        expected = f"batch {batch}"
    else:
        # At least 5 batches of 0.05 s remain after `batch`: the kill lands before the end.
        batch, delay = start + rng.randint(1, 3), rng.uniform(0.0, 0.25)
        proc = _launch(workdir, "--sleep=0.05")
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.strip() == f"batch {batch}":
                time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
                break
        out = "".join(lines) + proc.communicate(timeout=300)[0]
        assert proc.returncode == -signal.SIGKILL, out
        return out
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, out
    assert expected in out, out
    return out


@pytest.mark.slow
def test_killed_at_random_moments_then_damaged_resumes_bitwise_equal(tmp_path, reference):
    rng = random.Random(SEED)
    kills = list(KILLS)
    rng.shuffle(kills)
    directory = tmp_path / "checkpoints"
    for number, kind in enumerate(kills):
        before, saved = _newest_intact(directory) if directory.exists() else (None, None)
        assert before is None or before <= STEPS - 6, "the schedule needs more steps"
        out = _kill_run(tmp_path, kind, before or 0, rng)
        after, kept = _newest_intact(directory)
        context = f"kill {number} ({kind}) after step {before}, newest intact {after}:\n{out}"
        print(context.split(":", 1)[0])  # the schedule, with `pytest -s`
        # No intact checkpoint lost: the newest one is still intact and unchanged, unless a
        # newer one was completed (then orbax may prune it: it keeps the newest 2).
        if before is not None:
            assert after is not None and after >= before, context
            if after == before:
                assert kept[1] == saved[1], context
                for a, b in zip(kept[0], saved[0], strict=True):
                    np.testing.assert_array_equal(a, b, err_msg=context)
    # Every kill left the newest step intact: no resume had to fall back.
    assert not (tmp_path / "checkpoints_damaged").exists()

    # The last resume finds its newest step damaged (a truncated array file): it falls back to
    # the step before, moves the damaged one aside and still ends bitwise equal.
    newest, _ = _newest_intact(directory)
    array_file = max(
        (directory / str(newest) / "state" / "d").iterdir(), key=lambda p: p.stat().st_size
    )
    size = array_file.stat().st_size
    with array_file.open("r+b") as f:
        f.truncate(size // 2)
    out, _ = (proc := _launch(tmp_path)).communicate(timeout=300)
    assert proc.returncode == 0, out
    assert (
        f"Checkpoint step {newest} in {directory} is damaged: the array data file {array_file} "
        f"is truncated ({size // 2} bytes, {size} expected)"
    ) in out
    batches = [int(line.split()[1]) for line in out.splitlines() if line.startswith("batch ")]
    assert batches == list(range(newest - 1, STEPS)), out  # resumed from the step before
    assert f"done at step {STEPS}" in out
    damaged = tmp_path / "checkpoints_damaged"
    assert sorted(p.name for p in damaged.iterdir()) == [str(newest), f"{newest}.txt"]
    moved_file = damaged / str(newest) / array_file.relative_to(directory / str(newest))
    assert moved_file.stat().st_size == size // 2  # moved as it was, not deleted
    _assert_bitwise_equal(toy_train.read_params(tmp_path / "params_0.npz"), reference)
    # The temporary folders of killed writes were replaced when their steps were saved again.
    assert not list(directory.glob("*.orbax-checkpoint-tmp*"))
