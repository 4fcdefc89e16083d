"""Speed of SHLS: the train step, inference at 480p, and the superpixels it needs.

  PYTHONPATH=. python experiments/bench_shls.py [--batch=8 --size=256 --width=64 --steps=3 \
      --frames=12 --sequence=blackswan --superpixels=isec]

Prints a markdown table:
- the jitted train step (configs/shls/msra10k.py: pseudo-sequences of 3 frames, SLIC
  superpixels, NT-Xent + memory clusterer + segmentation net) on pseudo-sequences made from
  synthetic stills: compile time, s/step, sequences/s, frames/s, XLA GFLOP/step, peak memory
  and, on a GPU, an MFU estimate;
- the input pipeline: one pseudo-sequence with its SLIC superpixels, s/example on one core;
- inference: the memory-clustering segmenter over the first `--frames` frames of a DAVIS2016
  480p val sequence (random weights: speed does not depend on them), frames/s after the first
  two (compiling) frames, superpixels included, and the superpixels alone.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Sequence

import jax
import numpy as np
from absl import app, flags
from flax import nnx

from configs.shls import msra10k
from experiments import bench_common
from vosjax import sharding, train
from vosjax.data import davis
from vosjax.methods.shls import method

_BATCH = flags.DEFINE_integer("batch", 8, "Global batch size (pseudo-sequences).")
_SIZE = flags.DEFINE_integer("size", 256, "Pseudo-sequence frame side.")
_WIDTH = flags.DEFINE_integer("width", 64, "Backbone base width.")
_STEPS = flags.DEFINE_integer("steps", 3, "Timed train steps after the first (compiling) one.")
_FRAMES = flags.DEFINE_integer("frames", 12, "Frames of the inference sequence (2 warm up).")
_SEQUENCE = flags.DEFINE_string("sequence", "blackswan", "DAVIS2016 val sequence.")
_SUPERPIXELS = flags.DEFINE_enum("superpixels", "isec", ["isec", "slic"], "At inference.")
_DAVIS = flags.DEFINE_string(
    "davis", str(pathlib.Path(__file__).resolve().parents[2] / "shared/data/DAVIS2016"), ""
)


def _config():
    config = msra10k.get_config()
    config.batch_size = _BATCH.value
    config.data.size = _SIZE.value
    config.data.num_segments = 300 * _SIZE.value**2 // 65536
    config.model.width = _WIDTH.value
    config.eval.superpixels = _SUPERPIXELS.value
    return config


def bench_train_step(config) -> tuple[dict[str, float], float]:
    shls = method.SHLS(config)
    loader = shls.make_train_loader()
    start = time.perf_counter()
    examples = [loader(i, np.random.default_rng(i)) for i in range(config.batch_size)]
    load_s = (time.perf_counter() - start) / config.batch_size
    batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
    trainer = train.Trainer(config, shls)
    batch = sharding.shard_batch(batch, trainer.mesh)
    return bench_common.time_train_step(trainer, batch, _STEPS.value), load_s


def bench_inference(config) -> tuple[float, float, tuple[int, int]]:
    shls = method.SHLS(config)
    segmenter = shls.make_segmenter(shls.build_model(config, nnx.Rngs(0)))
    [video] = davis.load_davis(_DAVIS.value, "2016/val", "480p", [_SEQUENCE.value])
    frames = min(_FRAMES.value, len(video))
    fps = bench_common.segment_fps(segmenter, video, frames)
    start = time.perf_counter()
    for t in range(frames):
        segmenter.superpixel_fn(video.read_frame(t))
    spx_fps = frames / (time.perf_counter() - start)
    return fps, spx_fps, video.image_size


def main(argv: Sequence[str]) -> None:
    del argv
    config = _config()
    step, load_s = bench_train_step(config)
    mfu = bench_common.mfu(step["flops"], step["step_s"])
    fps, spx_fps, size = bench_inference(config)
    b, t = config.batch_size, config.data.seq_len
    print(f"\nSHLS width {config.model.width}, {bench_common.machine()}, jax {jax.__version__}\n")
    print(
        "| train: sequences x frames, side | compile s | s/step | sequences/s | frames/s "
        "| GFLOP/step | MFU | peak MB | input s/sequence (1 core) |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    print(
        f"| {b} x {t}, {config.data.size} | {step['compile_s']:.1f} | {step['step_s']:.3f} | "
        f"{b / step['step_s']:.2f} | {b * t / step['step_s']:.1f} | "
        f"{step['flops'] / 1e9:.0f} | {mfu} | {step['peak_mb']:.0f} | {load_s:.3f} |"
    )
    print(f"\n| inference ({_SEQUENCE.value}, {size[0]}x{size[1]}) | frames/s |")
    print("|---|---|")
    print(f"| {_SUPERPIXELS.value} + encoder + memory clusterer + decoder | {fps:.2f} |")
    print(f"| {_SUPERPIXELS.value} superpixels alone | {spx_fps:.2f} |")


if __name__ == "__main__":
    app.run(main)
