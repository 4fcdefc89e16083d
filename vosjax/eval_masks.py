"""Scores a folder of predicted masks with the official DAVIS-2017 semi-supervised protocol.

  python -m vosjax.eval_masks --davis_root=ROOT --results=DIR \
      [--imageset=2017/val] [--sequences=a,b] [--resolution=480p] [--num_workers=N]

Ground truth: `ROOT/Annotations/<resolution>/<seq>/*.png` for the sequences of
`ROOT/ImageSets/<imageset>.txt`, one per frame of `ROOT/JPEGImages/<resolution>/<seq>` (a root
without frames needs annotations numbered without a gap); a missing one is an error. For a 2016
imageset the ground truth must be binary {0, 255}. Predictions: `DIR/<seq>/<frame>.png` with the
ground truth's file names, indexed PNGs of object ids ('P', or 'L' with small ids), read like the
ground truth by `image_io.read_mask`; only the frames that are scored (all but the first and
last) are needed. Prints the table, then writes `global_results-<split>.csv`,
`per-sequence_results-<split>.csv` and `results.json` into DIR (or --output_dir), whose
writability is checked before any scoring. It always recomputes: CSVs already there are
overwritten, never reused.
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


def output_folder(
    results_dir: image_io.PathLike, output_dir: image_io.PathLike | None = None
) -> pathlib.Path:
    """The folder the outputs go to, created and checked writable before any scoring.

    The check creates and removes a file there: permission bits do not stop root, a read-only
    mount or an immutable folder does.

    Args:
      results_dir: the predictions folder, the default output folder.
      output_dir: the --output_dir, created if needed, or None.

    Returns:
      The output folder.

    Raises:
      DataError: the results folder is missing, or the output folder cannot be created or
        written (the message names --output_dir).
    """
    results_dir = pathlib.Path(results_dir)
    if not results_dir.is_dir():
        raise image_io.DataError(f"{results_dir}: results folder not found")
    folder = results_dir if output_dir is None else pathlib.Path(output_dir)
    try:
        image_io.make_writable_folder(folder)
    except OSError as e:
        reason = e.strerror or str(e)
        if output_dir is None:
            raise image_io.DataError(
                f"{folder}: cannot write into the results folder ({reason}), where the CSVs and "
                "results.json go by default; pass --output_dir=DIR to write them elsewhere"
            ) from e
        raise image_io.DataError(
            f"--output_dir={folder}: cannot create or write this folder ({reason}); expected a "
            "folder where the CSVs and results.json can be written"
        ) from e
    return folder


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
      DataError: missing or malformed ground truth or predictions, or an output folder that
        cannot be written (checked before scoring).
      OSError: writing an output file failed after the check.
    """
    folder = output_folder(results_dir, output_dir)
    results = davis_protocol.evaluate_folder(
        davis_root, results_dir, imageset, sequences, resolution, num_workers
    )
    return results, report.write_all(results, folder, split=_split(imageset))


def _split(imageset: str) -> str:
    return imageset.strip("/").split("/")[-1]


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    start = time.perf_counter()
    try:
        folder = output_folder(_RESULTS.value, _OUTPUT_DIR.value)
        results = davis_protocol.evaluate_folder(
            _DAVIS_ROOT.value,
            _RESULTS.value,
            _IMAGESET.value,
            _SEQUENCES.value,
            _RESOLUTION.value,
            _NUM_WORKERS.value or None,
        )
    except image_io.DataError as e:
        print(f"eval_masks: {e}", file=sys.stderr)
        sys.exit(1)
    elapsed = time.perf_counter() - start
    # The table first: a write failing now (disk full, folder removed) must not lose the scores.
    print(report.format_table(results, title=f"{_IMAGESET.value} ({_RESULTS.value})"))
    print(f"\nEvaluated {len(results['per_object'])} objects in {elapsed:.1f} s", flush=True)
    try:
        paths = report.write_all(results, folder, split=_split(_IMAGESET.value))
    except OSError as e:
        where = e.filename or folder
        print(
            f"eval_masks: could not write {where} ({e.strerror or e}); the table above holds the "
            "results; pass --output_dir=DIR to write the CSVs and results.json elsewhere",
            file=sys.stderr,
        )
        sys.exit(1)
    print("Wrote")
    for path in paths:
        print(f"  {path}")


if __name__ == "__main__":
    flags.mark_flags_as_required(["davis_root", "results"])
    app.run(main)
