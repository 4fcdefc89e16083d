"""The official DAVIS-2017 semi-supervised evaluation protocol (`davis2017-evaluation`).

Per sequence:
- the frames are those of the sequence's `JPEGImages` folder (or, in a root without one, the
  annotations numbered without a gap); a frame without ground truth is an error, never skipped;
- the ground truth of every frame is read as object ids; void (255) counts as background; the
  ground truth of a 2016 imageset must be binary {0, 255} (`davis.read_ground_truth`);
- the number of objects K is the largest id of the first frame's ground truth;
- the first and the last frame are not scored (the toolkit's `[:, 1:-1]`); only those
  predictions are read;
- a predicted id above K is an error; objects missing from the prediction score as empty masks;
- each object k gets a per-frame J and F, named `<sequence>_<k>`.
Global numbers are means over objects (not sequences) of each object's mean, recall and decay;
J&F-Mean = (J-Mean + F-Mean) / 2. Unlike the toolkit, nothing is ever reused from old CSVs.

`evaluate_sequence` scores masks held in memory (the evaluation loop of `vosjax.evaluate`);
`score_folder` / `evaluate_folder` score a results folder of PNGs against a DAVIS root, in
parallel worker processes.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import pathlib
from collections.abc import Mapping, Sequence

import numpy as np

from vosjax.data import davis, image_io
from vosjax.metrics import boundary, region, statistics

# Frames per worker task: small enough to balance 2 workers on a few sequences.
_FRAMES_PER_TASK = 12
# Below this many scored frames, starting worker processes costs more than it saves.
_MIN_FRAMES_FOR_POOL = 48

PerObject = dict[str, tuple[np.ndarray, np.ndarray]]


def count_objects(first_gt: np.ndarray) -> int:
    """K: the largest object id of the first frame's ground truth [H, W], void (255) ignored."""
    ids = np.asarray(first_gt)
    ids = ids[ids != image_io.VOID]
    return int(ids.max()) if ids.size else 0


def score_frame(
    gt_ids: np.ndarray, pred_ids: np.ndarray, num_objects: int, radius: int
) -> tuple[np.ndarray, np.ndarray]:
    """J and F of objects 1..K in one frame.

    Args:
      gt_ids: uint8 [H, W] ground-truth ids (255 and ids above K count as background).
      pred_ids: uint8 [H, W] predicted ids, all in 0..K (checked by the callers).
      num_objects: K.
      radius: boundary tolerance in pixels, `boundary.boundary_radius(H, W)`.

    Returns:
      (J [K], F [K]) float64; object k at index k - 1.
    """
    kernel = boundary.disk(radius)
    # Absent from both maps: empty union (J = 1) and no boundary on either side (F = 1).
    j = np.ones(num_objects, np.float64)
    f = np.ones(num_objects, np.float64)
    for k in range(1, num_objects + 1):
        window = boundary.object_window(gt_ids, pred_ids, k)
        if window is None:
            continue
        # The window holds both masks whole, so their pixel counts are those of the frame.
        gt = gt_ids[window] == k
        pred = pred_ids[window] == k
        if np.array_equal(gt, pred):
            continue  # identical non-empty masks: J = 1, equal boundaries: F = 1
        j[k - 1] = region.jaccard_from_counts(
            np.count_nonzero(gt & pred), np.count_nonzero(gt | pred)
        )
        f[k - 1] = boundary.crop_f(gt, pred, kernel)
    return j, f


def evaluate_sequence(
    gt_masks: np.ndarray, pred_masks: np.ndarray, name: str = "sequence"
) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Scores one sequence held in memory with the official protocol.

    Args:
      gt_masks: uint8 [T, H, W] ground-truth ids of every frame (255 = void).
      pred_masks: integer [T, H, W] predicted ids; frames 0 and T - 1 are not read.
      name: the sequence, for error messages.

    Returns:
      object id k (1..K) -> (J [T - 2], F [T - 2]) float64 per scored frame.

    Raises:
      DataError: the shapes differ, or a scored frame has an id above K.
    """
    gt_masks = np.asarray(gt_masks)
    pred_masks = np.asarray(pred_masks)
    if gt_masks.ndim != 3 or gt_masks.shape != pred_masks.shape:
        raise image_io.DataError(
            f"{name}: expected ground truth and prediction [T, H, W] of one shape, got "
            f"{gt_masks.shape} and {pred_masks.shape}"
        )
    num_frames, height, width = gt_masks.shape
    num_objects = count_objects(gt_masks[0])
    radius = boundary.boundary_radius(height, width)
    scored = range(1, num_frames - 1)
    j = np.zeros((num_objects, len(scored)))
    f = np.zeros((num_objects, len(scored)))
    for column, t in enumerate(scored):
        pred = pred_masks[t]
        top, bottom = int(pred.max()), int(pred.min())
        if top > num_objects or bottom < 0:
            raise image_io.DataError(
                f"{name}: predicted frame {t} has object id {top if bottom >= 0 else bottom}, but "
                "the ground truth "
                f"of frame 0 has {num_objects} objects (expected ids 0..{num_objects})"
            )
        j[:, column], f[:, column] = score_frame(gt_masks[t], pred, num_objects, radius)
    return {k: (j[k - 1], f[k - 1]) for k in range(1, num_objects + 1)}


def summarize(per_object: Mapping[str, tuple[np.ndarray, np.ndarray]]) -> dict:
    """Global and per-object numbers in the schema of the golden results.json.

    Args:
      per_object: '<sequence>_<k>' -> (J [N], F [N]) per scored frame, in report order.

    Returns:
      {'J&F-Mean', 'J-Mean', 'J-Recall', 'J-Decay', 'F-Mean', 'F-Recall', 'F-Decay': float,
       'per_object': {'<sequence>_<k>': {'J-Mean': float, 'F-Mean': float}}}.

    Raises:
      ValueError: no object to summarise.
    """
    if not per_object:
        raise ValueError("summarize: no object was scored (empty ground truth or no sequence)")
    j_stats = np.array([statistics.db_statistics(j) for j, _ in per_object.values()])
    f_stats = np.array([statistics.db_statistics(f) for _, f in per_object.values()])
    j_mean, j_recall, j_decay = (float(np.mean(j_stats[:, i])) for i in range(3))
    f_mean, f_recall, f_decay = (float(np.mean(f_stats[:, i])) for i in range(3))
    return {
        "J&F-Mean": (j_mean + f_mean) / 2.0,
        "J-Mean": j_mean,
        "J-Recall": j_recall,
        "J-Decay": j_decay,
        "F-Mean": f_mean,
        "F-Recall": f_recall,
        "F-Decay": f_decay,
        "per_object": {
            name: {"J-Mean": float(js[0]), "F-Mean": float(fs[0])}
            for name, js, fs in zip(per_object, j_stats, f_stats, strict=True)
        },
    }


def _score_files(
    gt_files: Sequence[pathlib.Path],
    pred_dir: pathlib.Path,
    num_objects: int,
    first_gt: pathlib.Path,
    image_size: tuple[int, int],
    binary: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """J and F [K, len(gt_files)] of the predictions for some ground-truth frames."""
    radius = boundary.boundary_radius(*image_size)
    j = np.zeros((num_objects, len(gt_files)))
    f = np.zeros((num_objects, len(gt_files)))
    for column, gt_file in enumerate(gt_files):
        gt = davis.read_ground_truth(gt_file, binary)
        if gt.shape != image_size:
            raise image_io.DataError(
                f"{gt_file}: ground-truth size {gt.shape} differs from {image_size} of {first_gt}"
            )
        pred_file = pred_dir / f"{gt_file.stem}.png"
        if not pred_file.is_file():
            raise image_io.DataError(
                f"{pred_file}: prediction not found; expected an indexed PNG of object ids for "
                f"every ground-truth frame but the first and last (here {gt_file.name})"
            )
        pred = image_io.read_mask(pred_file)
        if pred.shape != image_size:
            raise image_io.DataError(
                f"{pred_file}: prediction size {pred.shape} (H, W) differs from the ground "
                f"truth's {image_size} ({gt_file})"
            )
        top = int(pred.max())
        if top > num_objects:
            raise image_io.DataError(
                f"{pred_file}: object id {top} is above the {num_objects} objects of the ground "
                f"truth ({first_gt}); expected ids 0..{num_objects}"
            )
        j[:, column], f[:, column] = score_frame(gt, pred, num_objects, radius)
    return j, f


def _score_task(args: tuple) -> tuple[np.ndarray, np.ndarray]:
    return _score_files(*args)


def _plan_sequence(
    davis_root: pathlib.Path, results_dir: pathlib.Path, name: str, resolution: str, binary: bool
) -> tuple[list[pathlib.Path], pathlib.Path, int, tuple[int, int]]:
    """(GT files of every frame, prediction folder, K, (H, W)) of one sequence; checks both."""
    gt_files = davis.ground_truth_files(davis_root, name, resolution)
    pred_dir = results_dir / name
    if not pred_dir.is_dir():
        raise image_io.DataError(
            f"{pred_dir}: prediction folder of sequence {name!r} not found; expected "
            f"{pred_dir}/<frame>.png with the ground-truth file names ({gt_files[0].name}, ...)"
        )
    first = davis.read_ground_truth(gt_files[0], binary)
    return gt_files, pred_dir, count_objects(first), first.shape


def _default_workers() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, min(len(os.sched_getaffinity(0)), 8))
    return max(1, min(os.cpu_count() or 1, 8))


def score_folder(
    davis_root: image_io.PathLike,
    results_dir: image_io.PathLike,
    imageset: str = "2017/val",
    sequences: Sequence[str] | None = None,
    resolution: str = "480p",
    num_workers: int | None = None,
) -> PerObject:
    """Per-object per-frame J and F of a results folder.

    Args:
      davis_root: DAVIS root with `Annotations/<resolution>/<seq>/*.png` and `ImageSets`.
      results_dir: predictions `<results_dir>/<seq>/<frame>.png`, the ground truth's names.
      imageset: '<year>/<split>', the sequences scored.
      sequences: a subset of the split, or None for all of it.
      resolution: annotation folder, e.g. '480p'.
      num_workers: worker processes; None = the CPUs available (at most 8), 1 = in-process.

    Returns:
      '<sequence>_<k>' -> (J [T - 2], F [T - 2]), sequences in split order, k = 1..K.

    Raises:
      DataError: a missing or malformed file or folder (see the module docstring).
    """
    davis_root = pathlib.Path(davis_root)
    results_dir = pathlib.Path(results_dir)
    if not davis_root.is_dir():
        raise image_io.DataError(f"{davis_root}: DAVIS root folder not found")
    if not results_dir.is_dir():
        raise image_io.DataError(f"{results_dir}: results folder not found")
    names = davis.split_sequences(davis_root, imageset, sequences)
    binary = davis.is_binary_imageset(imageset)
    plans = {
        name: _plan_sequence(davis_root, results_dir, name, resolution, binary) for name in names
    }
    tasks = []  # (sequence, first column, args of _score_files)
    for name, (gt_files, pred_dir, num_objects, size) in plans.items():
        scored = gt_files[1:-1]
        for start in range(0, len(scored), _FRAMES_PER_TASK):
            chunk = scored[start : start + _FRAMES_PER_TASK]
            tasks.append((name, start, (chunk, pred_dir, num_objects, gt_files[0], size, binary)))
    num_workers = _default_workers() if num_workers is None else num_workers
    num_frames = sum(len(args[0]) for _, _, args in tasks)
    if num_workers <= 1 or num_frames < _MIN_FRAMES_FOR_POOL:
        outputs = [_score_files(*args) for _, _, args in tasks]
    else:
        # forkserver: safe when the caller runs threads (JAX, grain), unlike fork. As with any
        # multiprocessing, a calling script needs the `if __name__ == "__main__":` guard.
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload([__name__])
        workers = min(num_workers, len(tasks))
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            outputs = list(pool.map(_score_task, [args for _, _, args in tasks]))
    per_object: PerObject = {}
    for name, (gt_files, _, num_objects, _) in plans.items():
        n = max(len(gt_files) - 2, 0)
        j, f = np.zeros((num_objects, n)), np.zeros((num_objects, n))
        for (task_name, start, _), (j_chunk, f_chunk) in zip(tasks, outputs, strict=True):
            if task_name == name:
                j[:, start : start + j_chunk.shape[1]] = j_chunk
                f[:, start : start + f_chunk.shape[1]] = f_chunk
        for k in range(1, num_objects + 1):
            per_object[f"{name}_{k}"] = (j[k - 1], f[k - 1])
    return per_object


def evaluate_folder(
    davis_root: image_io.PathLike,
    results_dir: image_io.PathLike,
    imageset: str = "2017/val",
    sequences: Sequence[str] | None = None,
    resolution: str = "480p",
    num_workers: int | None = None,
) -> dict:
    """`summarize(score_folder(...))`: the numbers of the official toolkit for a results folder.

    Raises:
      DataError: as `score_folder`, or no sequence has an object in its first frame.
    """
    per_object = score_folder(davis_root, results_dir, imageset, sequences, resolution, num_workers)
    if not per_object:
        raise image_io.DataError(
            f"{pathlib.Path(davis_root) / 'Annotations' / resolution}: no object to evaluate; the "
            "first ground-truth frame of every sequence is empty (expected ids 1..K)"
        )
    return summarize(per_object)
