"""Reference cases shls/isec and shls/slic: the superpixels of SHLS's released code.

- `isec`: the released `isec_py/isec.py` `isec(f_order=11, nit=4).segment(frame / 255)` on full
  frames (the DAVIS test superpixels). vosjax's `isec.segment` (what `isec.isec`, the SHLS
  segmenter's superpixel function, returns minus one) must give the same 1-based label map and
  the same `num` (regions before the contour filling), every pixel: its steps are the released
  float32 steps (see vosjax/data/superpixels/isec.py and canny.py).
- `slic`: the released training loaders' scikit-image `slic(image, n_segments, compactness=20,
  sigma=1, Lab) + 1` on a float32 frame in [0, 1]. vosjax computes it through the training
  superpixel function (`method.CappedSLIC` with the SHLS config's compactness, sigma and cap),
  which returns 0-based labels; every pixel must match (vosjax/data/superpixels/slic.py
  reproduces scikit-image 0.26's arithmetic).

Both comparisons are exact (case.json: atol 0). A failure reports how many pixels differ and
the agreement fraction that the cases' tolerance notes mention, but never passes on it.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np

from configs.shls import base as shls_config
from tests.reference import cases, entry
from vosjax.data.superpixels import isec
from vosjax.methods.shls import method


def _frame_indices(case: cases.Case) -> list[int]:
    found = sorted(
        int(m.group(1)) for k in case.input_keys() if (m := re.fullmatch(r"frame_(\d+)", k))
    )
    if not found:
        raise AssertionError(f"{case.folder}: no in/frame_<i> arrays")
    return found


def _assert_same_labels(name: str, actual: np.ndarray, expected: np.ndarray) -> None:
    actual = np.asarray(actual)
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {actual.shape}, reference {expected.shape}")
    differ = actual != expected
    if differ.any():
        where = tuple(int(i) for i in np.argwhere(differ)[0])
        raise AssertionError(
            f"{name}: {int(differ.sum())} of {differ.size} pixels differ (agreement "
            f"{1 - differ.mean():.5f}); first at {where}: vosjax {actual[where]}, reference "
            f"{expected[where]}; vosjax has {np.unique(actual).size} labels, the reference "
            f"{np.unique(expected).size}"
        )


def prepare_isec(case: cases.Case) -> Callable[[], entry.Outputs]:
    frames = {i: case.input(f"frame_{i}") for i in _frame_indices(case)}

    def run() -> entry.Outputs:
        outputs, counts = {}, []
        for i, frame in frames.items():
            result = isec.segment(frame)  # the released settings are segment's defaults
            outputs[f"labels_{i}"] = result.labels
            counts.append(result.num_regions)
        outputs["num_segments"] = np.asarray(counts, np.int32)
        return outputs

    return run


def check_isec(case: cases.Case, outputs: entry.Outputs) -> None:
    for i in _frame_indices(case):
        _assert_same_labels(f"labels_{i}", outputs[f"labels_{i}"], case.output(f"labels_{i}"))
    expected = case.output("num_segments")
    actual = outputs["num_segments"]
    if not np.array_equal(actual, expected):
        raise AssertionError(
            f"num_segments: vosjax {actual.tolist()}, reference {expected.tolist()}"
        )


def prepare_slic(case: cases.Case) -> Callable[[], entry.Outputs]:
    data = shls_config.get_config().data
    image = case.input("image")
    superpixel_fn = method.CappedSLIC(
        num_segments=int(case.input("n_segments")),
        compactness=data.compactness,
        sigma=data.sigma,
        max_superpixels=data.max_superpixels,
    )

    def run() -> entry.Outputs:
        return {"labels": superpixel_fn(image) + 1}  # the released loaders' + 1

    return run


def check_slic(case: cases.Case, outputs: entry.Outputs) -> None:
    _assert_same_labels("labels", outputs["labels"], case.output("labels"))


CASES = {
    # run() segments every frame of the case; reference_cpu_seconds is per frame, so no key.
    "isec": entry.CaseEntry(prepare_isec, check_isec),
    "slic": entry.CaseEntry(prepare_slic, check_slic, timing_key="slic n=300 on 256x256"),
}
