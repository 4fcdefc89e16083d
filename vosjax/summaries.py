"""Where a run's summaries go: clu's TensorBoard writer, or the log alone without TensorFlow.

clu's metric writers and periodic actions import TensorFlow. A machine without it (a GPU host
where only JAX is installed, say) still trains and evaluates: scalars then go to the log and to
`<logdir>/metrics.jsonl` (one JSON object per write: {"step": ..., name: value, ...}), images
and texts are dropped, and the progress report is ours instead of clu's.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import pathlib
import sys
import time
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
from absl import logging

_WARNED = False


def has_tensorboard() -> bool:
    """Whether clu's TensorBoard writers can be imported (TensorFlow is installed)."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"] is not None  # None: imports of it are blocked
    return importlib.util.find_spec("tensorflow") is not None


def _warn_once() -> None:
    global _WARNED
    if not _WARNED:
        logging.warning(
            "TensorFlow is not installed: no TensorBoard summaries; scalars go to the log and "
            "to metrics.jsonl (pip install tensorflow-cpu tensorboard for TensorBoard)"
        )
        _WARNED = True


class JsonlWriter:
    """clu's MetricWriter methods without TensorFlow: scalars to the log and a JSON-lines file."""

    def __init__(self, logdir: str | pathlib.Path, just_logging: bool = False):
        self._path = None if just_logging else pathlib.Path(logdir) / "metrics.jsonl"
        if self._path is not None:
            self._path.parent.mkdir(parents=True, exist_ok=True)

    def write_scalars(self, step: int, scalars: Mapping[str, Any]) -> None:
        values = {k: float(np.asarray(v)) for k, v in scalars.items()}
        logging.info("[%d] %s", step, ", ".join(f"{k}={v:.6g}" for k, v in values.items()))
        if self._path is not None:
            with self._path.open("a") as f:
                f.write(json.dumps({"step": int(step), **values}) + "\n")

    def write_images(self, step: int, images: Mapping[str, Any]) -> None:
        del step, images

    def write_texts(self, step: int, texts: Mapping[str, str]) -> None:
        del step, texts

    def write_hparams(self, hparams: Mapping[str, Any]) -> None:
        del hparams

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def create_writer(logdir: str | pathlib.Path, just_logging: bool = False) -> Any:
    """clu's default writer (TensorBoard event files in `logdir`), or a `JsonlWriter`."""
    if has_tensorboard():
        from clu import metric_writers

        return metric_writers.create_default_writer(str(logdir), just_logging=just_logging)
    _warn_once()
    return JsonlWriter(logdir, just_logging)


class Progress:
    """Steps/s and ETA every `every_secs`, and time per named part (clu's ReportProgress's job)."""

    def __init__(self, num_train_steps: int, writer: Any, every_secs: float = 60.0):
        self._num_steps, self._writer, self._every = num_train_steps, writer, every_secs
        self._t0 = self._last_time = time.monotonic()
        self._last_step: int | None = None
        self._parts: dict[str, float] = {}

    def __call__(self, step: int) -> None:
        now = time.monotonic()
        if self._last_step is None:  # the first step (compilation) is not timed
            self._last_step, self._last_time = step, now
            return
        if now - self._last_time < self._every and step != self._num_steps:
            return
        if step == self._last_step:
            return
        rate = (step - self._last_step) / (now - self._last_time)
        parts = ", ".join(f"{k} {v:.0f}s" for k, v in sorted(self._parts.items()))
        logging.info(
            "%.2f steps/s, %d/%d, ETA %.0f s%s",
            rate,
            step,
            self._num_steps,
            (self._num_steps - step) / rate,
            f" ({parts})" if parts else "",
        )
        self._writer.write_scalars(step, {"steps_per_sec": rate, "uptime": now - self._t0})
        self._last_step, self._last_time = step, now

    @contextlib.contextmanager
    def timed(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self._parts[name] = self._parts.get(name, 0.0) + time.monotonic() - start


def training_hooks(config: Any, workdir: pathlib.Path, num_steps: int, writer: Any) -> list[Any]:
    """The loop's hooks: progress first (its `timed` times named parts), then the profiler."""
    if not has_tensorboard():
        _warn_once()
        if config.profile.enabled:
            logging.warning("config.profile.enabled: profiling needs clu with TensorFlow; skipped")
        return [Progress(num_steps, writer)]
    import jax
    from clu import periodic_actions

    hooks = [periodic_actions.ReportProgress(num_train_steps=num_steps, writer=writer)]
    if config.profile.enabled and jax.process_index() == 0:
        hooks.append(
            periodic_actions.Profile(
                logdir=str(workdir),
                num_profile_steps=config.profile.num_steps,
                profile_duration_ms=0,  # the step count alone ends a trace
                first_profile=config.profile.first_step,
                every_steps=config.profile.every_steps or None,
                every_secs=None,
            )
        )
    return hooks
