"""The lock that makes one run at a time the owner of a workdir: `<workdir>/.vosjax.lock`.

Two runs writing one workdir destroy each other's checkpoints (both save, prune and rename the
same step folders). The run that trains in a workdir (and `--mode=eval` writing its results
there, and `vosjax.import_weights`) holds this lock from before anything touches the workdir
until it exits.

The lock file is JSON: host, pid, process_start_time (the holder's start, seconds since the
epoch, as `psutil` reports it), started (the same, readable), command and time (when it was
taken). It is created with O_CREAT | O_EXCL, so of two runs starting together exactly one wins.
A run that finds the lock:
  - held by a live process: refuses at start, naming host, pid and start time;
  - left by a process of this host that no longer runs (a SIGKILL, a crash of the machine's
    scheduler): takes it over with a warning. The pid is checked together with its start time,
    so a new process that reuses the pid is not taken for the holder;
  - left by a process of another host: refuses; this host cannot tell whether the holder still
    runs, so only the user removes the file.
The takeover is race-free: the taker holds `flock` on the stale file, checks that the path still
names that file, and replaces it in one `os.replace`; a second taker finds another file there and
starts over (and refuses, the new holder being alive).

"This host" is `socket.gethostname()`: machines (or containers without a shared process table)
that write one workdir need distinct host names, as they have on clusters and in Docker.

Multi-host runs: process 0 alone holds the lock (other processes never touch the file); its
decision is broadcast, so a refusal stops every process at the same point.

A process may hold the lock of a workdir several times (`vosjax.main` takes it, then
`train.train_and_evaluate` takes it again); the file goes when the outermost hold ends. A run
that dies without running its `finally` (SIGKILL) leaves the file, and the next run on the same
host takes it over.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import pathlib
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

import psutil
from absl import logging

LOCK_NAME = ".vosjax.lock"
# A lock file is written right after its creation; an empty or partial one is re-read for
# this long (another run is writing it) before it counts as damaged.
_UNREADABLE_PATIENCE_S = 2.0
_MAX_MESSAGE_BYTES = 4096

# Locks this process holds: lock path -> number of nested holds.
_held: dict[pathlib.Path, int] = {}


class WorkdirLockedError(RuntimeError):
    """Another run holds the workdir (or its lock file cannot be read); the message says which
    and what to do."""


def lock_path(workdir: str | pathlib.Path) -> pathlib.Path:
    """`<workdir>/.vosjax.lock` (absolute)."""
    return pathlib.Path(workdir).absolute() / LOCK_NAME


def _utc(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _own_record() -> dict[str, Any]:
    start = psutil.Process().create_time()
    return {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "process_start_time": start,
        "started": _utc(start),
        "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
        "time": _utc(time.time()),
    }


def _describe(record: dict[str, Any]) -> str:
    return (
        f"pid {record.get('pid')} on host {record.get('host')!r}, started "
        f"{record.get('started', '?')} (command: {record.get('command', '?')})"
    )


def _is_alive(record: dict[str, Any]) -> bool:
    """Whether the process of a lock of this host still runs (and is the same process)."""
    try:
        process = psutil.Process(int(record["pid"]))
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        created = process.create_time()
    except psutil.NoSuchProcess:
        return False
    except (psutil.AccessDenied, KeyError, TypeError, ValueError):
        return True  # cannot tell: never take over a lock that may be live
    recorded = record.get("process_start_time")
    # A pid reused by a newer process: another start time (psutil reports it to 10 ms).
    return recorded is None or abs(created - float(recorded)) < 1.0


def _read(path: pathlib.Path) -> dict[str, Any] | None:
    """The lock's record; None when the file is gone. Waits out a lock being written.

    Raises:
      WorkdirLockedError: the file stays empty or unreadable.
    """
    deadline = time.monotonic() + _UNREADABLE_PATIENCE_S
    while True:
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        try:
            record = json.loads(text)
            if isinstance(record, dict) and "pid" in record and "host" in record:
                return record
        except json.JSONDecodeError:
            pass
        if time.monotonic() > deadline:
            raise WorkdirLockedError(
                f"{path}: unreadable lock file ({text[:200]!r}); expected the JSON record of "
                f"the run that holds the workdir. If no run uses {path.parent}, remove {path} "
                "and start again."
            )
        time.sleep(0.05)


def _write_new(path: pathlib.Path, record: dict[str, Any]) -> bool:
    """Creates the lock file with `record`; False when it exists already."""
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(record, indent=2) + "\n")
        f.flush()
        os.fsync(f.fileno())
    return True


def _take_over(path: pathlib.Path, stale: dict[str, Any], record: dict[str, Any]) -> bool:
    """Replaces the stale lock `stale` by `record`; False when `path` is no longer that lock."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        with contextlib.suppress(OSError):  # a file system without flock: the checks remain
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            here = os.stat(path)
        except FileNotFoundError:
            return False
        opened = os.fstat(fd)
        if (here.st_ino, here.st_dev) != (opened.st_ino, opened.st_dev) or _read(path) != stale:
            return False  # another run took it over (or removed it) first
        temporary = path.with_name(f"{LOCK_NAME}.{record['pid']}.tmp")
        temporary.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(temporary, path)
        return True
    finally:
        os.close(fd)


def acquire(workdir: str | pathlib.Path, advice: str = "") -> None:
    """Takes the lock of `workdir` for this process (creating `workdir` if needed).

    Args:
      workdir: the run's folder.
      advice: appended to a refusal (e.g. the flag that avoids the conflict).

    Raises:
      WorkdirLockedError: a live run (or a run of another host) holds it, naming the holder.
    """
    path = lock_path(workdir)
    if path in _held:
        _held[path] += 1
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    record = _own_record()
    host = record["host"]
    tail = f" {advice}" if advice else ""
    for _ in range(100):
        if _write_new(path, record):
            break
        holder = _read(path)
        if holder is None:
            continue  # released meanwhile: try to create it again
        if holder.get("host") != host:
            raise WorkdirLockedError(
                f"{path.parent} is in use: {path} is held by {_describe(holder)}, another "
                f"host, which this host cannot check. Two runs writing one workdir destroy "
                f"each other's checkpoints. If you are sure that run has stopped, remove "
                f"{path} and start again; otherwise use another --workdir.{tail}"
            )
        if _is_alive(holder):
            raise WorkdirLockedError(
                f"{path.parent} is in use by another run: {path} is held by "
                f"{_describe(holder)}. Two runs writing one workdir destroy each other's "
                f"checkpoints: wait for it to finish, stop it (it resumes from its last "
                f"checkpoint), or use another --workdir.{tail}"
            )
        if _take_over(path, holder, record):
            logging.warning(
                "Taking over %s: its holder, %s, no longer runs (killed?)", path, _describe(holder)
            )
            break
    else:
        raise WorkdirLockedError(f"{path}: could not take the lock (it keeps changing)")
    _held[path] = 1
    logging.info("Holding %s", path)


def release(workdir: str | pathlib.Path) -> None:
    """Ends one hold of `workdir`'s lock; the file goes with the outermost hold."""
    path = lock_path(workdir)
    if path not in _held:
        return
    _held[path] -= 1
    if _held[path] > 0:
        return
    del _held[path]
    try:
        holder = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        holder = None
    if not holder or holder.get("pid") != os.getpid() or holder.get("host") != socket.gethostname():
        logging.warning("%s no longer holds this run's lock; left as it is", path)
        return
    path.unlink(missing_ok=True)


@contextlib.contextmanager
def hold(workdir: str | pathlib.Path, advice: str = "") -> Iterator[None]:
    """Holds `workdir`'s lock for the `with` block (process 0; decided for every process).

    Call after `jax.distributed` is initialised (multi-host runs): every process must enter.

    Raises:
      WorkdirLockedError: on every process, when process 0 cannot take the lock.
    """
    import jax

    multi = jax.process_count() > 1
    owner = jax.process_index() == 0
    error = ""
    if owner:
        try:
            acquire(workdir, advice)
        except (WorkdirLockedError, OSError) as e:
            if not multi:
                raise
            error = str(e)
    if multi:
        from vosjax import sharding

        error = sharding.broadcast_text(error, _MAX_MESSAGE_BYTES)
        if error:
            raise WorkdirLockedError(error if owner else f"process 0 refused to start: {error}")
    try:
        yield
    finally:
        if owner:
            release(workdir)
