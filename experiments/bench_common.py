"""What every benchmark script prints about the machine it ran on."""

from __future__ import annotations

import pathlib
import platform
import resource
import time
from typing import Any

import jax


def machine() -> str:
    device = jax.devices()[0]
    if device.platform != "cpu":
        return f"{device.device_kind} x{jax.device_count()}"
    model = platform.processor() or platform.machine()
    for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return f"{model}, {len(jax.devices())} CPU device(s)"


# Dense bf16 peak of the accelerators we report on (FLOP/s).
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12}


def peak_mb() -> float:
    """Peak device memory (accelerators) or peak RSS of this process (CPU), MB."""
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use", 0) / 2**20 or (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )


def mfu(flops: float, step_s: float) -> str:
    """Model FLOPs utilisation of a step on the known accelerators; 'n/a (CPU)' otherwise."""
    kind = jax.devices()[0].device_kind
    peak = next((v for k, v in PEAK_FLOPS.items() if k in kind), None)
    return f"{flops / step_s / (peak * jax.device_count()):.1%}" if peak else "n/a (CPU)"


def lowered_flops(trainer: Any, batch: Any) -> float:
    """XLA's FLOP count of the lowered train step (the whole program, before the backend's
    rewrites; NaN where the backend gives none, e.g. GPUs with jax 0.11: count on a CPU)."""
    state = jax.eval_shape(trainer.init_state)
    cost = trainer.train_step.lower(state, batch, trainer.train_rng).cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float((cost or {}).get("flops", float("nan")))


def time_train_step(trainer: Any, batch: Any, steps: int) -> dict[str, float]:
    """Compiles `trainer.train_step` for `batch`, runs it once, then times `steps` steps.

    Returns:
      {'compile_s', 'step_s', 'flops', 'peak_mb'}. 'flops' is XLA's count of the lowered step
      (the whole program, before the backend's rewrites): the compiled GPU program hides its
      convolutions in cuDNN calls that XLA's count of it leaves out.
    """
    state = trainer.init_state()
    start = time.perf_counter()
    lowered = trainer.train_step.lower(state, batch, trainer.train_rng)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - start
    cost = lowered.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    flops = float((cost or {}).get("flops", float("nan")))
    state, _ = compiled(state, batch, trainer.train_rng)
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(steps):
        state, _ = compiled(state, batch, trainer.train_rng)
    jax.block_until_ready(state)
    step_s = (time.perf_counter() - start) / steps
    return {"compile_s": compile_s, "step_s": step_s, "flops": flops, "peak_mb": peak_mb()}


def segment_fps(segmenter: Any, video: Any, frames: int) -> float:
    """frames/s of `segmenter.segment(video)` over frames 2..frames-1 (frames 0 and 1 compile);
    each yielded mask is a numpy array at the sequence's size, so the frame is done."""
    masks = segmenter.segment(video)
    for _ in range(2):
        next(masks)
    start = time.perf_counter()
    for _ in range(frames - 2):
        next(masks)
    return (frames - 2) / (time.perf_counter() - start)
