"""Benchmark of label propagation: frames/s and peak memory per preset, feature size and grid.

    python experiments/bench_propagation.py                       # 480p, dino + crw, C 256, 384
    python experiments/bench_propagation.py --sizes=480p,720p,1080p --dims=384

Every configuration runs in a fresh subprocess, so that its peak memory is its own: on CPU the
peak resident set size (`getrusage(RUSAGE_SELF).ru_maxrss`), on a GPU the device's
`peak_bytes_in_use`. Features are random unit vectors at stride 8 (timing does not depend on
their values: every shape is fixed); a few distinct frames are cycled so that generating them
costs nothing. Time starts after `--warmup` frames (compilation happens on the first one).
Prints a markdown table; its last column, CPU seconds per wall second of the timed frames, says
how many cores the run actually had (other processes on the machine slow timings down).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time

SIZES = {"480p": (480, 854), "720p": (720, 1280), "1080p": (1080, 1920)}
STRIDE = 8


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _child(preset: str, dim: int, size: str, frames: int, warmup: int, classes: int) -> dict:
    """Runs one configuration in this process and returns its measurements."""
    import jax
    import numpy as np

    from vosjax.ops import affinity, propagation

    config = propagation.PRESETS[preset]
    height, width = SIZES[size]
    grid = (-(-height // STRIDE), -(-width // STRIDE))
    pool = [
        affinity.l2_normalize(jax.random.normal(jax.random.key(i), (*grid, dim))) for i in range(3)
    ]
    mask = np.zeros((height, width), np.uint8)
    for obj in range(1, classes):
        mask[obj * height // (classes + 1) :, obj * width // (classes + 2) :] = obj
    prop = propagation.VideoPropagator(config, num_classes=classes)
    labels0 = prop.labels_from_mask(mask, grid)
    jax.block_until_ready(pool)

    total = warmup + frames
    stamps, cpu_stamps = [], []
    masks_time = 0.0
    start = time.perf_counter()
    for probs in prop.run((pool[t % len(pool)] for t in range(total)), given={0: labels0}):
        jax.block_until_ready(probs)
        stamps.append(time.perf_counter())
        cpu_stamps.append(time.process_time())
        if len(stamps) > warmup:
            t0 = time.perf_counter()
            prop.to_mask(probs, (height, width))
            masks_time += time.perf_counter() - t0
    # Frame 0 is the given mask; frame 1 compiles the step.
    timed = stamps[-1] - stamps[warmup - 1] - masks_time
    device = jax.devices()[0]
    stats = device.memory_stats() or {}
    half = affinity.window_radius(config.radius, config.neighbourhood)
    block = config.block_size or affinity.choose_block(
        grid, half, config.num_recent, config.restrict_first_frame
    )
    block = affinity.plan_blocks(grid, block, half).block
    return {
        "preset": preset,
        "size": size,
        "grid": grid,
        "dim": dim,
        "classes": classes,
        "context": 1 + config.num_recent,
        "block": block,
        "fps": frames / timed,
        # CPU seconds per wall second over the timed frames: about the number of cores that
        # worked for this run (less than os.cpu_count() when other processes took some).
        "cores_used": (cpu_stamps[-1] - cpu_stamps[warmup - 1]) / (stamps[-1] - stamps[warmup - 1]),
        "fps_with_masks": frames / (timed + masks_time),
        "first_frames_s": stamps[warmup - 1] - start,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_device_mb": stats.get("peak_bytes_in_use", 0) / 2**20 or None,
        "platform": device.platform,
        "device_kind": device.device_kind,
    }


def _run_child(args: argparse.Namespace, preset: str, dim: int, size: str) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        f"--presets={preset}",
        f"--dims={dim}",
        f"--sizes={size}",
        f"--frames={args.frames}",
        f"--warmup={args.warmup}",
        f"--classes={args.classes}",
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{preset} C={dim} {size} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _table(rows: list[dict]) -> str:
    gpu = any(r["platform"] == "gpu" for r in rows)
    memory = "peak GPU MB" if gpu else "peak RSS MB"
    lines = [
        f"| preset | frame | grid | C | context | block | frames/s | s/frame "
        f"| frames/s with masks | {memory} | first 2 frames s | cores used |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        peak = r["peak_device_mb"] if gpu else r["peak_rss_mb"]
        h, w = SIZES[r["size"]]
        lines.append(
            f"| {r['preset']} | {w}x{h} | {r['grid'][0]}x{r['grid'][1]} | {r['dim']} "
            f"| {r['context']} | {r['block'][0]}x{r['block'][1]} | {r['fps']:.2f} "
            f"| {1 / r['fps']:.3f} | {r['fps_with_masks']:.2f} | {peak:.0f} "
            f"| {r['first_frames_s']:.1f} | {r['cores_used']:.1f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="dino,crw")
    parser.add_argument("--dims", default="256,384")
    parser.add_argument("--sizes", default="480p", help=f"comma-separated, of {list(SIZES)}")
    parser.add_argument("--frames", type=int, default=8, help="timed frames")
    parser.add_argument("--warmup", type=int, default=2, help="untimed frames (>= 2)")
    parser.add_argument("--classes", type=int, default=3, help="K, background included")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    presets = args.presets.split(",")
    dims = [int(d) for d in args.dims.split(",")]
    sizes = args.sizes.split(",")
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        parser.error(f"--sizes: unknown {unknown}; expected some of {list(SIZES)}")
    if args.warmup < 2:
        parser.error("--warmup: expected >= 2 (frame 0 is given, frame 1 compiles)")

    if args.child:
        result = _child(presets[0], dims[0], sizes[0], args.frames, args.warmup, args.classes)
        print(json.dumps(result))
        return

    rows = []
    for size in sizes:
        for preset in presets:
            for dim in dims:
                row = _run_child(args, preset, dim, size)
                print(f"{preset} {size} C={dim}: {row['fps']:.2f} frames/s", file=sys.stderr)
                rows.append(row)
    import jax  # after the children, so that this process holds no device

    device = jax.devices()[0]
    print(
        f"device: {device.platform} / {device.device_kind}; CPU: {_cpu_model()} "
        f"({os.cpu_count()} cores); jax {jax.__version__}; {args.frames} timed frames after "
        f"{args.warmup}, K={args.classes}\n"
    )
    print(_table(rows))


if __name__ == "__main__":
    main()
