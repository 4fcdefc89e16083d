"""Weight averaging of neighbouring checkpoints: their mean as one checkpoint of a new workdir.

  PYTHONPATH=. python experiments/average_checkpoints.py --workdir=W --steps=600,650,700 \
      --out_workdir=W2 [--out_step=S]
  python -m vosjax.main --config=<the run's config and flags> --workdir=W2 --mode=eval --step=S

Floating leaves (weights, BatchNorm statistics, optimiser moments) are averaged; S defaults to
the last of --steps. W's checkpoints are only read.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

from absl import app, flags

from vosjax import checkpointing

_WORKDIR = flags.DEFINE_string("workdir", None, "The run whose checkpoints are averaged.")
_STEPS = flags.DEFINE_list("steps", None, "Two or more saved steps of --workdir.")
_OUT_WORKDIR = flags.DEFINE_string("out_workdir", None, "Where the averaged checkpoint goes.")
_OUT_STEP = flags.DEFINE_integer("out_step", None, "Its step (default: the last of --steps).")
flags.mark_flags_as_required(["workdir", "steps", "out_workdir"])


def main(argv: Sequence[str]) -> None:
    del argv
    try:
        steps = [int(s) for s in _STEPS.value]
    except ValueError as error:
        raise app.UsageError(f"--steps={_STEPS.value}: expected integers ({error})") from None
    step = checkpointing.average_checkpoints(
        pathlib.Path(_WORKDIR.value) / "checkpoints",
        steps,
        pathlib.Path(_OUT_WORKDIR.value) / "checkpoints",
        _OUT_STEP.value,
    )
    print(f"mean of steps {sorted(set(steps))}: {_OUT_WORKDIR.value}/checkpoints/{step}")


if __name__ == "__main__":
    app.run(main)
