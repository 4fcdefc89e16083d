"""A DAVIS2016 root small enough to travel to a GPU machine with the checkout (64 MiB in all).

Holds what a train-and-evaluate run needs on the machine, so that it evaluates there instead
of here: the image sets, the 480p validation frames and masks as they are (33 + 1 MiB: the
official evaluation's inputs), and every `--train_every`-th 240p training frame (46 MiB
whole, 11.7 MiB at every 4th). Frames keep their names; the loaders sort them, so the kept
frames read as a video at 1 / train_every of the frame rate: a clip sampler's `frame_gap` of
g / train_every spans what g spanned in the whole video (the INO config's 8 becomes 2).

  PYTHONPATH=. python experiments/davis_carry.py --out=.davis/DAVIS2016_every4 --train_every=4
"""

from __future__ import annotations

import pathlib
import shutil
from collections.abc import Sequence

from absl import app, flags

from vosjax.data import davis

_SRC = flags.DEFINE_string("src", "../shared/data/DAVIS2016", "DAVIS2016 root to read.")
_OUT = flags.DEFINE_string("out", None, "The root to write (replaced if it exists).")
_EVERY = flags.DEFINE_integer("train_every", 4, "Keep every n-th training frame (1: all).")
_VAL = flags.DEFINE_bool("val", True, "Include the 480p validation frames and masks.")
_BUDGET = flags.DEFINE_float("budget_mib", 50.0, "Fail if the root exceeds this many MiB.")


def build(src: pathlib.Path, out: pathlib.Path, train_every: int, val: bool) -> int:
    """Writes the root; returns its size in bytes."""
    if train_every < 1:
        raise ValueError(f"--train_every={train_every}: expected >= 1")
    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(src / "ImageSets", out / "ImageSets")
    for name in davis.read_imageset(src, "2016/train"):
        frames = sorted((src / "JPEGImages" / "240p" / name).glob("*.jpg"))
        if not frames:
            raise FileNotFoundError(f"{src / 'JPEGImages' / '240p' / name}: no .jpg frame")
        dest = out / "JPEGImages" / "240p" / name
        dest.mkdir(parents=True)
        for frame in frames[::train_every]:
            shutil.copy2(frame, dest / frame.name)
    if val:
        for name in davis.read_imageset(src, "2016/val"):
            for kind in ("JPEGImages", "Annotations"):
                shutil.copytree(src / kind / "480p" / name, out / kind / "480p" / name)
    return sum(f.stat().st_size for f in out.rglob("*") if f.is_file())


def main(argv: Sequence[str]) -> None:
    del argv
    out = pathlib.Path(_OUT.value)
    size = build(pathlib.Path(_SRC.value), out, _EVERY.value, _VAL.value)
    mib = size / 2**20
    print(f"{out}: {mib:.1f} MiB")
    if mib > _BUDGET.value:
        raise SystemExit(f"{out}: {mib:.1f} MiB is over --budget_mib={_BUDGET.value}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["out"])
    app.run(main)
