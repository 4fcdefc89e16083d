"""Training speed of Mask-VOS correspondence learning (corr_r18) and of its data pipeline.

  PYTHONPATH=. python experiments/bench_train.py [--batch=16 --crop=256 --clip=5 --steps=5]

Prints a markdown table: the jitted train step alone (compile time, steps/s, clips/s, peak RSS or
device memory) on random clips, and the grain pipeline alone (clips/s) on the DAVIS2016 240p train
sequences. On a GPU it also estimates MFU from XLA's FLOP count of the compiled step.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Sequence

import jax
import numpy as np
from absl import app, flags

from configs.maskvos import corr_r18
from experiments import bench_common
from vosjax import sharding, train
from vosjax.data import clip_sampling, clip_sources, pipeline
from vosjax.methods.maskvos import correspondence

_BATCH = flags.DEFINE_integer("batch", 16, "Global batch size (clips).")
_CROP = flags.DEFINE_integer("crop", 256, "Crop size.")
_CLIP = flags.DEFINE_integer("clip", 5, "Frames per clip.")
_STEPS = flags.DEFINE_integer("steps", 5, "Timed steps after the first (compiling) one.")
_DATA_BATCHES = flags.DEFINE_integer("data_batches", 10, "Timed batches of the pipeline.")
_NUM_WORKERS = flags.DEFINE_integer("num_workers", 2, "grain worker processes.")
_DAVIS = flags.DEFINE_string(
    "davis", str(pathlib.Path(__file__).resolve().parents[2] / "shared/data/DAVIS2016"), ""
)


def config_for_bench():
    config = corr_r18.get_config()
    config.batch_size = _BATCH.value
    config.data.crop = config.data.min_short = _CROP.value
    config.data.clip_len = _CLIP.value
    return config


def bench_step(config) -> dict[str, float]:
    method = correspondence.Correspondence(config)
    trainer = train.Trainer(config, method)
    rng = np.random.default_rng(0)
    b, t, s = config.batch_size, config.data.clip_len, config.data.crop
    batch = {
        "video": rng.integers(0, 256, (b, t, s, s, 3), dtype=np.uint8),
        "view": rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8),
        "affine": np.tile(np.array([[1, 0, 0], [0, 1, 0]], np.float32), (b, 1, 1)),
        "frame_indices": np.tile(np.arange(t, dtype=np.int32) * config.data.frame_gap, (b, 1)),
    }
    batch = sharding.shard_batch(batch, trainer.mesh)
    return bench_common.time_train_step(trainer, batch, _STEPS.value)


def bench_pipeline(config) -> float:
    source = clip_sources.open_source(_DAVIS.value, imageset="2016/train", resolution="240p")
    sampler = clip_sampling.ClipSampler(config.data.clip_len, config.data.frame_gap)
    method = correspondence.Correspondence(config)
    iterator = pipeline.make_train_iterator(
        source,
        sampler=sampler,
        transform=method.make_transform(),
        global_batch_size=config.batch_size,
        seed=0,
        num_workers=_NUM_WORKERS.value,
    )
    next(iterator)  # worker start-up is not throughput.
    start = time.perf_counter()
    for _ in range(_DATA_BATCHES.value):
        next(iterator)
    return _DATA_BATCHES.value * config.batch_size / (time.perf_counter() - start)


def main(argv: Sequence[str]) -> None:
    del argv
    config = config_for_bench()
    step = bench_step(config)
    clips_per_s = config.batch_size / step["step_s"]
    mfu = bench_common.mfu(step["flops"], step["step_s"])
    data_clips = bench_pipeline(config)
    print(
        f"\ncorr_r18, batch {config.batch_size}, {config.data.crop}x{config.data.crop}, "
        f"T={config.data.clip_len}, {bench_common.machine()}, jax {jax.__version__}\n"
    )
    print(
        "| compile s | s/step | steps/s | clips/s | GFLOP/step (XLA) | MFU | peak MB "
        "| pipeline clips/s |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print(
        f"| {step['compile_s']:.1f} | {step['step_s']:.2f} | {1 / step['step_s']:.3f} | "
        f"{clips_per_s:.2f} | {step['flops'] / 1e9:.0f} | {mfu} | {step['peak_mb']:.0f} | "
        f"{data_clips:.1f} ({_NUM_WORKERS.value} workers) |"
    )


if __name__ == "__main__":
    app.run(main)
