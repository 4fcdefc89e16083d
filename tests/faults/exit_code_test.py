"""`python -m vosjax.main`'s exit status: 75 when preempted (checkpoint saved), 1 on an error."""

import os
import pathlib
import signal
import subprocess
import sys

import pytest

from vosjax import checkpointing, main, workdir_lock

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _main(tmp_path, *args, **kwargs):
    return subprocess.Popen(
        [sys.executable, "-m", "vosjax.main", "--config=configs/maskvos/corr_r18.py:smoke", *args],
        cwd=ROOT,
        env=dict(os.environ, VOSJAX_DATA_DIR=str(tmp_path / "cache")),
        text=True,
        **kwargs,
    )


@pytest.mark.slow
def test_sigterm_saves_a_complete_checkpoint_and_exits_75(tmp_path):
    assert main.PREEMPTED_EXIT_CODE == 75
    assert "75" in main.__doc__
    workdir = tmp_path / "work"
    process = _main(
        tmp_path,
        f"--workdir={workdir}",
        "--config.num_train_steps=1000",
        "--config.checkpoint_every_steps=1000",
        "--config.eval_every_steps=-1",
        stderr=subprocess.PIPE,
    )
    lines = []
    for line in process.stderr:
        lines.append(line)
        if "Training from step 0 to 1000" in line:
            process.send_signal(signal.SIGTERM)  # the handler is installed: the step saves
            break
    log = "".join(lines) + process.communicate(timeout=300)[1]
    assert process.returncode == main.PREEMPTED_EXIT_CODE, log[-3000:]
    assert "exit status 75" in log
    with checkpointing.Checkpointer(workdir / "checkpoints", handle_sigterm=False) as ckpt:
        steps = ckpt.all_steps()
        assert len(steps) == 1 and 1 <= steps[0] < 1000  # saved where the signal was seen
        raw, _ = ckpt.restore_raw(steps[0])  # complete: every array reads back
    assert int(raw["step"]) == steps[0]
    assert not list((workdir / "checkpoints").glob("*tmp*"))
    assert not workdir_lock.lock_path(workdir).exists()


def test_evaluating_an_unwritable_workdir_exits_1_naming_eval_dir(tmp_path):
    # /sys/kernel: a folder that even root cannot write (the tests may run as root).
    process = _main(tmp_path, "--workdir=/sys/kernel", "--mode=eval", stderr=subprocess.PIPE)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 1, err[-3000:]
    assert "Traceback" not in err
    assert "/sys/kernel: cannot write there" in err and "pass --eval_dir=E" in err


def test_training_in_an_unwritable_workdir_exits_1_naming_workdir(tmp_path):
    process = _main(tmp_path, "--workdir=/sys/kernel/vosjax_run", stderr=subprocess.PIPE)
    _, err = process.communicate(timeout=300)
    assert process.returncode == 1, err[-2000:]
    assert "/sys/kernel/vosjax_run: cannot write there" in err and "another --workdir" in err
    assert "Traceback" not in err
