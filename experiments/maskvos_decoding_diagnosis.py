"""Where does Mask-VOS mask decoding lose accuracy? Variants of inference on one checkpoint.

  PYTHONPATH=. python experiments/maskvos_decoding_diagnosis.py \
      --workdir=/tmp/runs/full [--step=-1 --frames=30 --sequences=blackswan,dog,parkour \
      --variants=rounds3,rounds0,mix,coarse,hard,hard_coarse --short_side=240 --frozen= \
      --stats_step=-1]

Loads a checkpoint of configs/maskvos/davis2016.py and segments the first `--frames` frames of
DAVIS2016 480p val sequences with:
  rounds3      the default (3 refinement rounds);
  rounds0      no refinement round (one decoder call per frame);
  mix          3 rounds, output averaged with the x8 coarse mask (the released code);
  mix0         0 rounds, averaged with the coarse mask;
  trainlike    0 rounds, the memory of training: the first and the previous frame, a full
               softmax over all their positions (top-k of all their cells, no radius);
  coarse       the coarse mask alone (A^T of the memory's masks): no decoder at all;
  hard         0 rounds, predictions stored in memory as one-hot masks (argmax);
  hard_coarse  the coarse mask alone with one-hot memory masks.
For each it prints J-Mean and F-Mean (official region and contour accuracy over frames 1..N-2)
and the predicted foreground fraction against the ground truth's, per sequence, then J, F and
J&F averaged over the objects (over the full sequences: the official J-Mean, F-Mean, J&F-Mean).

`--stats_step=S` replaces the checkpoint's BatchNorm statistics (every `nnx.BatchStat`) with
those of step S of the same run, keeping its weights: whether a change of behaviour between two
checkpoints lies in their weights or in their running statistics.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax import nnx

from configs.maskvos import davis2016
from vosjax import checkpointing, train
from vosjax.data import davis
from vosjax.methods.maskvos import inference, method
from vosjax.metrics import davis_protocol
from vosjax.ops import label_resize

_WORKDIR = flags.DEFINE_string("workdir", None, "A davis2016.py run (its checkpoints/).")
_STEP = flags.DEFINE_integer("step", -1, "Checkpoint step (-1: latest).")
_FRAMES = flags.DEFINE_integer("frames", 30, "Frames of each sequence.")
_SEQUENCES = flags.DEFINE_string("sequences", "blackswan,dog,parkour", "DAVIS2016 val names.")
_VARIANTS = flags.DEFINE_string(
    "variants", "rounds3,rounds0,mix,coarse,hard,hard_coarse", "Comma-separated variants."
)
_SHORT = flags.DEFINE_integer("short_side", 240, "Decoding input short side.")
_FROZEN = flags.DEFINE_list(
    "frozen", [], "config.optim.frozen of the run (e.g. encoder: maskvos_frozen_e.sh's runs)."
)
_STATS_STEP = flags.DEFINE_integer(
    "stats_step", -1, "Take the BatchNorm statistics from this step (-1: the checkpoint's own)."
)
_DAVIS = flags.DEFINE_string(
    "davis", str(pathlib.Path(__file__).resolve().parents[2] / "shared/data/DAVIS2016"), ""
)


class CoarseOnly(inference.MaskDecodingSegmenter):
    """The coarse mask A^T (memory masks), upsampled x8: what the decoder starts from."""

    def _predict(self, head, normed, features, key, memory, slot_valid, object_valid):
        del head, features
        weights, indices = self._affinity(key, memory, slot_valid)
        coarse = inference.read_memory(weights, indices, memory.masks)
        up = label_resize.resize_labels(coarse, normed.shape[1:3]).transpose(2, 0, 1)
        valid = jnp.concatenate([jnp.ones((1,), bool), object_valid])
        up = jnp.where(valid[:, None, None], up, 0.0)
        return up / jnp.maximum(jnp.sum(up, axis=0, keepdims=True), 1e-6)


def _hardened(cls: type) -> type:
    """`cls` whose predictions (and so memory masks and values) are one-hot."""

    class Hard(cls):
        def _predict(self, *args):
            probs = super()._predict(*args)
            return jax.nn.one_hot(jnp.argmax(probs, axis=0), probs.shape[0], axis=0)

    return Hard


# top_k of `trainlike`: every position of its two memory frames at the decoding size.
ALL_POSITIONS = -1

VARIANTS = {
    "rounds3": (inference.MaskDecodingSegmenter, {}),
    "rounds0": (inference.MaskDecodingSegmenter, {"refine_rounds": 0}),
    "mix": (inference.MaskDecodingSegmenter, {"mix_coarse": True}),
    "mix0": (inference.MaskDecodingSegmenter, {"mix_coarse": True, "refine_rounds": 0}),
    "coarse": (CoarseOnly, {}),
    "trainlike": (
        inference.MaskDecodingSegmenter,
        {"refine_rounds": 0, "num_recent": 1, "top_k": ALL_POSITIONS, "radius": None},
    ),
    "hard": (_hardened(inference.MaskDecodingSegmenter), {"refine_rounds": 0}),
    "hard_coarse": (_hardened(CoarseOnly), {}),
}


def first_frames(sequences: Sequence[Any], n: int) -> list[Any]:
    """The sequences cut to their first n frames."""
    return [
        dataclasses.replace(s, frame_names=s.frame_names[:n], output_frames=s.output_frames[:n])
        for s in sequences
    ]


def run_variants(
    encoder: Any,
    head: Any,
    decoding: dict[str, Any],
    sequences: Sequence[Any],
    variants: Sequence[str],
) -> None:
    """Prints, per variant, J, F and the predicted / true foreground fraction per sequence."""
    for name in variants:
        cls, changes = VARIANTS[name]
        if changes.get("top_k") == ALL_POSITIONS:
            size = cls(encoder, head, inference.from_config(decoding)).resized_size(
                sequences[0].image_size
            )
            h, w = inference.padded_size(size)
            changes = changes | {"top_k": 2 * (h // inference.STRIDE) * (w // inference.STRIDE)}
        segmenter = cls(encoder, head, inference.from_config(dict(decoding) | changes))
        start = time.perf_counter()
        row, js, fs = [], [], []
        for sequence in sequences:
            pred = np.stack(list(segmenter.segment(sequence)))
            gt = np.stack([sequence.read_mask(t) for t in range(len(sequence))])
            scores = davis_protocol.evaluate_sequence(gt, pred, sequence.name)
            js += [j_f[0].mean() for j_f in scores.values()]
            fs += [j_f[1].mean() for j_f in scores.values()]
            row.append(
                f"{sequence.name} J {np.mean(js[-len(scores) :]):.3f} "
                f"F {np.mean(fs[-len(scores) :]):.3f} fg {(pred[1:] > 0).mean():.3f}/"
                f"{((gt[1:] > 0) & (gt[1:] < 255)).mean():.3f}"
            )
        j, f = np.mean(js), np.mean(fs)
        row.append(f"objects' mean J {j:.3f} F {f:.3f} J&F {(j + f) / 2:.3f}")
        print(f"{name:12s} {time.perf_counter() - start:5.0f} s | " + " | ".join(row), flush=True)


def main(argv: Sequence[str]) -> None:
    del argv
    config = davis2016.get_config()
    config.optim.frozen = tuple(_FROZEN.value)
    trainer = train.Trainer(config, method.MaskVOS(config))
    step = None if _STEP.value < 0 else _STEP.value
    with checkpointing.Checkpointer(
        pathlib.Path(_WORKDIR.value) / "checkpoints", handle_sigterm=False
    ) as checkpointer:
        state, step = checkpointer.restore(trainer.abstract_state, step)
        stats_from = None
        if _STATS_STEP.value >= 0:
            stats_from, _ = checkpointer.restore(trainer.abstract_state, _STATS_STEP.value)
    model = trainer.model(state)
    if stats_from is not None:
        nnx.update(model, nnx.state(trainer.model(stats_from), nnx.BatchStat))
        print(f"BatchNorm statistics of step {_STATS_STEP.value}")
    sequences = davis.load_davis(_DAVIS.value, "2016/val", "480p", _SEQUENCES.value.split(","))
    n = _FRAMES.value
    print(f"checkpoint step {step}; first {n} frames; short side {_SHORT.value}")
    decoding = dict(config.eval.decoding) | {"short_side": _SHORT.value}
    run_variants(
        model.encoder,
        model.head,
        decoding,
        first_frames(sequences, n),
        _VARIANTS.value.split(","),
    )


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir"])
    app.run(main)
