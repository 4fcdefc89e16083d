"""A run's weights as .npz files, to move them between machines that share no disk.

A GPU machine reached only by copying files, too few of them to hold the training and the
evaluation frames at once, trains; its weights come back as .npz shards (of at most 15 MiB) and
are evaluated on another machine:

  # There: the weights (params and model state, no optimiser state) of a saved step, in
  # shards of at most 15 MiB named NAME_0.npz, NAME_1.npz, ... (bf16 by default, to fit).
  PYTHONPATH=. python experiments/state_npz.py --action=export --workdir=W --step=S \
      --out=OUT --name=NAME
  # Here: a checkpoint of step S in W2 from those shards, for `vosjax.main --mode=eval` with
  # the run's config flags (the optimiser state is fresh).
  PYTHONPATH=. python experiments/state_npz.py --action=import --config=CONFIG [flags] \
      --npz=OUT/NAME --workdir=W2 --step=S
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import numpy as np
from absl import app, flags

from experiments import npz_shards
from vosjax import checkpointing, train
from vosjax import main as vosjax_main

_ACTION = flags.DEFINE_enum("action", None, ["export", "import"], "Which way.")
# vosjax.main's flags: --config (the run's config, for import), --workdir (the run's, or the new
# one) and --step (the checkpoint's step; default: the latest, or the shards' step).
_OUT = flags.DEFINE_string("out", None, "Folder of the shards (export).")
_NAME = flags.DEFINE_string("name", "state", "Shard name prefix (export).")
_NPZ = flags.DEFINE_string("npz", None, "OUT/NAME of the shards (import).")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"], "Stored precision.")
GROUPS = ("params", "model_state")


def export(workdir: str, step: int | None, out: pathlib.Path, name: str, dtype: str) -> int:
    """Writes the weights of `workdir`'s checkpoint `step` as shards; returns the step."""
    with checkpointing.Checkpointer(
        pathlib.Path(workdir) / "checkpoints", handle_sigterm=False
    ) as checkpointer:
        raw, step = checkpointer.restore_raw(step)
    flat = {
        f"{group}/{path}": value
        for group in GROUPS
        for path, value in train.flat_by_path(raw[group]).items()
    }
    npz_shards.write_shards(flat, out, name, step, dtype)
    return step


def load(prefix: str) -> tuple[dict[str, dict[str, np.ndarray]], int]:
    """The shards `prefix`_*.npz as {'params': {path: array}, 'model_state': {...}}, and step."""
    flat, step = npz_shards.read_shards(prefix)
    raw: dict[str, dict[str, np.ndarray]] = {group: {} for group in GROUPS}
    for key, value in flat.items():
        group, path = key.split("/", 1)
        raw[group][path] = value
    return raw, step


def import_state(config, prefix: str, workdir: str, step: int | None) -> int:
    """Saves a checkpoint in `workdir` from the shards (of `step`, if given); returns its step."""
    raw, saved_step = load(prefix)
    if step is not None and step != saved_step:
        raise ValueError(f"--step={step}: the shards {prefix}_*.npz hold step {saved_step}")
    trainer = train.Trainer(config, vosjax_main.build_method(config))
    state = train.state_with_weights(trainer, trainer.init_state(), raw, "", prefix)
    with checkpointing.Checkpointer(
        pathlib.Path(workdir) / "checkpoints", handle_sigterm=False
    ) as checkpointer:
        checkpointer.save(saved_step, state)
    return saved_step


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _ACTION.value == "export":
        out, workdir = pathlib.Path(_OUT.value), flags.FLAGS.workdir
        step = export(workdir, flags.FLAGS.step, out, _NAME.value, _DTYPE.value)
        print(f"exported step {step} of {workdir} to {out}/{_NAME.value}_*.npz")
    else:
        step = import_state(flags.FLAGS.config, _NPZ.value, flags.FLAGS.workdir, flags.FLAGS.step)
        print(f"checkpoint of step {step} in {flags.FLAGS.workdir}/checkpoints")


if __name__ == "__main__":
    flags.mark_flags_as_required(["action", "workdir"])
    app.run(main)
