"""Speed of INO: the train step (ViT-S/8, the paper's crops) and block-7 propagation at 480p.

  PYTHONPATH=. python experiments/bench_ino.py [--batch=32 --global_size=224 --local_size=64 \
      --num_local=8 --steps=3 --frames=20 --sequence=blackswan --backbone=vits8]

Prints a markdown table:
- the jitted train step of g2g + l2g + MIM + affinity (configs/ino/vits8_kinetics.py: clips of
  4 frames, 1 global and `num_local` local crops per frame, bf16) on random crops: compile time,
  s/step, clips/s, images/s (global + local crops through the student), XLA GFLOP/step, peak
  memory and, on a GPU, an MFU estimate (XLA's FLOP count over the dense bf16 peak);
- inference: block-7 student features (short side 480) and the `ino` propagation preset over
  the first `--frames` frames of a DAVIS2016 480p val sequence, frames/s after the first two
  (compiling) frames. The weights are random: speed does not depend on them.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence

import jax
import numpy as np
from absl import app, flags
from flax import nnx

from configs.ino import vits8_kinetics
from experiments import bench_common
from vosjax import sharding, train
from vosjax.data import davis
from vosjax.methods.ino import method

_BATCH = flags.DEFINE_integer("batch", 32, "Global batch size (clips of 4 frames).")
_GLOBAL = flags.DEFINE_integer("global_size", 224, "Global crop side.")
_LOCAL = flags.DEFINE_integer("local_size", 64, "Local crop side.")
_NUM_LOCAL = flags.DEFINE_integer("num_local", 8, "Local crops per frame.")
_BACKBONE = flags.DEFINE_enum("backbone", "vits8", ["vits8", "vits16", "vitb8"], "The ViT.")
_FLOPS_ONLY = flags.DEFINE_bool(
    "flops_only", False, "Print the train step's FLOP count (lowered, not run) and stop."
)
_STEPS = flags.DEFINE_integer("steps", 3, "Timed train steps after the first (compiling) one.")
_FRAMES = flags.DEFINE_integer("frames", 20, "Frames of the inference sequence (2 warm up).")
_SEQUENCE = flags.DEFINE_string("sequence", "blackswan", "DAVIS2016 val sequence.")
_DAVIS = flags.DEFINE_string(
    "davis", str(pathlib.Path(__file__).resolve().parents[2] / "shared/data/DAVIS2016"), ""
)


def bench_train_step(config) -> dict[str, float]:
    trainer = train.Trainer(config, method.INO(config))
    rng = np.random.default_rng(0)
    b, t = config.batch_size, config.data.clip_len
    g, s, m = config.data.global_size, config.data.local_size, config.data.num_local
    batch = {
        "global": rng.integers(0, 256, (b, t, g, g, 3), dtype=np.uint8),
        "local": rng.integers(0, 256, (b, t, m, s, s, 3), dtype=np.uint8),
        "frame_indices": np.tile(np.arange(t, dtype=np.int32), (b, 1)),
    }
    batch = sharding.shard_batch(batch, trainer.mesh)
    if _FLOPS_ONLY.value:
        return {"flops": bench_common.lowered_flops(trainer, batch)}
    return bench_common.time_train_step(trainer, batch, _STEPS.value)


def bench_inference(config) -> tuple[float, tuple[int, int]]:
    """frames/s of block-7 features + ino propagation over frames 2.. (0 and 1 compile)."""
    ino = method.INO(config)
    model = ino.build_model(config, nnx.Rngs(0))
    segmenter = ino.make_segmenter(model)
    [video] = davis.load_davis(_DAVIS.value, "2016/val", "480p", [_SEQUENCE.value])
    frames = min(_FRAMES.value, len(video))
    fps = bench_common.segment_fps(segmenter, video, frames)
    size = method.resized_size(video.image_size, config.eval.short_side, config.model.patch_size)
    return fps, size


def main(argv: Sequence[str]) -> None:
    del argv
    config = vits8_kinetics.get_config(_BACKBONE.value)
    config.batch_size = _BATCH.value
    config.data.global_size = _GLOBAL.value
    config.data.local_size = _LOCAL.value
    config.data.num_local = _NUM_LOCAL.value
    step = bench_train_step(config)
    if _FLOPS_ONLY.value:
        print(f"train step: {step['flops'] / 1e9:.0f} GFLOP (lowered)")
        return
    mfu = bench_common.mfu(step["flops"], step["step_s"])
    fps, size = bench_inference(config)
    b, t = config.batch_size, config.data.clip_len
    images = b * t * (1 + config.data.num_local)
    print(f"\nINO {_BACKBONE.value}, {bench_common.machine()}, jax {jax.__version__}\n")
    print(
        "| train: clips x frames, global, local x M | compile s | s/step | clips/s | images/s "
        "| GFLOP/step | MFU | peak MB |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {b} x {t}, {config.data.global_size}, {config.data.local_size} x "
        f"{config.data.num_local} | {step['compile_s']:.1f} | {step['step_s']:.3f} | "
        f"{b / step['step_s']:.2f} | {images / step['step_s']:.1f} | "
        f"{step['flops'] / 1e9:.0f} | {mfu} | {step['peak_mb']:.0f} |"
    )
    print(f"\n| inference ({_SEQUENCE.value}, {size[0]}x{size[1]}) | frames/s |")
    print("|---|---|")
    print(f"| block {config.eval.block} features + ino propagation | {fps:.2f} |")


if __name__ == "__main__":
    app.run(main)
