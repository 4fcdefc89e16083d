"""First-batch latency and batches/s of the INO training pipeline under grain's read options.

  PYTHONPATH=. python experiments/bench_pipeline.py --read_threads=2 --prefetch_batches=4 \
      --workers=0 --batches=30

Batches of `--batch` clips of configs/ino/vits8_davis2016.py (the paper's crops: one 224 global
and eight 64 local crops per frame, 4 frames) from the DAVIS2016 240p train frames, built by the
pipeline of `vosjax.data.pipeline`; `--read_threads=0` keeps grain's own defaults (16 threads,
500 elements ahead). Peak RSS is this process's only (workers are processes of their own).
"""

from __future__ import annotations

import resource
import time
from collections.abc import Sequence

from absl import app, flags

from configs.ino import vits8_davis2016
from vosjax import main as vosjax_main
from vosjax.data import pipeline
from vosjax.methods.ino import method

_DAVIS = flags.DEFINE_string("davis", "../shared/data/DAVIS2016", "DAVIS2016 root.")
_BATCH = flags.DEFINE_integer("batch", 16, "Clips per batch.")
_THREADS = flags.DEFINE_integer("read_threads", 2, "Read threads (0: grain's default).")
_PREFETCH = flags.DEFINE_integer("prefetch_batches", 4, "Batches built ahead.")
_WORKERS = flags.DEFINE_integer("workers", 0, "grain worker processes.")
_BATCHES = flags.DEFINE_integer("batches", 30, "Timed batches after the first.")


def main(argv: Sequence[str]) -> None:
    del argv
    config = vits8_davis2016.get_config()
    config.data.path, config.data.synthetic_mix = _DAVIS.value, 0.0
    ino = method.INO(config)
    source, sampler = vosjax_main.training_source(config), vosjax_main.clip_sampler(config)
    options = {"read_threads": _THREADS.value, "prefetch_batches": _PREFETCH.value}
    if not _THREADS.value:  # grain's defaults
        options = {"read_threads": 16, "prefetch_batches": 500}
    start = time.perf_counter()
    iterator = pipeline.make_train_iterator(
        source,
        sampler=sampler,
        transform=ino.make_transform(),
        global_batch_size=_BATCH.value,
        seed=0,
        shard_index=0,
        shard_count=1,
        num_workers=_WORKERS.value,
        **options,
    )
    next(iterator)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(_BATCHES.value):
        next(iterator)
    per_batch = (time.perf_counter() - start) / _BATCHES.value
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(
        f"| {options['read_threads']}, {options['prefetch_batches']} | {_WORKERS.value} | "
        f"{first:.1f} | {per_batch:.2f} | {rss:.2f} GB |"
    )


if __name__ == "__main__":
    app.run(main)
