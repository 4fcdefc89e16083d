"""Speed and exactness of the DAVIS evaluation on the golden prediction sets.

  python experiments/bench_eval_masks.py [--num_workers=0] [--repeats=1]

For every set of ../shared/golden, evaluates it like `python -m vosjax.eval_masks` (CSVs and
results.json go to a temporary folder: the shared data is read-only), and prints one markdown
row: frames (all ground-truth frames of the sequences, as the official toolkit's progress counts
them), objects, seconds (best of `--repeats`), frames/s, the largest difference from the
golden.json numbers, and the machine. Reference: the official toolkit took 26 s for osvos17-dev
(623 frames, 31 objects) on the 2-core development machine, about 24 frames/s.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import tempfile
import time
from collections.abc import Sequence

from absl import app, flags

from vosjax.data import davis
from vosjax.metrics import davis_protocol, report

SHARED = pathlib.Path(__file__).resolve().parents[1].parent / "shared"
COLLECTIONS = {
    # collection -> (ground-truth root, imageset)
    "davis2016-dev": (SHARED / "data" / "DAVIS2016", "2016/val"),
    "osvos17-dev": (SHARED / "golden" / "osvos17-dev", "2017/val"),
}
SETS = ("perfect", "mild", "heavy", "mixed")

_NUM_WORKERS = flags.DEFINE_integer("num_workers", 0, "0 = one per CPU, 1 = in-process.")
_REPEATS = flags.DEFINE_integer("repeats", 1, "Timed runs per set; the best is reported.")
_PER_SEQUENCE = flags.DEFINE_string(
    "per_sequence",
    "heavy",
    "Also time each sequence of this set alone, in one process: speed against sequence length "
    "('' to skip).",
)


def machine() -> str:
    """CPU model and the number of CPUs this process may use."""
    model = platform.processor() or platform.machine()
    cpuinfo = pathlib.Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"{model}, {cpus} CPUs"


def largest_difference(results: dict, golden: dict) -> float:
    """Largest |results - golden| over the global and per-object numbers (inf if names differ)."""
    if list(results["per_object"]) != list(golden["per_object"]):
        return float("inf")
    diffs = [abs(results[k] - golden[k]) for k in report.GLOBAL_COLUMNS]
    for name, scores in golden["per_object"].items():
        diffs += [abs(results["per_object"][name][k] - v) for k, v in scores.items()]
    return max(diffs)


def bench_set(root: pathlib.Path, imageset: str, predictions: pathlib.Path) -> str:
    """One markdown row for a prediction set."""
    names = davis.read_imageset(root, imageset)
    frames = sum(len(davis.annotation_files(root, name)) for name in names)
    num_workers = _NUM_WORKERS.value or None
    best = float("inf")
    for _ in range(_REPEATS.value):
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            results = davis_protocol.evaluate_folder(
                root, predictions, imageset, num_workers=num_workers
            )
            report.write_all(results, out)
            best = min(best, time.perf_counter() - start)
    golden = json.loads((predictions / "golden.json").read_text())
    difference = largest_difference(results, golden)
    set_name = f"{predictions.parent.name}/{predictions.name}"
    return (
        f"| {set_name} | {frames} | {len(results['per_object'])} | {best:.2f} | "
        f"{frames / best:.0f} | {difference:.1e} | {machine()} |"
    )


def bench_sequences(root: pathlib.Path, imageset: str, predictions: pathlib.Path) -> list[str]:
    """One markdown row per sequence, scored alone in this process (no worker pool)."""
    rows = []
    for name in davis.read_imageset(root, imageset):
        frames = len(davis.annotation_files(root, name))
        best = float("inf")
        for _ in range(_REPEATS.value):
            start = time.perf_counter()
            scores = davis_protocol.score_folder(
                root, predictions, imageset, sequences=[name], num_workers=1
            )
            best = min(best, time.perf_counter() - start)
        rows.append(
            f"| {predictions.parent.name}/{name} | {frames} | {len(scores)} | "
            f"{best:.3f} | {frames / best:.0f} |"
        )
    return rows


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    workers = _NUM_WORKERS.value or "auto"
    print(f"eval_masks benchmark (num_workers={workers}, best of {_REPEATS.value})\n")
    print("| set | frames | objects | seconds | frames/s | max abs diff vs golden | machine |")
    print("|---|---|---|---|---|---|---|")
    for collection, (root, imageset) in COLLECTIONS.items():
        for name in SETS:
            print(bench_set(root, imageset, SHARED / "golden" / collection / name), flush=True)
    if _PER_SEQUENCE.value:
        print(f"\nOne sequence at a time, one process, set {_PER_SEQUENCE.value!r} ({machine()})\n")
        print("| sequence | frames | objects | seconds | frames/s |")
        print("|---|---|---|---|---|")
        for collection, (root, imageset) in COLLECTIONS.items():
            predictions = SHARED / "golden" / collection / _PER_SEQUENCE.value
            for row in bench_sequences(root, imageset, predictions):
                print(row, flush=True)


if __name__ == "__main__":
    app.run(main)
