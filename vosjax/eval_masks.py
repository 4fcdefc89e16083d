"""Scores a folder of predicted masks with the official DAVIS-2017 semi-supervised protocol.

  python -m vosjax.eval_masks --davis_root=ROOT --results=DIR \
      [--imageset=2017/val] [--sequences=a,b] [--resolution=480p] [--num_workers=N]

Ground truth: `ROOT/Annotations/<resolution>/<seq>/*.png` for the sequences of
`ROOT/ImageSets/<imageset>.txt`. Predictions: `DIR/<seq>/<frame>.png` with the ground truth's
file names, indexed PNGs of object ids ('P', or 'L' with small ids), read like the ground truth by
`image_io.read_mask`; only the frames that are scored (all but the first and last) are needed.
Writes `global_results-<split>.csv`, `per-sequence_results-<split>.csv` and `results.json` into
DIR and prints the table. It always recomputes: CSVs already in DIR are overwritten, never reused.
"""

from __future__ import annotations

import pathlib
import sys
import time
from collections.abc import Sequence

from absl import app, flags

from vosjax.data import image_io
from vosjax.metrics import davis_protocol, report

_DAVIS_ROOT = flags.DEFINE_string("davis_root", None, "DAVIS root (Annotations/, ImageSets/).")
_RESULTS = flags.DEFINE_string("results", None, "Folder of predictions <seq>/<frame>.png.")
_IMAGESET = flags.DEFINE_string("imageset", "2017/val", "Split '<year>/<split>' to evaluate.")
_SEQUENCES = flags.DEFINE_list("sequences", None, "Evaluate only these sequences of the split.")
_RESOLUTION = flags.DEFINE_string("resolution", "480p", "Annotation resolution folder.")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "Where the CSVs and results.json go; default: the --results folder."
)
_NUM_WORKERS = flags.DEFINE_integer(
    "num_workers", 0, "Worker processes; 0 = one per available CPU (at most 8), 1 = no pool."
)


def run(
    davis_root: image_io.PathLike,
    results_dir: image_io.PathLike,
    imageset: str = "2017/val",
    sequences: Sequence[str] | None = None,
    resolution: str = "480p",
    num_workers: int | None = None,
    output_dir: image_io.PathLike | None = None,
) -> tuple[dict, list[pathlib.Path]]:
    """Evaluates `results_dir` and writes the CSVs and results.json into `output_dir`.

    Args:
      davis_root: DAVIS root folder.
      results_dir: predictions `<results_dir>/<seq>/<frame>.png`; outputs are written here.
      imageset: '<year>/<split>'.
      sequences: a subset of the split, or None.
      resolution: annotation resolution folder.
      num_workers: worker processes (None = available CPUs, 1 = in-process).
      output_dir: where the outputs go (created); None = `results_dir`.

    Returns:
      (results in the golden.json schema, paths written).

    Raises:
      DataError: missing or malformed ground truth or predictions.
    """
    results = davis_protocol.evaluate_folder(
        davis_root, results_dir, imageset, sequences, resolution, num_workers
    )
    split = imageset.strip("/").split("/")[-1]
    output_dir = pathlib.Path(output_dir if output_dir is not None else results_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    return results, report.write_all(results, output_dir, split=split)


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    start = time.perf_counter()
    try:
        results, paths = run(
            _DAVIS_ROOT.value,
            _RESULTS.value,
            _IMAGESET.value,
            _SEQUENCES.value,
            _RESOLUTION.value,
            _NUM_WORKERS.value or None,
            _OUTPUT_DIR.value,
        )
    except image_io.DataError as e:
        print(f"eval_masks: {e}", file=sys.stderr)
        sys.exit(1)
    elapsed = time.perf_counter() - start
    print(report.format_table(results, title=f"{_IMAGESET.value} ({_RESULTS.value})"))
    print(f"\nEvaluated {len(results['per_object'])} objects in {elapsed:.1f} s; wrote")
    for path in paths:
        print(f"  {path}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["davis_root", "results"])
    app.run(main)
