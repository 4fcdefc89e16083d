"""Reference case ino/propagation: INO's released DAVIS inference (infer_vos.py, seeded ViT-S/8).

vosjax's own path end to end: `INO(config).make_segmenter(model)` with the DAVIS config
(`configs/ino/vits8_davis2016.py`: the `ino` preset, block 7 of the student, short side 480),
the student's weights loaded from the case's state_dict by `weights.vit.load_vit`, and the
segmenter run on the stored uint8 frames and first mask. Its extractor (`INOFeatures`) is
wrapped only to record the block-7 tokens of each frame for the probe outputs.

Comparison (case.json `tolerance_notes`): frame0_resized_rows atol 1e-5, label0_feat_res and the
block-7 probes / channel means atol 1e-4; soft labels >= 99% of entries within 1e-3 and max
|diff| <= 0.5; masks <= 0.05% of pixels different (top-5 near-ties flip under float noise).
The released code keeps 7 label channels (num_classes=7); vosjax keeps 1 + the largest id, and
the released extra channels must be zero.
"""

from __future__ import annotations

import pathlib
import re
import tempfile
from collections.abc import Callable

import jax
import numpy as np
from flax import nnx

from configs.ino import vits8_davis2016
from tests.reference import cases, entry
from vosjax.data import image_io
from vosjax.data import sequence as sequence_lib
from vosjax.methods.ino import method as ino_method
from vosjax.ops import color
from vosjax.weights import layout
from vosjax.weights import vit as vit_weights

RESIZED_ATOL = 1e-5
FEATURE_ATOL = 1e-4
SOFT_ATOL, SOFT_MIN_FRACTION, SOFT_MAX_DIFF = 1e-3, 0.99, 0.5
MASK_MAX_MISMATCH = 5e-4


class _Recording:
    """The segmenter's extractor, recording the raw block tokens [h, w, D] of every frame."""

    def __init__(self, features: ino_method.INOFeatures):
        self.features = features
        self.tokens = []

    def __call__(self, frame: np.ndarray) -> jax.Array:
        tokens = self.features.tokens(frame)
        self.tokens.append(np.asarray(tokens))
        return self.features.normalize(tokens)


def _rows(case: cases.Case, key: str) -> slice:
    found = re.search(r"rows (\d+)\.\.(\d+)", case.meta["outputs"][key])
    assert found, f"{case.folder}: no 'rows A..B' in the description of {key}"
    return slice(int(found.group(1)), int(found.group(2)) + 1)


def _probe_cells(case: cases.Case) -> np.ndarray:
    """The (row, col) probe cells listed in the description of features_block7_probe."""
    text = case.meta["outputs"]["features_block7_probe"]
    cells = re.findall(r"\((\d+),\s*(\d+)\)", text)
    assert cells, f"{case.folder}: no (row, col) probes in {text!r}"
    return np.asarray(cells, np.int64)


def prepare(case: cases.Case) -> Callable[[], entry.Outputs]:
    config = vits8_davis2016.get_config()
    # get_intermediate_layers(n)[0]: block depth - n + 1 (block 7 of 12 for infer_vos.sh davis)
    depth = 1 + max(int(n.split(".")[1]) for n, _ in case.meta["manifest"] if "blocks." in n)
    last_n = int(case.meta.get("settings", {}).get("test_last_n_layer", 6))
    config.eval.block = depth - last_n + 1
    method = ino_method.INO(config)
    model = method.build_model(config, nnx.Rngs(0))
    reader = layout.StateDictReader(case.weights, f"{case.method}/{case.name}")
    vit_weights.load_vit(reader, "", model.student)
    reader.finish()
    segmenter = method.make_segmenter(model)
    recording = _Recording(segmenter.extractor)
    segmenter.extractor = recording

    frames = case.input("frames_rgb")
    mask = case.input("first_mask")
    folder = tempfile.TemporaryDirectory(prefix="vosjax_ino_case_")
    mask_path = pathlib.Path(folder.name) / "00000.png"
    image_io.write_mask(mask_path, mask)
    sequence = sequence_lib.VideoSequence(
        name="case",
        frame_names=tuple(f"{t:05d}" for t in range(len(frames))),
        image_size=mask.shape,
        read_frame_fn=lambda t: frames[t],
        mask_paths={0: mask_path},
        output_frames=tuple(range(len(frames))),
        source="reference case ino/propagation",
    )
    rows = _rows(case, "frame0_resized_rows")
    cells = _probe_cells(case)

    def run() -> entry.Outputs:
        recording.tokens.clear()
        probs, masks = zip(*segmenter.labels_and_masks(sequence), strict=True)
        features = recording.features
        resized = np.asarray(color.normalize_frames(features.read(frames[0]), std=features.std))
        tokens = np.stack(recording.tokens)  # [T, h, w, D]
        return {
            "frame0_resized_rows": resized[rows].transpose(2, 0, 1),
            "label0_feat_res": np.asarray(probs[0]).transpose(2, 0, 1),
            "features_block7_probe": tokens[:, cells[:, 0], cells[:, 1]],
            "features_block7_channel_mean": tokens.mean(axis=(1, 2)),
            "soft_labels": np.stack([np.asarray(p).transpose(2, 0, 1) for p in probs[1:]]),
            "masks_pred": np.stack(masks),
        }

    run.folder = folder  # the mask's file lives as long as `run`
    return run


def _channels(name: str, got: np.ndarray, want: np.ndarray, axis: int) -> np.ndarray:
    """The reference's first K channels (K = vosjax's), after checking the rest are zero."""
    k = got.shape[axis]
    rest = np.take(want, np.arange(k, want.shape[axis]), axis=axis)
    if np.abs(rest).max(initial=0.0) != 0.0:
        raise AssertionError(f"{name}: the reference's channels >= {k} are not zero")
    return np.take(want, np.arange(k), axis=axis)


def check(case: cases.Case, outputs: entry.Outputs) -> None:
    cases.assert_close(
        "frame0_resized_rows",
        outputs["frame0_resized_rows"],
        case.output("frame0_resized_rows"),
        atol=RESIZED_ATOL,
    )
    for key in ("features_block7_probe", "features_block7_channel_mean"):
        cases.assert_close(key, outputs[key], case.output(key), atol=FEATURE_ATOL)
    label0 = outputs["label0_feat_res"]
    want = _channels("label0_feat_res", label0, case.output("label0_feat_res"), 0)
    cases.assert_close("label0_feat_res", label0, want, atol=FEATURE_ATOL)

    soft = outputs["soft_labels"]
    want = _channels("soft_labels", soft, case.output("soft_labels"), 1)
    if soft.shape != want.shape:
        raise AssertionError(f"soft_labels: shape {soft.shape}, reference {want.shape}")
    diff = np.abs(soft.astype(np.float64) - want)
    close = float(np.mean(diff <= SOFT_ATOL))
    if close < SOFT_MIN_FRACTION or diff.max() > SOFT_MAX_DIFF:
        raise AssertionError(
            f"soft_labels: {close:.4%} of entries within {SOFT_ATOL} (need "
            f"{SOFT_MIN_FRACTION:.0%}), max |diff| {diff.max():.3g} (allowed {SOFT_MAX_DIFF})"
        )
    masks, want = outputs["masks_pred"], case.output("masks_pred")
    if masks.shape != want.shape:
        raise AssertionError(f"masks_pred: shape {masks.shape}, reference {want.shape}")
    wrong = float(np.mean(masks != want))
    if wrong > MASK_MAX_MISMATCH:
        raise AssertionError(
            f"masks_pred: {wrong:.4%} of pixels differ, allowed {MASK_MAX_MISMATCH:.2%}"
        )


CASES = {"propagation": entry.CaseEntry(prepare, check)}
