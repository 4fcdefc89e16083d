"""One run at a time owns a workdir: `vosjax.workdir_lock`, in-process and with real runs."""

import json
import logging
import os
import pathlib
import re
import socket
import subprocess
import sys
import time

import numpy as np
import psutil
import pytest

from tests import toy_train
from vosjax import checkpointing, workdir_lock

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _write_lock(workdir: pathlib.Path, **record) -> pathlib.Path:
    path = workdir_lock.lock_path(workdir)
    path.parent.mkdir(parents=True, exist_ok=True)
    record = {"host": socket.gethostname(), "started": "earlier", "command": "x"} | record
    path.write_text(json.dumps(record))
    return path


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    assert not psutil.pid_exists(process.pid)  # reaped; no other process took its pid yet
    return process.pid


def test_lock_is_released_and_reentrant(tmp_path):
    path = workdir_lock.lock_path(tmp_path)
    with workdir_lock.hold(tmp_path):
        record = json.loads(path.read_text())
        assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
        assert record["process_start_time"] == pytest.approx(psutil.Process().create_time())
        assert "command" in record and "time" in record
        with workdir_lock.hold(tmp_path):  # vosjax.main, then train.train_and_evaluate
            pass
        assert path.exists()
        with pytest.raises(RuntimeError, match="boom"), workdir_lock.hold(tmp_path):
            raise RuntimeError("boom")
        assert path.exists()
    assert not path.exists()
    with pytest.raises(RuntimeError, match="boom"), workdir_lock.hold(tmp_path):
        raise RuntimeError("boom")
    assert not path.exists()  # released on an exception too


def test_live_holder_refuses_naming_host_pid_and_start(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = psutil.Process(sleeper.pid).create_time()
        path = _write_lock(
            tmp_path, pid=sleeper.pid, process_start_time=start, started="2026-01-02 03:04:05 UTC"
        )
        before = path.read_text()
        with pytest.raises(workdir_lock.WorkdirLockedError) as error:
            workdir_lock.acquire(tmp_path, advice="Try --eval_dir.")
        message = str(error.value)
        assert f"pid {sleeper.pid} on host {socket.gethostname()!r}" in message
        assert "started 2026-01-02 03:04:05 UTC" in message and "Try --eval_dir." in message
        assert path.read_text() == before
    finally:
        sleeper.kill()
        sleeper.wait()


def test_dead_holder_on_this_host_is_taken_over_with_a_warning(tmp_path, caplog):
    path = _write_lock(tmp_path, pid=_dead_pid(), process_start_time=1.0)
    with caplog.at_level(logging.WARNING), workdir_lock.hold(tmp_path):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert "no longer runs" in caplog.text and str(path) in caplog.text
    assert not path.exists()
    # A reused pid: the pid runs (this test), but it started at another time.
    path = _write_lock(tmp_path, pid=os.getpid(), process_start_time=12345.0)
    with workdir_lock.hold(tmp_path):
        assert json.loads(path.read_text())["process_start_time"] != 12345.0


def test_lock_of_another_host_is_never_taken_over(tmp_path):
    path = _write_lock(tmp_path, host="gpu-node-7", pid=_dead_pid(), process_start_time=1.0)
    with pytest.raises(workdir_lock.WorkdirLockedError) as error:
        workdir_lock.acquire(tmp_path)
    message = str(error.value)
    assert "host 'gpu-node-7'" in message and f"remove {path}" in message
    assert json.loads(path.read_text())["host"] == "gpu-node-7"


_KILLED = """
import os, signal, sys
sys.path.insert(0, {root!r})
from vosjax import workdir_lock
workdir_lock.acquire({workdir!r})
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_holder_leaves_its_lock_and_the_next_run_takes_it_over(tmp_path, caplog):
    script = _KILLED.format(root=str(ROOT), workdir=str(tmp_path))
    killed = subprocess.Popen([sys.executable, "-c", script])
    assert killed.wait(timeout=60) == -9
    path = workdir_lock.lock_path(tmp_path)
    assert json.loads(path.read_text())["pid"] == killed.pid  # no finally ran
    with caplog.at_level(logging.WARNING), workdir_lock.hold(tmp_path):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    assert f"pid {killed.pid} on host" in caplog.text and "no longer runs" in caplog.text


_RACER = """
import sys, time
sys.path.insert(0, {root!r})
from vosjax import workdir_lock
time.sleep(max({start} - time.time(), 0))
try:
    workdir_lock.acquire({workdir!r})
    print("won", flush=True)
    time.sleep(2)  # hold it while the others decide
except workdir_lock.WorkdirLockedError:
    print("refused", flush=True)
"""


@pytest.mark.parametrize("stale", [False, True])
def test_of_runs_starting_together_exactly_one_wins(tmp_path, stale):
    if stale:  # all of them find the lock of a dead process and take it over at once
        _write_lock(tmp_path, pid=_dead_pid(), process_start_time=1.0)
    script = _RACER.format(root=str(ROOT), start=time.time() + 2, workdir=str(tmp_path))
    racers = [
        subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
        for _ in range(6)
    ]
    outcomes = sorted(p.communicate(timeout=60)[0].strip() for p in racers)
    assert outcomes == ["refused"] * 5 + ["won"]


def test_a_stale_lock_is_replaced_once(tmp_path):
    """Two runs that both found the same stale lock: the second sees the first's new lock."""
    stale = {"host": socket.gethostname(), "pid": _dead_pid(), "process_start_time": 1.0}
    path = _write_lock(tmp_path, **stale)
    stale = json.loads(path.read_text())
    first = {"host": socket.gethostname(), "pid": 1, "process_start_time": 2.0}
    second = {"host": socket.gethostname(), "pid": 2, "process_start_time": 3.0}
    assert workdir_lock._take_over(path, stale, first)
    assert not workdir_lock._take_over(path, stale, second)
    assert json.loads(path.read_text()) == first
    assert [p.name for p in tmp_path.iterdir()] == [workdir_lock.LOCK_NAME]


@pytest.mark.slow
def test_second_run_is_refused_and_the_first_keeps_its_checkpoints(tmp_path):
    first = toy_train.launch(tmp_path, "--steps=10", "--sleep=0.4")
    lines = []
    for line in first.stdout:
        lines.append(line)
        if line.startswith("batch 1"):  # training, its checkpointer made
            break
    second = toy_train.launch(tmp_path, "--steps=10")
    out_second, _ = second.communicate(timeout=300)
    out_first = "".join(lines) + first.communicate(timeout=300)[0]
    assert second.returncode == 1, out_second
    assert re.search(
        rf"is held by pid {first.pid} on host '{re.escape(socket.gethostname())}', started "
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC",
        out_second,
    ), out_second
    assert "batch 0" not in out_second  # refused before training
    assert first.returncode == 0 and "done at step 10" in out_first, out_first
    # Every checkpoint of the first run is there and complete: the last one holds its result.
    with checkpointing.Checkpointer(tmp_path / "checkpoints", handle_sigterm=False) as ckpt:
        assert ckpt.all_steps() == [2, 4, 6, 8, 10]
        raw, _ = ckpt.restore_raw(10)
    assert not list((tmp_path / "checkpoints").glob("*tmp*"))
    with np.load(tmp_path / "params_0.npz") as final:
        kernel = np.asarray(raw["params"]["conv2"]["kernel"]["value"])
        assert any(np.array_equal(final[k], kernel) for k in final.files)
    assert not workdir_lock.lock_path(tmp_path).exists()
