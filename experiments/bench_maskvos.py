"""Speed of the full Mask-VOS method: the train step (r18) and mask-decoding inference at 480p.

  PYTHONPATH=. python experiments/bench_maskvos.py [--batch=12 --crop=256 --steps=3 \
      --frames=20 --sequence=blackswan]

Prints a markdown table:
- the jitted train step of L_seg + L_short + L_long (configs/maskvos/r18.py) on random clips
  with two pseudo-mask objects: compile time, s/step, clips/s, XLA GFLOP/step, peak memory,
  and on a GPU an MFU estimate;
- inference by mask decoding (`MaskDecodingSegmenter`, the paper's settings: short side 480,
  top-k 10, radius 12, 5 recent frames, 3 refinement rounds) on the first `--frames` frames of
  a DAVIS2016 480p val sequence, frames/s after the first two (compiling) frames, for 3 and 0
  refinement rounds. The weights are random: speed does not depend on them.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Sequence

import jax
import numpy as np
from absl import app, flags
from flax import nnx

from configs.maskvos import r18
from experiments import bench_common
from vosjax import sharding, train
from vosjax.data import davis
from vosjax.methods.maskvos import inference, method

_BATCH = flags.DEFINE_integer("batch", 12, "Global batch size (clips).")
_CROP = flags.DEFINE_integer("crop", 256, "Crop size.")
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
    trainer = train.Trainer(config, method.MaskVOS(config))
    rng = np.random.default_rng(0)
    b, t, s = config.batch_size, config.data.clip_len, config.data.crop
    labels = np.zeros((b, t, s // 8, s // 8), np.uint8)
    labels[:, :, : s // 16] = 1
    labels[:, :, s // 16 :, : s // 16] = 2
    batch = {
        "video": rng.integers(0, 256, (b, t, s, s, 3), dtype=np.uint8),
        "view": rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8),
        "affine": np.tile(np.array([[1, 0, 0], [0, 1, 0]], np.float32), (b, 1, 1)),
        "labels": labels,
        "num_objects": np.full((b,), 2, np.int32),
        "frame_indices": np.tile(np.arange(t, dtype=np.int32) * config.data.frame_gap, (b, 1)),
    }
    batch = sharding.shard_batch(batch, trainer.mesh)
    if _FLOPS_ONLY.value:
        return {"flops": bench_common.lowered_flops(trainer, batch)}
    return bench_common.time_train_step(trainer, batch, _STEPS.value)


def bench_inference(config, refine_rounds: int) -> tuple[float, tuple[int, int]]:
    """frames/s of mask decoding over the sequence's frames 2.. (0 and 1 compile)."""
    full = method.MaskVOS(config)
    model = full.build_model(config, nnx.Rngs(0))
    decoding = dict(config.eval.decoding) | {"refine_rounds": refine_rounds}
    segmenter = inference.MaskDecodingSegmenter.from_config(model.encoder, model.head, decoding)
    [video] = davis.load_davis(_DAVIS.value, "2016/val", "480p", [_SEQUENCE.value])
    frames = min(_FRAMES.value, len(video))
    results = segmenter.run(video)
    for _ in range(2):
        jax.block_until_ready(next(results).probs)
    start = time.perf_counter()
    for _ in range(frames - 2):
        next(results)  # FrameResult.mask is already on the host: the frame is done
    fps = (frames - 2) / (time.perf_counter() - start)
    return fps, segmenter.resized_size(video.image_size)


def main(argv: Sequence[str]) -> None:
    del argv
    config = r18.get_config()
    config.batch_size = _BATCH.value
    config.data.crop = config.data.min_short = _CROP.value
    step = bench_train_step(config)
    if _FLOPS_ONLY.value:
        print(f"train step: {step['flops'] / 1e9:.0f} GFLOP (lowered)")
        return
    mfu = bench_common.mfu(step["flops"], step["step_s"])
    inference_fps = {rounds: bench_inference(config, rounds) for rounds in (3, 0)}
    size = inference_fps[3][1]
    print(f"\nMask-VOS r18, {bench_common.machine()}, jax {jax.__version__}\n")
    print("| train: batch, crop, T | compile s | s/step | clips/s | GFLOP/step | MFU | peak MB |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| {config.batch_size}, {config.data.crop}, {config.data.clip_len} | "
        f"{step['compile_s']:.1f} | {step['step_s']:.3f} | "
        f"{config.batch_size / step['step_s']:.2f} | {step['flops'] / 1e9:.0f} | {mfu} | "
        f"{step['peak_mb']:.0f} |"
    )
    print(f"\n| inference ({_SEQUENCE.value}, {size[0]}x{size[1]}) | frames/s |")
    print("|---|---|")
    for rounds, (fps, _) in inference_fps.items():
        print(f"| mask decoding, {rounds} refinement rounds | {fps:.2f} |")


if __name__ == "__main__":
    app.run(main)
