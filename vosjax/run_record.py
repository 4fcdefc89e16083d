"""What a workdir was created with, and the check that a resume (or an evaluation) fits it.

A run that creates a workdir (training, or `vosjax.import_weights`) writes
  `<workdir>/config.json`: the full config;
  `<workdir>/run_info.json`: the method and the state's shape and dtype per path, for
    `params`, `model_state` and `opt_state` (paths as 'encoder/conv1/kernel').
A run that resumes the workdir (and `--mode=eval` on it) compares its config and state with the
record at start, before building data pipelines or restoring anything:
  - another method, or any state path missing, extra or of another shape: stops with one short
    message listing the differing config fields (old -> new) and the paths with both shapes;
  - changed fields of `SAFE_ON_RESUME` (and everything under them): allowed silently;
  - other changed fields that leave every shape equal (learning rate, loss weights, seed, ...):
    allowed with a warning listing them; a resumed training run records its config beside the
    first as `config_resumed_step_<N>.json` (N: the step it resumes), never overwriting
    `config.json`, and the next resume compares with the newest record.
A workdir made before this record existed (checkpoints, no record) is recorded when training
resumes it, with a notice. A workdir holding a record but no checkpoint has nothing to protect:
training there records the new config.

Only process 0 writes; every process reads and checks (the workdir is shared, as orbax requires).
"""

from __future__ import annotations

import json
import os
import pathlib
import re
from collections.abc import Mapping
from typing import Any

import jax
import ml_collections
from absl import logging

CONFIG_FILE = "config.json"
INFO_FILE = "run_info.json"
RESUMED_PATTERN = re.compile(r"config_resumed_step_(\d+)\.json")
STATE_PARTS = ("params", "model_state", "opt_state")

# Config fields that a resumed run may change silently (a field and everything under it). They
# say how long and how the run goes (steps, periods, logging, profiling, how many devices and
# hosts), where the data are read from, and how evaluation results are written; none changes a
# state shape or what a training step computes. `num_train_steps` also stretches the schedules
# that end at it (learning rate, EMA momentum, weight decay) from the resumed step on.
SAFE_ON_RESUME = (
    "num_train_steps",
    "eval_every_steps",
    "log_every_steps",
    "checkpoint_every_steps",
    "keep_checkpoints",
    "async_checkpoints",
    "max_consecutive_nonfinite",
    "profile",
    "mesh",
    "distributed",
    "init_from",  # only read by a fresh run
    "data.path",
    "data.read_threads",
    "data.prefetch_batches",
    "eval.davis_root",
    "eval.youtube_vos_root",
    "eval.write_pngs",
    "eval.num_overlays",
    "schedule.cache_dir",
)
_MAX_LINES = 12
_warned: set[tuple[str, str, tuple[str, ...]]] = set()


class RunMismatchError(ValueError):
    """The config does not fit the run recorded in the workdir (fields and paths named)."""


def checkpoint_steps(workdir: str | pathlib.Path) -> list[int]:
    """The step folders of `workdir/checkpoints` (complete or not), ascending."""
    directory = pathlib.Path(workdir) / "checkpoints"
    if not directory.is_dir():
        return []
    return sorted(int(p.name) for p in directory.iterdir() if p.is_dir() and p.name.isdigit())


def _path_name(path: tuple[Any, ...]) -> str:
    names = []
    for key in path:
        for attribute in ("key", "name", "idx"):
            if hasattr(key, attribute):
                names.append(str(getattr(key, attribute)))
                break
        else:
            names.append(str(key))
    if names and names[-1] == "value":  # nnx Variables
        names.pop()
    return "/".join(names)


def state_layout(abstract_state: Any) -> dict[str, dict[str, dict[str, Any]]]:
    """{'params' | 'model_state' | 'opt_state': {path: {'shape': [...], 'dtype': str}}}."""
    layout = {}
    for part in STATE_PARTS:
        leaves = jax.tree_util.tree_flatten_with_path(getattr(abstract_state, part))[0]
        layout[part] = {
            _path_name(path): {"shape": list(leaf.shape), "dtype": str(leaf.dtype)}
            for path, leaf in leaves
        }
    return layout


def config_as_json(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config as it is written to (and read back from) `config.json`."""
    return json.loads(json.dumps(config.to_dict(), default=str))


def _flat(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        if isinstance(value, Mapping) and value:
            out.update(_flat(value, name))
        else:
            out[name] = value
    return out


def is_safe(field: str) -> bool:
    """Whether `field` (dotted, without 'config.') may change on resume silently."""
    return any(field == s or field.startswith(f"{s}.") for s in SAFE_ON_RESUME)


def changed_fields(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted field -> (old, new) for every field that differs ('<absent>' when missing)."""
    old, new = _flat(old), _flat(new)
    absent = "<absent>"
    return {
        k: (old.get(k, absent), new.get(k, absent))
        for k in sorted(set(old) | set(new))
        if old.get(k, absent) != new.get(k, absent)
    }


def shape_differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """'part/path: old_shape -> new_shape' for every path missing, extra or reshaped."""
    lines = []
    for part in STATE_PARTS:
        before, after = old.get(part, {}), new.get(part, {})
        for path in sorted(set(before) | set(after)):
            a = tuple(before[path]["shape"]) if path in before else "absent"
            b = tuple(after[path]["shape"]) if path in after else "absent"
            if a != b:
                lines.append(f"{part}/{path}: {a} -> {b}")
    return lines


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _capped(lines: list[str]) -> list[str]:
    if len(lines) <= _MAX_LINES:
        return lines
    return [*lines[:_MAX_LINES], f"... and {len(lines) - _MAX_LINES} more"]


def _write_json(path: pathlib.Path, value: Any) -> None:
    """Writes atomically: a reader never sees half a file."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    text = json.dumps(value, indent=2, default=str)
    # Shapes on one line each: [3, 3, 64, 64], not one number a line.
    text = re.sub(r"\[[\d,\s]*\]", lambda m: json.dumps(json.loads(m.group(0))), text)
    temporary.write_text(text + "\n")
    os.replace(temporary, path)


def latest_config(workdir: pathlib.Path) -> tuple[pathlib.Path, dict[str, Any]] | None:
    """The newest config record: the last `config_resumed_step_<N>.json`, else `config.json`."""
    resumed = sorted(
        (int(m.group(1)), p)
        for p in workdir.glob("config_resumed_step_*.json")
        if (m := RESUMED_PATTERN.fullmatch(p.name))
    )
    path = resumed[-1][1] if resumed else workdir / CONFIG_FILE
    if not path.is_file():
        return None
    return path, json.loads(path.read_text())


def write_record(workdir: str | pathlib.Path, config: ml_collections.ConfigDict, layout: Any):
    """Writes `config.json` and `run_info.json` (process 0 only)."""
    if jax.process_index() != 0:
        return
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in workdir.glob("config_resumed_step_*.json"):
        stale.unlink()  # of a run whose checkpoints are gone: they describe nothing here
    _write_json(workdir / CONFIG_FILE, config_as_json(config))
    _write_json(workdir / INFO_FILE, {"method": config.get("method"), **layout})


def check(
    workdir: str | pathlib.Path,
    config: ml_collections.ConfigDict,
    abstract_state: Any,
    *,
    write: bool,
) -> None:
    """Records a new run, or checks that `config` fits the run recorded in `workdir`.

    Args:
      workdir: the run's folder.
      config: the config of this run.
      abstract_state: the `train.TrainState` of `config` (shapes only; `Trainer.abstract_state`).
      write: a training run (record, and record a resumed config); False: an evaluation,
        which only reads.

    Raises:
      RunMismatchError: another method, or state paths missing, extra or of other shapes.
    """
    workdir = pathlib.Path(workdir)
    layout = state_layout(abstract_state)
    steps = checkpoint_steps(workdir)
    info_path = workdir / INFO_FILE
    if not info_path.is_file() or not (workdir / CONFIG_FILE).is_file():
        if not write:
            if steps:
                logging.info("%s records no config (made before vosjax recorded it)", workdir)
            return
        if steps:
            logging.warning(
                "%s holds checkpoints (steps %s) but no record of the config it was made with "
                "(made before vosjax recorded it): recording this run's config, which cannot be "
                "checked against the checkpoints",
                workdir,
                steps,
            )
        write_record(workdir, config, layout)
        return
    if not steps and write:
        logging.info("%s holds no checkpoint: recording this run's config", workdir)
        write_record(workdir, config, layout)
        return
    info = json.loads(info_path.read_text())
    recorded_path, recorded = latest_config(workdir)
    fields = changed_fields(recorded, config_as_json(config))
    unsafe = {k: v for k, v in fields.items() if not is_safe(k)}
    field_lines = [f"config.{k}: {_short(a)} -> {_short(b)}" for k, (a, b) in unsafe.items()]
    shapes = shape_differences(info, layout)
    method, recorded_method = config.get("method"), info.get("method")
    doing = "resume" if write else "evaluate"
    if shapes or method != recorded_method:
        lines = []
        if method != recorded_method:
            lines.append(f"method: {recorded_method!r} -> {method!r}")
        lines += _capped(field_lines) + _capped(shapes)
        raise RunMismatchError(
            f"{workdir} holds a run of another configuration (recorded in {recorded_path.name} "
            f"and {INFO_FILE}); this config cannot {doing} it (recorded -> this config):\n  "
            + "\n  ".join(lines)
            + "\nResume with the recorded config (steps, periods, logging, data paths and "
            "device settings may change: vosjax.run_record.SAFE_ON_RESUME), or use another "
            "--workdir for this config."
        )
    warning_key = (str(workdir.absolute()), recorded_path.name, tuple(field_lines))
    if not unsafe or warning_key in _warned:  # checked twice in one process: warn once
        return
    _warned.add(warning_key)
    logging.warning(
        "%s: this run's config differs from %s in fields that keep every state shape; "
        "%sing with:\n  %s",
        workdir,
        recorded_path.name,
        doing.removesuffix("e"),
        "\n  ".join(field_lines),
    )
    if write and jax.process_index() == 0:
        resumed = workdir / f"config_resumed_step_{steps[-1]}.json"
        _write_json(resumed, config_as_json(config))
        logging.warning("Recorded this run's config as %s", resumed)
